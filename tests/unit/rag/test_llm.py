"""The LLM answerer and its extractive fallback, against a real OpenAI-compatible server on loopback (no mocks)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from rag.answer import ExtractiveAnswerer
from rag.errors import AnswerError, BadQuery, StackError
from rag.llm import (
    FallbackAnswerer,
    LlmAnswerer,
    LlmError,
    LlmTimeout,
    NoticedAnswer,
    StreamEvent,
    cited_numbers,
    format_context,
)
from rag.types import ABSTAIN_TEXT, RetrievedChunk, StackConfig
from tests.fixtures.chunks import make_chunk
from tests.fixtures.fake_openai import FakeOpenAI, split_deltas

SHA = "ab" * 32


def chunk(n: int, doc_id: str, title: str, text: str, similarity: float) -> RetrievedChunk:
    return make_chunk(n, doc_id, title, text, similarity, position=n)


CHUNKS = [
    chunk(
        1,
        "acme/volcano.md",
        "Mount Kerrigan",
        "Mount Kerrigan is a dormant volcano in the Aldren Range. Its last eruption happened in 1847.",
        0.71,
    ),
    chunk(2, "acme/bakery.md", "The Copper Kettle Bakery", "The Copper Kettle Bakery opened in 1962.", 0.22),
    chunk(3, "globex/kerrigan-hike.md", "Hiking Mount Kerrigan", "The trail starts in the village of Lorn.", 0.48),
]
QUESTION = "When did Mount Kerrigan last erupt?"
REPLY = "Mount Kerrigan last erupted in 1847 [1]. The trail to it starts in Lorn [3]."


def stack(base_url: str, *, timeout_s: float = 5.0, **llm: object) -> StackConfig:
    """A stack config as ``StackConfig.for_index`` builds it, without an index (the answerer needs none)."""
    return StackConfig.model_validate(
        {
            "name": "llm-test",
            "collection": "docs",
            "embedder": {"name": "test-embedder", "weights_sha256": SHA, "dim": 8, "max_tokens": 128},
            "chunking": {"splitter": "sentence", "chunk_size": 256, "chunk_overlap": 32, "tokenizer": "test"},
            "answerer": {"kind": "llm"},
            "llm": {"base_url": base_url, "model": "test-model", "timeout_s": timeout_s, **llm},
        }
    )


def fallback(config: StackConfig) -> FallbackAnswerer:
    return FallbackAnswerer(LlmAnswerer(config), ExtractiveAnswerer(config.answerer))


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=REPLY) as server:
        yield server


class TestLlmAnswer:
    def test_answer_is_the_reply_with_the_citations_it_names(self, fake: FakeOpenAI) -> None:
        answerer = LlmAnswerer(stack(fake.base_url))
        answer = answerer.answer(QUESTION, CHUNKS)
        assert answer.text == REPLY
        assert not answer.abstained
        assert [(c.n, c.chunk_id) for c in answer.citations] == [(1, CHUNKS[0].chunk_id), (3, CHUNKS[2].chunk_id)]
        assert answer.support == pytest.approx(0.71)
        assert answer.sentences == (
            "Mount Kerrigan last erupted in 1847 [1].",
            "The trail to it starts in Lorn [3].",
        )

    def test_request_carries_the_question_the_numbered_context_and_the_stack_settings(self, fake: FakeOpenAI) -> None:
        LlmAnswerer(stack(fake.base_url, temperature=0.2, max_tokens=77)).answer(QUESTION, CHUNKS)
        (request,) = fake.requests
        assert request.path == "/v1/chat/completions"
        assert QUESTION in request.prompt
        assert "[1] Mount Kerrigan: Mount Kerrigan is a dormant volcano" in request.prompt
        assert "[3] Hiking Mount Kerrigan: The trail starts in the village of Lorn." in request.prompt
        assert request.body["model"] == "test-model"
        assert request.body["temperature"] == 0.2
        assert request.body["max_tokens"] == 77
        assert request.body["stream"] is False
        assert request.headers["Authorization"] == "Bearer not-needed"

    def test_key_comes_from_the_named_environment_variable(
        self, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RAGOPS_TEST_LLM_KEY", "sk-test-123")
        LlmAnswerer(stack(fake.base_url, api_key_env="RAGOPS_TEST_LLM_KEY")).answer(QUESTION, CHUNKS)
        assert fake.requests[0].headers["Authorization"] == "Bearer sk-test-123"

    def test_a_named_but_unset_key_variable_is_a_stack_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("RAGOPS_TEST_LLM_KEY", raising=False)
        answerer = LlmAnswerer(stack("http://127.0.0.1:9/v1", api_key_env="RAGOPS_TEST_LLM_KEY"))
        with pytest.raises(StackError, match="RAGOPS_TEST_LLM_KEY"):
            answerer.warm_up()

    def test_reply_without_markers_cites_every_chunk_in_order(self) -> None:
        with FakeOpenAI(reply="It erupted in 1847.") as server:
            answer = LlmAnswerer(stack(server.base_url)).answer(QUESTION, CHUNKS)
        assert [c.n for c in answer.citations] == [1, 2, 3]
        assert not answer.abstained

    def test_not_found_reply_abstains(self) -> None:
        with FakeOpenAI(reply=ABSTAIN_TEXT) as server:
            answer = LlmAnswerer(stack(server.base_url)).answer("Who won the 1990 chess final?", CHUNKS)
        assert answer.abstained and answer.citations == () and answer.text == ABSTAIN_TEXT

    def test_no_chunks_abstains_without_calling_the_model(self, fake: FakeOpenAI) -> None:
        answer = LlmAnswerer(stack(fake.base_url)).answer(QUESTION, [])
        assert answer.abstained and fake.requests == []

    def test_empty_question_is_a_bad_query(self, fake: FakeOpenAI) -> None:
        with pytest.raises(BadQuery):
            LlmAnswerer(stack(fake.base_url)).answer("  ", CHUNKS)
        with pytest.raises(BadQuery):
            fallback(stack(fake.base_url)).answer("", CHUNKS)

    def test_markers_parse_lists_and_ignore_out_of_range(self) -> None:
        assert cited_numbers("a [2] b [1, 3] c [2] d [9] e [0]", 3) == [2, 1, 3]
        assert format_context(CHUNKS[:1]).startswith("[1] Mount Kerrigan: Mount Kerrigan is")

    def test_an_http_error_raises_answer_error(self) -> None:
        with FakeOpenAI(fail_status=500) as server, pytest.raises(LlmError, match="HTTP 500") as caught:
            LlmAnswerer(stack(server.base_url)).answer(QUESTION, CHUNKS)
        assert len(server.requests) == 1  # no retries
        assert server.base_url in str(caught.value) and caught.value.public == "failed (HTTP 500)"

    def test_client_touches_no_llama_index_globals_and_loads_no_tokenizer(self, fake: FakeOpenAI) -> None:
        answerer = LlmAnswerer(stack(fake.base_url))
        answerer.answer(QUESTION, CHUNKS)
        list(answerer.stream(QUESTION, CHUNKS))
        from llama_index.core import Settings

        assert Settings._llm is None and Settings._callback_manager is None
        registry = sys.modules.get("tiktoken.registry")
        assert registry is None or not getattr(registry, "ENCODINGS", {})


class TestLlmStream:
    def test_stream_yields_token_deltas_that_join_to_the_reply(self, fake: FakeOpenAI) -> None:
        pieces = list(LlmAnswerer(stack(fake.base_url)).stream(QUESTION, CHUNKS))
        assert len(pieces) == len(split_deltas(REPLY)) > 3
        assert "".join(pieces) == REPLY
        assert fake.requests[0].body["stream"] is True
        assert QUESTION in fake.requests[0].prompt

    def test_stream_events_end_with_the_cited_answer(self, fake: FakeOpenAI) -> None:
        events = list(LlmAnswerer(stack(fake.base_url)).stream_events(QUESTION, CHUNKS))
        assert [e.kind for e in events[:-1]] == ["delta"] * (len(events) - 1)
        done = events[-1]
        assert done.kind == "done" and done.answer is not None
        assert done.answer.text == REPLY and [c.n for c in done.answer.citations] == [1, 3]


class TestFallback:
    def test_llm_answer_when_the_llm_answers(self, fake: FakeOpenAI) -> None:
        answer = fallback(stack(fake.base_url)).answer(QUESTION, CHUNKS)
        assert answer.text == REPLY
        assert not isinstance(answer, NoticedAnswer)

    def test_timeout_gives_the_extractive_answer_with_a_notice(self) -> None:
        config = stack("unused", timeout_s=0.5)
        extractive = ExtractiveAnswerer(config.answerer).answer(QUESTION, CHUNKS)
        with FakeOpenAI(reply=REPLY, delay_s=5.0) as server:
            answerer = fallback(stack(server.base_url, timeout_s=0.5))
            answerer.warm_up()
            start = time.monotonic()
            answer = answerer.answer(QUESTION, CHUNKS)
            elapsed = time.monotonic() - start
        assert elapsed < 0.5 + 1.0
        assert isinstance(answer, NoticedAnswer)
        assert answer.notice == "The LLM timed out after 0.5 s; this is the extractive answer."
        assert answer.text == extractive.text and answer.citations == extractive.citations
        assert "1847" in answer.text
        assert answer.to_json()["notice"] == answer.notice

    def test_server_error_gives_the_extractive_answer_with_a_notice(self) -> None:
        with FakeOpenAI(fail_status=500) as server:
            answer = fallback(stack(server.base_url)).answer(QUESTION, CHUNKS)
        assert isinstance(answer, NoticedAnswer)
        assert answer.notice == "The LLM failed (HTTP 500); this is the extractive answer."
        assert "127.0.0.1" not in answer.notice  # the endpoint stays in the log
        assert "1847" in answer.text

    def test_unreachable_server_gives_the_extractive_answer(self) -> None:
        with FakeOpenAI() as server:
            base_url = server.base_url
        answer = fallback(stack(base_url)).answer(QUESTION, CHUNKS)  # the port is closed now
        assert (
            isinstance(answer, NoticedAnswer)
            and answer.notice == "The LLM failed (unreachable); this is the extractive answer."
        )

    def test_stream_failing_before_the_first_token_streams_a_notice_then_the_extractive_answer(self) -> None:
        with FakeOpenAI(fail_status=503) as server:
            answerer = fallback(stack(server.base_url))
            events = list(answerer.stream_events(QUESTION, CHUNKS))
            pieces = list(answerer.stream(QUESTION, CHUNKS))
        assert events[0].kind == "notice" and "HTTP 503" in events[0].text
        done = events[-1]
        assert isinstance(done.answer, NoticedAnswer) and done.answer.notice == events[0].text
        assert "".join(e.text for e in events if e.kind == "delta") == done.answer.text
        assert pieces[0] == f"[{events[0].text}]\n\n"
        assert "".join(pieces[1:]) == done.answer.text

    def test_stream_failing_mid_answer_appends_the_extractive_answer_after_a_marker(self) -> None:
        with FakeOpenAI(reply=REPLY, cut_after=3) as server:
            answerer = fallback(stack(server.base_url))
            events = list(answerer.stream_events(QUESTION, CHUNKS))
        kinds = [e.kind for e in events]
        notice_at = kinds.index("notice")
        partial = "".join(e.text for e in events[:notice_at])
        assert partial == "".join(split_deltas(REPLY)[:3])
        done = events[-1]
        assert isinstance(done.answer, NoticedAnswer)
        assert done.answer.notice == "The LLM failed (connection broken) mid-answer; the extractive answer follows."
        assert "".join(e.text for e in events[notice_at + 1 : -1]) == done.answer.text

    def test_stream_stalling_mid_answer_times_out_and_falls_back(self) -> None:
        with FakeOpenAI(reply=REPLY, chunk_delay_s=5.0) as server:
            answerer = fallback(stack(server.base_url, timeout_s=0.5))
            start = time.monotonic()
            pieces = list(answerer.stream(QUESTION, CHUNKS))
            elapsed = time.monotonic() - start
        assert elapsed < 0.5 + 1.5
        text = "".join(pieces)
        assert text.startswith(split_deltas(REPLY)[0])
        marker = "\n\n[The LLM timed out after 0.5 s mid-answer; the extractive answer follows.]\n\n"
        assert marker in text and "1847" in text.split(marker, 1)[1]

    def test_stream_events_pass_through_when_the_llm_answers(self, fake: FakeOpenAI) -> None:
        events = list(fallback(stack(fake.base_url)).stream_events(QUESTION, CHUNKS))
        assert all(isinstance(e, StreamEvent) for e in events)
        assert "notice" not in [e.kind for e in events]
        assert "".join(e.text for e in events if e.kind == "delta") == REPLY


def test_llm_errors_are_answer_errors() -> None:
    assert issubclass(LlmTimeout, LlmError) and issubclass(LlmError, AnswerError)
