"""StackConfig: strict, frozen, round-trips, fingerprints."""

from __future__ import annotations

import pydantic
import pytest

from rag.types import Answer, Citation, StackConfig

EMBEDDER = {"name": "m", "weights_sha256": "a" * 64, "dim": 384, "max_tokens": 256}
CHUNKING = {"splitter": "s", "chunk_size": 200, "chunk_overlap": 24, "tokenizer": "t"}


def config(**changes: object) -> StackConfig:
    data: dict[str, object] = {"name": "base", "collection": "docs", "embedder": EMBEDDER, "chunking": CHUNKING}
    data.update(changes)
    return StackConfig.model_validate(data)


def test_defaults_are_dense_extractive_top5() -> None:
    stack = config()
    assert stack.retrieval.mode == "dense" and stack.retrieval.top_k == 5
    assert stack.retrieval.fusion == "rrf" and stack.retrieval.rrf_k == 60
    assert stack.answerer.kind == "extractive" and stack.index_version is None


def test_json_round_trip_and_fingerprint_ignores_name() -> None:
    stack = config(retrieval={"mode": "hybrid", "top_k": 8, "sparse_weight": 0.5})
    again = StackConfig.model_validate_json(stack.model_dump_json())
    assert again == stack
    assert stack.fingerprint() == stack.model_copy(update={"name": "other"}).fingerprint()
    assert stack.fingerprint() != config().fingerprint()
    assert stack.flat_params()["retrieval.sparse_weight"] == "0.5"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"retrival": {}}, "Extra inputs"),
        ({"retrieval": {"mode": "sparse"}}, "mode"),
        ({"retrieval": {"top_k": 50}}, "candidates"),
        ({"prompt_template": "no slots"}, "question"),
        ({"answerer": {"kind": "llm"}}, "llm.base_url"),
        ({"embedder": {**EMBEDDER, "weights_sha256": "xyz"}}, "weights_sha256"),
        ({"name": "has space"}, "name"),
    ],
)
def test_invalid_configs_are_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        config(**changes)


def test_config_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        config().name = "x"  # type: ignore[misc]


def test_answer_json() -> None:
    citation = Citation(n=1, doc_id="d", source="s", chunk_id="c", position=0, score=0.5, title="t")
    data = Answer(text="x [1].", citations=(citation,), abstained=False, support=0.123456).to_json()
    assert data["citations"][0]["doc_id"] == "d" and data["support"] == 0.1235
