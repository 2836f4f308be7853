"""`ragops up`'s optional fifth part: the bundled LLM starts when the champion stack answers with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.platform import Ports, parts, uses_local_llm
from flows.settings import Settings
from rag.types import ChunkingRef, EmbedderRef, StackConfig

PORTS = Ports(api=8000, prefect=4200, mlflow=5000, llm=8181)


def _stack(**overrides: object) -> StackConfig:
    embedder = EmbedderRef(name="m", weights_sha256="a" * 64, dim=384, max_tokens=256)
    chunking = ChunkingRef(splitter="tokens", chunk_size=200, chunk_overlap=24, tokenizer="m")
    return StackConfig.model_validate(
        {"name": "s", "collection": "docs", "embedder": embedder, "chunking": chunking, **overrides}
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, False),  # extractive
        ({"answerer": {"kind": "llm"}, "llm": {"base_url": "http://127.0.0.1:8181/v1", "model": "x"}}, True),
        ({"answerer": {"kind": "llm"}, "llm": {"base_url": "http://localhost:8181/v1", "model": "x"}}, True),
        ({"answerer": {"kind": "llm"}, "llm": {"base_url": "http://127.0.0.1:9999/v1", "model": "x"}}, False),
        ({"answerer": {"kind": "llm"}, "llm": {"base_url": "https://api.example/v1", "model": "x"}}, False),
    ],
)
def test_the_llm_part_follows_the_stack(overrides: dict[str, object], expected: bool) -> None:
    assert uses_local_llm(_stack(**overrides), PORTS) is expected


def test_the_llm_part_runs_ragops_server_llm_on_its_port(tmp_path: Path) -> None:
    llm = next(p for p in parts(Settings(home=tmp_path), PORTS) if p.name == "llm")
    assert list(llm.argv[-4:]) == ["server", "llm", "--port", "8181"]
    assert llm.url == "http://127.0.0.1:8181" and llm.health == "/health" and llm.port == 8181
