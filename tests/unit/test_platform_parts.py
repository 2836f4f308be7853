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


def test_a_group_whose_leader_exits_on_sigterm_is_done_without_sitting_out_the_grace() -> None:
    """The supervisor is the leaders' parent: an exited leader is a zombie (its group still "exists") until reaped.
    Stopping must reap as it polls, or every Ctrl-C waits the whole grace before SIGKILL (measured: 3 s of a 5 s
    budget)."""
    import subprocess
    import sys
    import time

    from flows.reaper import terminate_groups

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    time.sleep(0.3)
    started = time.monotonic()
    killed = terminate_groups([child.pid], grace_s=5.0, reap=child.poll)
    took = time.monotonic() - started
    assert killed == [] and child.returncode == -15  # stopped by SIGTERM, not SIGKILL
    assert took < 2.0, f"{took:.1f} s"
