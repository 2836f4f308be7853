"""Chunking with the real MiniLM tokenizer: window-sized chunks, deterministic ids, the title in what is embedded."""

from __future__ import annotations

import random
import re

import pytest

from pipelines.chunk import Chunker, chunk_id, embed_text
from pipelines.embed import Embedder
from pipelines.settings import ChunkingSettings
from pipelines.types import Chunk, Document

pytestmark = pytest.mark.slow  # loads the embedder (and exports it to ONNX on a cold cache)

WINDOW = 256


@pytest.fixture(scope="module")
def chunker(embedder: Embedder) -> Chunker:
    splitter = Chunker(ChunkingSettings(), embedder)
    splitter.warm_up()
    return splitter


def _doc(text: str, *, doc_id: str = "doc-1", title: str = "A Title") -> Document:
    return Document(doc_id=doc_id, source=f"/src/{doc_id}", title=title, text=text, content_hash="h-" + doc_id)


_NOUNS = ["the harbour", "a glacier", "the archive", "an orchard", "the observatory", "a lighthouse", "the market"]
_VERBS = ["surveyed", "flooded", "restored", "measured", "catalogued", "photographed", "rebuilt"]
_WHEN = ["in early spring", "after the storm", "during the census", "before the harvest", "at dawn"]


def _paragraphs(count: int, *, seed: int = 3, sentences: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(
            f"Crew {p}-{s} {rng.choice(_VERBS)} {rng.choice(_NOUNS)} {rng.choice(_WHEN)} and noted "
            f"{rng.randint(3, 900)} details about {rng.choice(_NOUNS)}."
            for s in range(sentences)
        )
        for p in range(count)
    ]


@pytest.fixture(scope="module")
def long_doc() -> Document:
    return _doc("\n\n".join(_paragraphs(14)), title="Field Survey Notes")


@pytest.fixture(scope="module")
def long_chunks(chunker: Chunker, long_doc: Document) -> list[Chunk]:
    return chunker.chunk(long_doc)


# ------------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize(("size", "overlap"), [(64, 64), (64, 100)])
def test_overlap_not_smaller_than_size_is_refused(embedder: Embedder, size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="chunk_overlap must be smaller than chunk_size"):
        Chunker(ChunkingSettings(chunk_size=size, chunk_overlap=overlap), embedder)


def test_params_record_the_effective_sizes(chunker: Chunker) -> None:
    params = chunker.params
    assert (params.chunk_size, params.chunk_overlap) == (200, 24)
    assert params.tokenizer == "sentence-transformers/all-MiniLM-L6-v2"


def test_chunk_size_is_capped_to_the_window(embedder: Embedder, long_doc: Document) -> None:
    oversized = Chunker(ChunkingSettings(chunk_size=1000, chunk_overlap=600), embedder)
    params = oversized.params
    assert params.chunk_size == WINDOW - 2  # [CLS] and [SEP]
    assert params.chunk_overlap == params.chunk_size // 2
    chunks = oversized.chunk(long_doc)
    assert chunks and all(c.n_tokens <= WINDOW and not c.truncated for c in chunks)


# ---------------------------------------------------------------------------------------------- window sizes
def test_long_document_chunks_fit_the_window(long_chunks: list[Chunk], embedder: Embedder) -> None:
    assert len(long_chunks) >= 4
    assert [c.n_tokens for c in long_chunks if c.n_tokens > WINDOW] == []
    assert not any(c.truncated for c in long_chunks)
    # n_tokens is the real measure of what the embedder sees (title and special tokens included).
    assert [c.n_tokens for c in long_chunks] == embedder.count_tokens([c.embed_text for c in long_chunks])


def test_long_document_loses_no_text(long_chunks: list[Chunk], long_doc: Document) -> None:
    joined = " ".join(c.text for c in long_chunks)
    for sentence in re.findall(r"Crew \d+-\d+ [^.]+\.", long_doc.text):
        assert sentence in joined


def test_positions_count_up_from_zero_per_document(chunker: Chunker, long_doc: Document) -> None:
    other = _doc("A short second document. It has two sentences.", doc_id="doc-2")
    chunks = chunker.chunk_many([long_doc, other])
    by_doc: dict[str, list[int]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c.position)
    assert by_doc["doc-1"] == list(range(len(by_doc["doc-1"])))
    assert by_doc["doc-2"] == [0]


def test_one_long_sentence_without_punctuation_is_split_within_the_window(chunker: Chunker) -> None:
    words = [f"token{i} alpha beta gamma" for i in range(400)]
    doc = _doc(" ".join(words))
    chunks = chunker.chunk(doc)
    assert len(chunks) > 1
    # The code splits on words when there is no sentence boundary: nothing is truncated, so nothing is cut silently.
    assert all(c.n_tokens <= WINDOW and not c.truncated for c in chunks)
    joined = " ".join(c.text for c in chunks)
    assert all(f"token{i} " in joined + " " for i in range(400))


def test_truncation_is_reported_not_silent(chunker: Chunker) -> None:
    """Whatever the splitter produced, ``truncated`` is exactly "longer than the window" (what the report counts)."""
    doc = _doc("Lorem ipsum dolor " * 600)
    chunks = chunker.chunk(doc)
    assert chunks
    assert all(c.truncated == (c.n_tokens > WINDOW) for c in chunks)


def test_whitespace_only_document_has_no_chunks(chunker: Chunker) -> None:
    assert chunker.chunk(_doc("   \n\n \t ")) == []


# ---------------------------------------------------------------------------------------------------- titles
def test_title_is_part_of_embed_text(chunker: Chunker, long_chunks: list[Chunk]) -> None:
    for c in long_chunks:
        assert c.title == "Field Survey Notes"
        assert c.embed_text == f"Field Survey Notes\n\n{c.text}"
    untitled = chunker.chunk(_doc("No title here. Just text.", title=""))
    assert [c.embed_text for c in untitled] == [c.text for c in untitled]
    assert embed_text("T", "body") == "T\n\nbody"


def test_title_counts_against_the_window(chunker: Chunker) -> None:
    text = "\n\n".join(_paragraphs(8, seed=11))
    plain = chunker.chunk(_doc(text, title=""))
    titled = chunker.chunk(_doc(text, title=" ".join(["Quarterly Infrastructure Review"] * 8)))
    assert all(c.n_tokens <= WINDOW for c in titled)
    assert len(titled) >= len(plain)  # less room per chunk for the text


def test_runaway_title_is_shortened_in_embed_text(chunker: Chunker, embedder: Embedder) -> None:
    title = " ".join(f"word{i}" for i in range(60))
    [chunk] = chunker.chunk(_doc("A short body.", title=title))
    assert chunk.title == title  # the payload keeps the full title
    embedded_title = chunk.embed_text.split("\n\n")[0]
    assert title.startswith(embedded_title + " ")  # a whole-word prefix
    assert len(embedder.token_ids(embedded_title)) <= chunker.params.chunk_size // 4


def test_token_heavy_title_does_not_break_chunking(chunker: Chunker) -> None:
    title = "https://example.com/" + "abcdefghijkl/" * 60  # one "word", hundreds of word pieces
    chunks = chunker.chunk(_doc("A short body about a web page.", title=title))
    assert chunks and all(c.n_tokens <= WINDOW for c in chunks)


# ------------------------------------------------------------------------------------------------- chunk ids
def test_chunk_id_is_a_stable_uuid() -> None:
    # Golden value: point ids of existing indexes are derived this way; a change would orphan every stored point.
    assert chunk_id("doc", 0, "text") == chunk_id("doc", 0, "text")
    assert chunk_id("doc", 0, "text") == "fe85cbbe-6127-57f8-9f74-e8d64954cd7e"
    assert len({chunk_id("doc", 0, "text"), chunk_id("doc", 1, "text"), chunk_id("doc2", 0, "text")}) == 3


def test_chunk_ids_are_deterministic_across_chunkers(embedder: Embedder, long_doc: Document) -> None:
    first = Chunker(ChunkingSettings(), embedder).chunk(long_doc)
    second = Chunker(ChunkingSettings(), embedder).chunk(long_doc)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in second]
    assert len({c.chunk_id for c in first}) == len(first)


def test_chunk_ids_change_with_the_text_and_only_where_it_changed(
    chunker: Chunker, long_doc: Document, long_chunks: list[Chunk]
) -> None:
    paragraphs = long_doc.text.split("\n\n")
    paragraphs[-1] = "The last paragraph was rewritten entirely. It now talks about something else."
    changed = chunker.chunk(_doc("\n\n".join(paragraphs), title=long_doc.title))

    before = [c.chunk_id for c in long_chunks]
    after = [c.chunk_id for c in changed]
    assert before != after
    assert after[0] == before[0]  # the head of the document is chunked identically, so its ids (and vectors) survive
    assert before[-1] not in after


def test_same_text_in_another_document_gets_another_id(chunker: Chunker) -> None:
    [a] = chunker.chunk(_doc("Identical text.", doc_id="a"))
    [b] = chunker.chunk(_doc("Identical text.", doc_id="b"))
    assert a.chunk_id != b.chunk_id
