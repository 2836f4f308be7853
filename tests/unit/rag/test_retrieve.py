"""Retrieval over a real embedded Qdrant index built by the real ingestion: dense, hybrid, filters, batching."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from pipelines.embed import Embedder, EmbedderIdentity
from pipelines.index import IndexReader
from rag.errors import BadQuery, StackMismatch
from rag.retrieve import Retriever, WeightedRrf, validate_filters
from rag.types import RetrievalConfig, StackConfig

pytestmark = pytest.mark.slow

PARAPHRASES = [
    ("When did the sleeping volcano in the Aldren mountains last erupt?", "acme/volcano.md"),
    ("How high above the planet does the weather satellite fly?", "acme/satellite.txt"),
    ("Who won the chess club championship?", "globex/chess.md"),
    ("How often should I clean scale out of my coffee mill?", "globex/grinder.md"),
]


class CountingEmbedder:
    """The real embedder, counting how often it is called (the batching contract is one call per batch)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.calls: list[int] = []

    @property
    def identity(self) -> EmbedderIdentity:
        return self.inner.identity

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner.encode(texts)


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
@pytest.mark.parametrize(("question", "doc_id"), PARAPHRASES)
def test_paraphrased_question_finds_its_document(
    reader: IndexReader, embedder: Embedder, mode: str, question: str, doc_id: str
) -> None:
    retriever = Retriever(reader, embedder, RetrievalConfig(mode=mode, top_k=3))  # type: ignore[arg-type]
    chunks = retriever.retrieve(question)
    assert chunks, "nothing retrieved"
    assert chunks[0].doc_id == doc_id, [(c.doc_id, round(c.score, 3)) for c in chunks]
    assert all(c.similarity is not None and -1.0 <= c.similarity <= 1.0 for c in chunks)
    assert chunks[0].text and chunks[0].source.endswith(doc_id.split("/")[-1])


def test_hybrid_scores_are_fused_ranks_and_similarities_stay_cosine(reader: IndexReader, embedder: Embedder) -> None:
    dense = Retriever(reader, embedder, RetrievalConfig(mode="dense", top_k=3)).retrieve("Burrmaster grind settings")
    hybrid = Retriever(reader, embedder, RetrievalConfig(mode="hybrid", top_k=3)).retrieve("Burrmaster grind settings")
    assert hybrid[0].doc_id == "globex/grinder.md"
    # RRF with k=60 and two lists cannot exceed 2/61; the dense cosine is carried along for thresholds and support.
    assert all(0 < c.score <= 2 / 61 + 1e-9 for c in hybrid)
    assert hybrid[0].similarity == pytest.approx(dense[0].similarity, abs=1e-5)


def test_hybrid_question_of_stop_words_only_falls_back_to_dense(reader: IndexReader, embedder: Embedder) -> None:
    # BM25 drops every term of this question; the sparse side would be empty, so only the dense search runs.
    chunks = Retriever(reader, embedder, RetrievalConfig(mode="hybrid", top_k=2)).retrieve("what is it?")
    assert len(chunks) == 2


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_tenant_filter_excludes_other_tenants(reader: IndexReader, embedder: Embedder, mode: str) -> None:
    retriever = Retriever(reader, embedder, RetrievalConfig(mode=mode, top_k=5))  # type: ignore[arg-type]
    question = "When did Mount Kerrigan last erupt?"
    unfiltered = {c.doc_id for c in retriever.retrieve(question)}
    assert "acme/volcano.md" in unfiltered
    globex = retriever.retrieve(question, filters={"tenant": "globex"})
    assert globex and {c.tenant for c in globex} == {"globex"}
    assert globex[0].doc_id == "globex/kerrigan-hike.md"
    acme = retriever.retrieve(question, filters={"tenant": ["acme"]})
    assert {c.tenant for c in acme} == {"acme"} and acme[0].doc_id == "acme/volcano.md"
    assert retriever.retrieve(question, filters={"tenant": "nobody"}) == []


def test_source_and_doc_id_filters_accept_lists(reader: IndexReader, embedder: Embedder) -> None:
    retriever = Retriever(reader, embedder, RetrievalConfig(top_k=5))
    wanted = ["acme/bakery.md", "globex/chess.md"]
    chunks = retriever.retrieve("opening hours", filters={"doc_id": wanted})
    assert chunks and {c.doc_id for c in chunks} <= set(wanted)
    source = next(c.source for c in retriever.retrieve("satellite launch"))
    only = retriever.retrieve("bakery", filters={"source": source})
    assert only and {c.source for c in only} == {source}


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"author": "x"}, "unknown filter key 'author'"),
        ({"tenant": []}, "empty list"),
        ({"tenant": 3}, "non-empty string"),
        ({"tenant": [""]}, "non-empty string"),
    ],
)
def test_invalid_filters_are_rejected(
    reader: IndexReader, embedder: Embedder, filters: dict[str, object], message: str
) -> None:
    retriever = Retriever(reader, embedder, RetrievalConfig())
    with pytest.raises(BadQuery, match=message):
        retriever.retrieve("anything", filters=filters)  # type: ignore[arg-type]


@pytest.mark.parametrize("question", ["", "   ", "x" * 5000])
def test_invalid_questions_are_rejected(reader: IndexReader, embedder: Embedder, question: str) -> None:
    with pytest.raises(BadQuery):
        Retriever(reader, embedder, RetrievalConfig()).retrieve(question)


def test_top_k_override_is_bounded(reader: IndexReader, embedder: Embedder) -> None:
    retriever = Retriever(reader, embedder, RetrievalConfig(top_k=2))
    assert len(retriever.retrieve("volcano", top_k=4)) == 4
    with pytest.raises(BadQuery, match="top_k"):
        retriever.retrieve("volcano", top_k=0)


def test_retrieve_many_embeds_the_batch_in_one_call(reader: IndexReader, embedder: Embedder) -> None:
    counting = CountingEmbedder(embedder)
    retriever = Retriever(reader, counting, RetrievalConfig(mode="hybrid", top_k=2))
    questions = [q for q, _ in PARAPHRASES]
    batches = retriever.retrieve_many(questions, filters=[None, None, {"tenant": "globex"}, None])
    assert counting.calls == [len(questions)]
    assert [b[0].doc_id for b in batches] == [d for _, d in PARAPHRASES]
    single = retriever.retrieve(questions[1])
    assert [c.chunk_id for c in single] == [c.chunk_id for c in batches[1]]


def test_score_threshold_drops_weak_chunks(reader: IndexReader, embedder: Embedder) -> None:
    retriever = Retriever(reader, embedder, RetrievalConfig(top_k=6, score_threshold=0.3))
    chunks = retriever.retrieve("Orion-7 weather satellite altitude")
    assert chunks and all(c.similarity is not None and c.similarity >= 0.3 for c in chunks)
    assert len(chunks) < 6


def test_no_llama_index_global_model_is_created(reader: IndexReader, embedder: Embedder) -> None:
    from llama_index.core import Settings as LlamaSettings

    Retriever(reader, embedder, RetrievalConfig(mode="hybrid")).retrieve("volcano")
    # llama-index builds its default (OpenAI) embedder and LLM lazily on first access; we must never trigger that.
    assert LlamaSettings._embed_model is None
    assert LlamaSettings._llm is None


def test_embedder_or_stack_mismatch_is_refused(reader: IndexReader, embedder: Embedder) -> None:
    class OtherModel(CountingEmbedder):
        @property
        def identity(self) -> EmbedderIdentity:
            return EmbedderIdentity(name="other", weights_sha256="0" * 64, dim=384, max_tokens=256)

    with pytest.raises(StackMismatch, match="embedder"):
        Retriever(reader, OtherModel(embedder), RetrievalConfig())
    config = StackConfig.for_index(reader.version, name="pinned", pin=True)
    Retriever(reader, embedder, config)  # fits
    with pytest.raises(StackMismatch, match="pinned to index version"):
        Retriever(reader, embedder, config.model_copy(update={"index_version": reader.version.version + 1}))
    with pytest.raises(StackMismatch, match="collection"):
        Retriever(reader, embedder, config.model_copy(update={"collection": "elsewhere"}))


def test_weighted_rrf_prefers_documents_found_by_both_lists() -> None:
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQueryResult

    a, b, c = (TextNode(id_=x, text=x) for x in "abc")
    dense = VectorStoreQueryResult(nodes=[a, b], similarities=[0.9, 0.8], ids=["a", "b"])
    sparse = VectorStoreQueryResult(nodes=[c, b], similarities=[12.0, 10.0], ids=["c", "b"])
    fused = WeightedRrf(k=60)(dense, sparse, top_k=3)
    assert fused.ids == ["b", "a", "c"]
    assert fused.dense_similarities == {"a": 0.9, "b": 0.8}  # type: ignore[attr-defined]
    assert WeightedRrf(k=60, dense_weight=1.0, sparse_weight=0.0)(dense, sparse, top_k=1).ids == ["a"]
    assert WeightedRrf(k=60, dense_weight=0.0, sparse_weight=1.0)(dense, sparse, top_k=1).ids == ["c"]


def test_weighted_rrf_ranks_ids_as_it_fuses_nodes() -> None:
    """The in-memory search fuses id lists with ``rank``; it must order exactly as the node fusion does."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQueryResult

    dense_ids, sparse_ids = ["a", "b", "c", "d"], ["d", "e", "a", "f"]
    dense = VectorStoreQueryResult(nodes=[TextNode(id_=x, text=x) for x in dense_ids], similarities=[0.9] * 4)
    sparse = VectorStoreQueryResult(nodes=[TextNode(id_=x, text=x) for x in sparse_ids], similarities=[1.0] * 4)
    fusion = WeightedRrf(k=1, dense_weight=1.0, sparse_weight=1.0)
    ranked = fusion.rank(dense_ids, sparse_ids, 5)
    fused = fusion(dense, sparse, top_k=5)
    assert [key for key, _ in ranked] == fused.ids == ["a", "d", "b", "e", "c"]  # b/e tie: dense first
    assert [score for _, score in ranked] == fused.similarities


def test_validate_filters_normalises_values() -> None:
    assert validate_filters({"tenant": "a", "source": ["x", "y"]}) == {"tenant": ["a"], "source": ["x", "y"]}
    assert validate_filters(None) == {}


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_search_many_with_caller_vectors_equals_retrieve_many(
    reader: IndexReader, embedder: Embedder, mode: str
) -> None:
    counting = CountingEmbedder(embedder)
    retriever = Retriever(reader, counting, RetrievalConfig(mode=mode, top_k=3))  # type: ignore[arg-type]
    questions = [q for q, _ in PARAPHRASES]
    filters = [None, {"tenant": "acme"}, {"tenant": "globex"}, None]
    vectors = embedder.encode(questions)
    searched = retriever.search_many(questions, vectors, filters=filters)
    assert counting.calls == []  # the caller's vectors are used as they are
    expected = retriever.retrieve_many(questions, filters=filters)
    assert [[c.chunk_id for c in b] for b in searched] == [[c.chunk_id for c in b] for b in expected]
    assert all(c.tenant == "acme" for c in searched[1]) and all(c.tenant == "globex" for c in searched[2])
    with pytest.raises(BadQuery, match="shape"):
        retriever.search_many(questions, vectors[:2])
    with pytest.raises(BadQuery, match="shape"):
        retriever.search_many(questions[:1], np.ones((1, 3), np.float32))


def test_reader_samples_dense_vectors_of_the_index(reader: IndexReader) -> None:
    sample = reader.sample_vectors(5)
    assert sample.shape == (5, reader.version.embedder.dim) and sample.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(sample, axis=1), 1.0, atol=1e-3)
    everything = reader.sample_vectors(10_000)
    assert len(everything) == reader.count()
