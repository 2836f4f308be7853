"""The local LLM: SmolLM2-135M-Instruct converted once and served through ``transformers serve`` on loopback.

One server for the module (the first start de-quantises the GGUF into the session cache, about 30-80 s on a busy
machine); the official ``openai`` client streams from it, and the conversion is then reused.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.local_llm import LocalLlmError, LocalLlmSettings, bundled_gguf, converted_checkpoint, gguf_file

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _weights_or_skip() -> Path:
    try:
        return bundled_gguf()
    except LocalLlmError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def llm_server(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a local LLM server in a subprocess (stopped after the module)."""
    _weights_or_skip()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llm") / "server.log"
    code = (
        "import logging\nfrom pathlib import Path\nfrom rag.local_llm import LocalLlmSettings, serve_local_llm\n"
        "logging.basicConfig(level=logging.INFO)\n"
        f"serve_local_llm('127.0.0.1', {port}, LocalLlmSettings(), Path({str(shared_cache)!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"LLM server exited: {log_path.read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"LLM server not healthy: {log_path.read_text()[-2000:]}"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_streams_a_chat_completion_with_usage(llm_server: str) -> None:
    import openai

    client = openai.OpenAI(base_url=llm_server, api_key="not-needed", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct"]
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    usage = None
    for chunk in client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[
            {
                "role": "user",
                "content": "Context: [1] The NR-200 warranty lasts 24 months.\n"
                "Question: How long is the NR-200 warranty? Answer:",
            }
        ],
        max_tokens=12,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert first is not None and first - start < 60
    assert "".join(pieces).strip()
    assert usage is not None
    assert usage.prompt_tokens > 20  # the chat template plus the message, counted by the model's tokenizer
    assert 1 <= usage.completion_tokens <= 12


def test_an_unknown_model_name_is_a_client_error(llm_server: str) -> None:
    import openai

    client = openai.OpenAI(base_url=llm_server, api_key="not-needed", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_a_second_start_reuses_the_conversion(llm_server: str, shared_cache: Path) -> None:
    checkpoint_root = shared_cache / "llm"
    [checkpoint] = [p for p in checkpoint_root.iterdir() if len(p.name) == 64]
    weights = checkpoint / "model.safetensors"
    written = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = converted_checkpoint(gguf_file(LocalLlmSettings()), checkpoint_root)
    assert again == checkpoint
    assert time.perf_counter() - start < 10  # hashing the GGUF only; converting takes 30 s or more
    assert weights.stat().st_mtime_ns == written
    assert not list(checkpoint_root.glob(".*.tmp-*"))


def test_a_bad_gguf_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file")
    with pytest.raises(LocalLlmError, match="converting"):
        converted_checkpoint(bogus, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [p.name for p in (tmp_path / "cache").glob("*.lock")]


def test_a_missing_gguf_path_is_named() -> None:
    with pytest.raises(LocalLlmError, match="does not exist"):
        gguf_file(LocalLlmSettings(gguf_path=Path("/nonexistent/model.gguf")))


def test_a_stack_answers_through_the_local_llm(llm_server: str) -> None:
    from rag.llm import LlmAnswerer
    from rag.types import StackConfig
    from tests.fixtures.chunks import make_chunk

    config = StackConfig.model_validate(
        {
            "name": "local-llm",
            "collection": "docs",
            "embedder": {"name": "test-embedder", "weights_sha256": "0" * 64, "dim": 8, "max_tokens": 128},
            "chunking": {"splitter": "sentence", "chunk_size": 256, "chunk_overlap": 32, "tokenizer": "test"},
            "answerer": {"kind": "llm"},
            "llm": {"base_url": llm_server, "model": "smollm2-135m-instruct", "timeout_s": 120, "max_tokens": 16},
        }
    )
    chunks = [make_chunk(1, "warranty", "Warranty", "The NR-200 warranty lasts 24 months from delivery.", 0.8)]
    answerer = LlmAnswerer(config)
    answer = answerer.answer("How long is the NR-200 warranty?", chunks)
    assert answer.text and answer.citations[0].doc_id == "warranty" or answer.abstained
    deltas = list(answerer.stream("How long is the NR-200 warranty?", chunks))
    assert len(deltas) > 1  # token by token, not one block
    assert "".join(deltas).strip()


# ------------------------------------------------------------------------------------------ synthetic questions
QUESTION_CHUNKS = [
    (
        "volcano",
        "Mount Kerrigan and the eruption of 1847 in the Aldren Range",
        "Mount Kerrigan is a dormant volcano in the Aldren Range. Its last eruption happened in 1847 and covered the "
        "valley of Tesh in ash. The summit reaches 3,412 metres above sea level, and the crater holds a lake that "
        "freezes over in the coldest winters.",
    ),
    (
        "bakery",
        "The Copper Kettle Bakery on Harbour Street and its rye sourdough",
        "The Copper Kettle Bakery opened in 1962 on Harbour Street. Its best-known product is a rye sourdough loaf "
        "baked in a wood-fired oven. The bakery is closed every Monday and opens at six on other days, "
        "when the first loaves leave the oven.",
    ),
    (
        "satellite",
        "The Orion-7 weather satellite launched from Kourou in 2019",
        "The Orion-7 weather satellite was launched on 3 March 2019 from the Kourou spaceport. It circles the Earth "
        "at an altitude of 705 kilometres and measures sea surface temperature until the "
        "mission ends in 2031, when it will be moved to a graveyard orbit.",
    ),
]


def _question_chunks() -> list[Any]:
    from pipelines.reembed import StoredChunk

    return [StoredChunk(f"{doc}-0", doc, title, text, 0, {}, None) for doc, title, text in QUESTION_CHUNKS]


def test_questions_from_the_local_llm_server(llm_server: str) -> None:
    """The synthetic-question generator through `ragops server llm`, as any OpenAI-compatible endpoint."""
    from evaluation.synthetic import EndpointQuestionLlm, llm_candidates

    llm = EndpointQuestionLlm(
        llm_server, "smollm2-135m-instruct", api_key=None, concurrency=2, max_new_tokens=24, timeout_s=120
    )
    generation = llm_candidates(_question_chunks(), llm, limit=5, shots=1, seed=0, embed_text=lambda c: c.text)
    assert generation.asked == 2 and generation.model == "smollm2-135m-instruct"  # one chunk is the example
    assert generation.candidates and all(c.query and "\n" not in c.query for c in generation.candidates)


def test_questions_from_the_bundled_model_in_process(shared_cache: Path) -> None:
    """The default generator: the same weights in this process, batched; greedy, so the same questions twice."""
    from evaluation.synthetic import LocalQuestionLlm, llm_candidates

    _weights_or_skip()
    llm = LocalQuestionLlm(LocalLlmSettings(), shared_cache, batch=2, max_new_tokens=24, threads=1)
    first = llm_candidates(_question_chunks(), llm, limit=5, shots=1, seed=0, embed_text=lambda c: c.text)
    again = llm_candidates(_question_chunks(), llm, limit=5, shots=1, seed=0, embed_text=lambda c: c.text)
    assert first.asked == 2 and len(first.candidates) >= 1
    assert [c.query for c in first.candidates] == [c.query for c in again.candidates]
