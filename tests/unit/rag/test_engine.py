"""RagEngine: a stack opened against the index of its installation."""

from __future__ import annotations

import pytest

from flows.settings import Settings
from pipelines.embed import Embedder
from pipelines.index import VectorIndex
from rag.engine import RagEngine
from rag.errors import StackError, StackMismatch
from rag.types import StackConfig
from tests.unit.rag.conftest import BuiltIndex, copy_index

pytestmark = pytest.mark.slow


@pytest.fixture
def config(built_index: BuiltIndex) -> StackConfig:
    version = VectorIndex(built_index.settings).current()
    assert version is not None
    return StackConfig.for_index(version, name="engine", pin=True, retrieval={"mode": "hybrid", "top_k": 4})


def test_ask_and_ask_many(settings: Settings, built_index: BuiltIndex, embedder: Embedder, config: StackConfig) -> None:
    copy_index(built_index, settings)
    with RagEngine.open(settings, config, embedder=embedder) as engine:
        answer = engine.ask("When was the Copper Kettle Bakery opened?", filters={"tenant": "acme"})
        assert "1962" in answer.text and answer.citations[0].doc_id == "acme/bakery.md"
        answers = engine.ask_many(["Where does the chess club meet?", "What is the capital of Peru?"])
        assert "library" in answers[0].text and answers[1].abstained
        assert len(engine.retrieve("satellite", top_k=2)) == 2


def test_open_refuses_a_stack_that_does_not_fit(
    settings: Settings, built_index: BuiltIndex, embedder: Embedder, config: StackConfig
) -> None:
    with pytest.raises(StackError, match="cannot open its index"):
        RagEngine.open(settings, config, embedder=embedder)  # this home has no index yet
    copy_index(built_index, settings)
    other = config.embedder.model_copy(update={"weights_sha256": "f" * 64})
    with pytest.raises(StackMismatch, match="needs embedder"):
        RagEngine.open(settings, config.model_copy(update={"embedder": other}), embedder=embedder)
    with pytest.raises(StackError, match="cannot open its index"):
        RagEngine.open(settings, config.model_copy(update={"index_version": 99}), embedder=embedder)


def test_an_llm_stack_falls_back_to_the_extractive_answer(
    built_index: BuiltIndex, settings: Settings, embedder: Embedder, config: StackConfig
) -> None:
    """An LLM stack opens; with its server unreachable (port 9, loopback) the answer is extractive, with a notice."""
    copy_index(built_index, settings)
    llm = config.model_copy(
        update={
            "answerer": config.answerer.model_copy(update={"kind": "llm"}),
            "llm": config.llm.model_copy(update={"base_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 2}),
        }
    )
    with RagEngine.open(settings, llm, embedder=embedder) as engine:
        answer = engine.ask("How large is the Reno plant?")
    assert "extractive" in (getattr(answer, "notice", None) or "")


def test_token_usage_counts_chunks_as_ingestion_measured_them(
    settings: Settings, built_index: BuiltIndex, embedder: Embedder, config: StackConfig
) -> None:
    from dataclasses import replace

    copy_index(built_index, settings)
    question = "When was the Copper Kettle Bakery opened?"
    with RagEngine.open(settings, config, embedder=embedder) as engine:
        chunks = engine.retrieve(question, top_k=2)
        answer = engine.answerer.answer(question, chunks)
        prompt, completion = engine.token_usage(question, chunks, answer)
        bare = [replace(c, metadata={}) for c in chunks]  # an index without stored sizes: counted here
        bare_prompt, _ = engine.token_usage(question, bare, answer)
    (asked,) = embedder.count_tokens([question])
    stored = [c.metadata["n_tokens"] for c in chunks]
    assert prompt == asked + sum(stored) and completion == embedder.count_tokens([answer.text])[0]
    assert bare_prompt == asked + sum(embedder.count_tokens([c.text for c in chunks]))
    assert all(n > m for n, m in zip(stored, embedder.count_tokens([c.text for c in chunks]), strict=True))
