"""Answering with an LLM behind any OpenAI-compatible chat endpoint (vLLM, Ollama, a hosted API), with a fallback.

:class:`LlmAnswerer` sends the stack's ``prompt_template`` filled with the question and the retrieved chunks,
numbered ``[1] title: text``, as one user message through llama-index's ``OpenAILike`` client (chat completions, no
retries, the stack's ``llm.timeout_s``) and turns the reply into an :class:`~rag.types.Answer`:

* **citations** are the chunks the reply cites as ``[n]`` (also ``[1, 3]``), in order of first mention, keeping the
  prompt's numbers so the text and the citations agree; markers outside ``1..len(chunks)`` are ignored, and a reply
  without any valid marker cites every chunk it was given, in order;
* **abstention**: no chunks (the model is not called), or a reply that says the answer is not found (the
  :data:`~rag.types.ABSTAIN_TEXT` phrase with no citation, or "I don't know ..."), gives the standard abstention;
* **support** is the best dense similarity among the cited chunks (an LLM reports no confidence of its own).

``llm.timeout_s`` bounds connecting and every wait for data: the whole response when not streaming, the first token
and each gap between tokens when streaming. Failures raise :class:`LlmError`, an :class:`rag.errors.AnswerError`
(:class:`LlmTimeout` for a timeout). The key is read from the environment variable ``llm.api_key_env`` names
(``"not-needed"`` when the stack names none: local servers ignore it). ``llm.base_url`` is the API root including its
version, e.g. ``http://localhost:8000/v1``. No llama-index global (``Settings``) is read or changed, and nothing is
downloaded: the client is built with its own empty callback manager and no tokenizer.

:class:`FallbackAnswerer` is what a stack with ``answerer.kind == "llm"`` serves: the LLM answer, or on any LLM
error or timeout the extractive answer, as a :class:`NoticedAnswer` whose ``notice`` says what happened.

Streaming (``stream`` yields pieces that **concatenate** to the text, token deltas with no separator added;
``stream_events`` yields the same pieces as events, plus notices and a final event carrying the full answer):

* the LLM answers: its token deltas, then ``done`` with the LLM answer;
* the LLM fails **before its first token**: a ``notice`` event, then the extractive answer's sentences, then ``done``
  with the extractive answer (``notice`` set). ``stream`` renders the notice as ``"[<notice>]\\n\\n"`` first;
* the LLM fails **mid-stream**: the tokens already sent stay sent; a ``notice`` event, then the extractive answer's
  sentences, then ``done`` with the extractive answer (``notice`` set; the partial LLM text is not part of it).
  ``stream`` renders the notice as the marker ``"\\n\\n[<notice>]\\n\\n"`` between the partial text and the
  extractive text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import httpx
import openai

from rag.answer import ExtractiveAnswerer, split_sentences
from rag.errors import AnswerError, BadQuery, StackError
from rag.types import ABSTAIN_TEXT, Answer, Citation, LlmConfig, RetrievedChunk, StackConfig, TokenCount

if TYPE_CHECKING:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

logger = logging.getLogger(__name__)

NO_KEY = "not-needed"
"""The API key sent when the stack names no key variable (vLLM and Ollama accept any)."""

_MARKER = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")
_SPACES = re.compile(r"\s+")
_ABSTAIN_PHRASE = "not found in the indexed documents"
_DONT_KNOW = re.compile(r"^\W*(i\s+(do\s+not|don'?t|cannot|can'?t)\s+(know|answer|find)|unknown\W*$)", re.IGNORECASE)


class LlmError(AnswerError):
    """The LLM endpoint failed. The message has the details (endpoint, server text) for logs; ``public`` is a short
    description without the endpoint, fit for a response notice ("failed (HTTP 500)", "timed out after 30 s")."""

    def __init__(self, message: str, *, public: str) -> None:
        super().__init__(message)
        self.public = public


class LlmTimeout(LlmError):
    """The LLM endpoint did not answer (or stopped sending) within ``llm.timeout_s``."""


@dataclass(frozen=True)
class NoticedAnswer(Answer):
    """An answer with a notice for the caller, e.g. that the LLM failed and this is the extractive answer."""

    notice: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: :meth:`Answer.to_json` plus ``notice``."""
        return {**super().to_json(), "notice": self.notice}


@dataclass(frozen=True)
class StreamEvent:
    """One event of :meth:`LlmAnswerer.stream_events` / :meth:`FallbackAnswerer.stream_events`.

    ``delta``: text to append (``text``); ``notice``: something the reader should be told (``text``), e.g. a
    fallback; ``done``: the last event, with the complete ``answer`` (citations included).
    """

    kind: Literal["delta", "notice", "done"]
    text: str = ""
    answer: Answer | None = None


def format_context(chunks: Sequence[RetrievedChunk]) -> str:
    """The chunks as the prompt shows them: ``[n] title: text``, one paragraph each, numbered from 1."""
    parts = []
    for n, chunk in enumerate(chunks, start=1):
        text = chunk.text.strip()
        title = chunk.title.strip()
        parts.append(f"[{n}] {title}: {text}" if title else f"[{n}] {text}")
    return "\n\n".join(parts)


def cited_numbers(text: str, n_chunks: int) -> list[int]:
    """The chunk numbers ``text`` cites as ``[n]`` or ``[n, m]``, in order of first mention, within 1..n_chunks."""
    seen: list[int] = []
    for match in _MARKER.finditer(text):
        for part in re.split(r"[,;]", match.group(1)):
            n = int(part)
            if 1 <= n <= n_chunks and n not in seen:
                seen.append(n)
    return seen


def says_not_found(text: str, cited: Sequence[int]) -> bool:
    """True when the reply abstains: the not-found phrase without any citation, or "I don't know ..."."""
    flat = _SPACES.sub(" ", text).strip().lower()
    if not flat:
        return True
    return (_ABSTAIN_PHRASE in flat and not cited) or bool(_DONT_KNOW.match(flat))


def abstention(support: float = 0.0) -> Answer:
    """The standard abstention (the extractive answerer's wording)."""
    return Answer(text=ABSTAIN_TEXT, citations=(), abstained=True, support=support, sentences=(ABSTAIN_TEXT,))


def _similarity(chunk: RetrievedChunk) -> float:
    value = chunk.similarity if chunk.similarity is not None else chunk.score
    return max(0.0, min(1.0, float(value)))


def _validate_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise BadQuery("question is empty")
    return question.strip()


class LlmAnswerer:
    """Answers with an OpenAI-compatible chat model from the retrieved chunks, citing them as ``[n]``.

    Usage example::

        answerer = LlmAnswerer(config)          # config.llm: base_url="http://localhost:8000/v1", model="qwen2.5-7b"
        answerer.warm_up()                      # builds the client (no request is sent)
        answer = answerer.answer("How large is the Reno plant?", chunks)
        for delta in answerer.stream("How large is the Reno plant?", chunks):
            print(delta, end="")

    Raises:
        StackError: The stack names no ``llm.base_url``/``llm.model``, its prompt template cannot be filled, or the
            key variable it names is not set (at construction or warm-up).
    """

    def __init__(self, config: StackConfig) -> None:
        if not (config.llm.base_url and config.llm.model):
            raise StackError(f"stack {config.name!r} needs llm.base_url and llm.model for the LLM answerer")
        self.config = config
        self.llm_config: LlmConfig = config.llm
        try:
            config.prompt_template.format(question="q", context="c")
        except (KeyError, IndexError, ValueError) as exc:
            raise StackError(
                f"stack {config.name!r} has a prompt_template that cannot be filled ({exc!r}); only {{question}} and "
                "{context} may appear in braces (write literal braces as {{ and }})"
            ) from exc
        self._llm: OpenAILike | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ public API
    def warm_up(self) -> None:
        """Import llama-index and build the client now rather than on the first question (idempotent, no request)."""
        self._client()

    def prompt(self, question: str, chunks: Sequence[RetrievedChunk]) -> str:
        """The user message sent for ``question`` over ``chunks``."""
        return self.config.prompt_template.format(question=question.strip(), context=format_context(chunks))

    def answer(self, question: str, chunks: Sequence[RetrievedChunk]) -> Answer:
        """Ask the model once (no streaming) and cite what it cites.

        Raises:
            BadQuery: The question is empty.
            LlmTimeout: No answer within ``llm.timeout_s``.
            LlmError: The endpoint failed (unreachable, HTTP error status, broken connection, empty reply).
        """
        text = _validate_question(question)
        if not chunks:
            return abstention()
        llm = self._client()
        try:
            response = llm.chat(self._messages(text, chunks))
        except Exception as exc:
            raise self._error(exc) from exc
        reply = (response.message.content or "").strip()
        if not reply:
            raise LlmError("the LLM returned an empty answer", public="failed (empty answer)")
        return self.build_answer(reply, chunks, tokens=_reported(response.additional_kwargs))

    def stream(self, question: str, chunks: Sequence[RetrievedChunk]) -> Iterator[str]:
        """The model's token deltas as they arrive (they concatenate to the reply). Raises like :meth:`answer`."""
        for event in self.stream_events(question, chunks):
            if event.kind == "delta" and event.text:
                yield event.text

    def stream_events(self, question: str, chunks: Sequence[RetrievedChunk]) -> Iterator[StreamEvent]:
        """``delta`` events as tokens arrive, then ``done`` with the answer built from the whole reply."""
        text = _validate_question(question)
        if not chunks:
            yield StreamEvent("delta", ABSTAIN_TEXT)
            yield StreamEvent("done", answer=abstention())
            return
        llm = self._client()
        parts: list[str] = []
        tokens: TokenCount | None = None
        try:
            responses = llm.stream_chat(self._messages(text, chunks))
        except Exception as exc:
            raise self._error(exc) from exc
        try:
            while True:
                try:
                    response = next(responses)
                except StopIteration:
                    break
                except Exception as exc:
                    raise self._error(exc) from exc
                tokens = _reported(response.additional_kwargs) or tokens  # the last chunk carries the usage
                if response.delta:
                    parts.append(response.delta)
                    yield StreamEvent("delta", response.delta)
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()  # the consumer stopped early or the stream failed: release the connection
        reply = "".join(parts).strip()
        if not reply:
            raise LlmError("the LLM returned an empty answer", public="failed (empty answer)")
        yield StreamEvent("done", answer=self.build_answer(reply, chunks, tokens=tokens))

    def build_answer(self, reply: str, chunks: Sequence[RetrievedChunk], *, tokens: TokenCount | None = None) -> Answer:
        """The :class:`Answer` for a model reply over ``chunks`` (citations, abstention, support); ``tokens`` is
        the usage the model reported for the call."""
        cited = cited_numbers(reply, len(chunks))
        if says_not_found(reply, cited):
            return replace(abstention(), tokens=tokens)
        numbers = cited or list(range(1, len(chunks) + 1))
        citations = tuple(
            Citation(
                n=n,
                doc_id=chunks[n - 1].doc_id,
                source=chunks[n - 1].source,
                chunk_id=chunks[n - 1].chunk_id,
                position=chunks[n - 1].position,
                score=chunks[n - 1].score,
                title=chunks[n - 1].title,
            )
            for n in numbers
        )
        support = max(_similarity(chunks[n - 1]) for n in numbers)
        sentences = tuple(s for block in split_sentences(reply) for s in block) or (reply,)
        return Answer(
            text=reply, citations=citations, abstained=False, support=support, sentences=sentences, tokens=tokens
        )

    # ---------------------------------------------------------------------------------------------- internals
    def _client(self) -> OpenAILike:
        if self._llm is not None:
            return self._llm
        with self._lock:
            if self._llm is None:
                self._llm = self._build()
            return self._llm

    def _build(self) -> OpenAILike:
        from llama_index.core.callbacks import CallbackManager
        from llama_index.llms.openai_like import OpenAILike

        cfg = self.llm_config
        assert cfg.model is not None and cfg.base_url is not None  # checked in __init__
        api_key = NO_KEY
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env, "")
            if not api_key:
                raise StackError(
                    f"stack {self.config.name!r} reads its LLM key from ${cfg.api_key_env}, which is not set; "
                    "set it in the service's environment (or remove llm.api_key_env for a server that needs no key)"
                )
        return OpenAILike(
            model=cfg.model,
            api_base=cfg.base_url,
            api_key=api_key,
            is_chat_model=True,
            is_function_calling_model=False,
            timeout=cfg.timeout_s,
            max_retries=0,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            reuse_client=True,
            # the usage of a stream comes in its last chunk (dropped by llama-index for calls that do not stream)
            additional_kwargs={"stream_options": {"include_usage": True}},
            callback_manager=CallbackManager([]),  # never the global Settings' handlers (e.g. token counting)
        )

    def _messages(self, question: str, chunks: Sequence[RetrievedChunk]) -> list[ChatMessage]:
        from llama_index.core.base.llms.types import ChatMessage, MessageRole

        return [ChatMessage(role=MessageRole.USER, content=self.prompt(question, chunks))]

    def _error(self, exc: Exception) -> AnswerError:
        """The :class:`LlmError` for a client failure (timeouts become :class:`LlmTimeout`)."""
        if isinstance(exc, AnswerError):
            return exc
        where = f"{self.llm_config.base_url} ({self.llm_config.model})"
        timeout = self.llm_config.timeout_s
        if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
            return LlmTimeout(
                f"no answer from the LLM at {where} within {timeout:g} s", public=f"timed out after {timeout:g} s"
            )
        if isinstance(exc, openai.APIStatusError):
            return LlmError(
                f"the LLM at {where} answered HTTP {exc.status_code}: {clip_message(exc.message)}",
                public=f"failed (HTTP {exc.status_code})",
            )
        if isinstance(exc, openai.APIConnectionError):
            return LlmError(
                f"the LLM at {where} is unreachable: {clip_message(str(exc))}", public="failed (unreachable)"
            )
        if isinstance(exc, httpx.TransportError):
            return LlmError(
                f"the LLM at {where} broke the connection: {type(exc).__name__}: {clip_message(str(exc))}",
                public="failed (connection broken)",
            )
        return LlmError(
            f"the LLM at {where} failed: {type(exc).__name__}: {clip_message(str(exc))}",
            public=f"failed ({type(exc).__name__})",
        )


class FallbackAnswerer:
    """The LLM answer, or the extractive answer (with a notice) whenever the LLM fails or times out.

    Usage example::

        answerer = FallbackAnswerer(LlmAnswerer(config), ExtractiveAnswerer(config.answerer))
        answer = answerer.answer(question, chunks)
        getattr(answer, "notice", None)   # None, or e.g. "The LLM timed out after 30 s; this is the extractive answer."

    See the module docstring for what :meth:`stream` yields when the LLM fails before or during its answer.
    """

    def __init__(self, primary: LlmAnswerer, fallback: ExtractiveAnswerer) -> None:
        self.primary = primary
        self.fallback = fallback
        self.config = fallback.config

    def warm_up(self) -> None:
        """Warm both answerers (builds the LLM client; sends no request)."""
        self.fallback.warm_up()
        self.primary.warm_up()

    def answer(self, question: str, chunks: Sequence[RetrievedChunk]) -> Answer:
        """The LLM's answer; on any LLM failure the extractive answer as a :class:`NoticedAnswer`."""
        _validate_question(question)
        try:
            return self.primary.answer(question, chunks)
        except BadQuery:
            raise
        except Exception as exc:
            notice = _notice(exc, mid_stream=False)
            logger.warning("LLM answer failed, using the extractive answer: %s", exc)
            return self._extractive(question, chunks, notice)

    def stream(self, question: str, chunks: Sequence[RetrievedChunk]) -> Iterator[str]:
        """Pieces that concatenate to what the reader should see; notices rendered in brackets (module docstring)."""
        started = False
        for event in self.stream_events(question, chunks):
            if event.kind == "delta" and event.text:
                started = True
                yield event.text
            elif event.kind == "notice":
                yield f"\n\n[{event.text}]\n\n" if started else f"[{event.text}]\n\n"

    def stream_events(self, question: str, chunks: Sequence[RetrievedChunk]) -> Iterator[StreamEvent]:
        """The LLM's events, or on failure a ``notice`` and the extractive answer (module docstring)."""
        _validate_question(question)
        sent = False
        try:
            for event in self.primary.stream_events(question, chunks):
                sent = sent or (event.kind == "delta" and bool(event.text))
                yield event
            return
        except BadQuery:
            raise
        except Exception as exc:
            notice = _notice(exc, mid_stream=sent)
            logger.warning(
                "LLM stream failed (%s), using the extractive answer: %s",
                "mid-stream" if sent else "before the first token",
                exc,
            )
        answer = self._extractive(question, chunks, notice)
        yield StreamEvent("notice", notice)
        for i, sentence in enumerate(answer.sentences or (answer.text,)):
            yield StreamEvent("delta", sentence if i == 0 else " " + sentence)
        yield StreamEvent("done", answer=answer)

    def _extractive(self, question: str, chunks: Sequence[RetrievedChunk], notice: str) -> NoticedAnswer:
        return noticed(self.fallback.answer(question, chunks), notice)


def noticed(answer: Answer, notice: str) -> NoticedAnswer:
    """The extractive ``answer`` standing in for an LLM's, with ``notice`` saying why (the LLM failed, or the caller's
    budget is used up): shown with the notice, never stored in the answer cache (:mod:`rag.stages.cache`)."""
    return NoticedAnswer(
        text=answer.text,
        citations=answer.citations,
        abstained=answer.abstained,
        support=answer.support,
        sentences=answer.sentences,
        notice=notice,
    )


def _notice(exc: BaseException, *, mid_stream: bool) -> str:
    """The response notice for a fallback: what happened, without the endpoint's address or the server's text."""
    public = exc.public if isinstance(exc, LlmError) else f"failed ({type(exc).__name__})"
    if mid_stream:
        return f"The LLM {public} mid-answer; the extractive answer follows."
    return f"The LLM {public}; this is the extractive answer."


def _reported(counts: Mapping[str, Any]) -> TokenCount | None:
    """The token usage llama-index copied from the OpenAI response (``prompt_tokens``, ``completion_tokens``)."""
    prompt, completion = counts.get("prompt_tokens"), counts.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return TokenCount(prompt=prompt, completion=completion)
    return None


def clip_message(text: str, limit: int = 300) -> str:
    """An endpoint's error text fit for a log line or an error message: one line, at most ``limit`` characters."""
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
