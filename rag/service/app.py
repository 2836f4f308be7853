"""The FastAPI app: ``/v1/query``, OpenAI-compatible ``/v1/chat/completions``, feedback, sources, health,
readiness, the stack, and the playground page at ``/``.

Every request passes the same timed stages, reported in milliseconds in every response:
authenticate -> limit -> check_input -> cache -> retrieve -> answer -> check_output -> record.
Authentication, rate limits and the cache are real, empty stages today (later work fills them in); retrieval is
batched across concurrent requests (:mod:`rag.service.batcher`). Errors use OpenAI's envelope
``{"error": {"message", "type", "code"}}``: 422 for a bad request, 503 while no stack can be served, 500 (with a
request id, never a traceback) for anything unexpected.

The playground (``GET /``) is three static files shipped in the package (``rag/service/static``): no build step and
nothing fetched from elsewhere, which its Content-Security-Policy enforces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.settings import Settings
from rag.answer import ExtractiveAnswerer
from rag.errors import AnswerError, BadQuery, RetrievalError, StackError, StackNotFound
from rag.feedback import CitedChunk, FeedbackStore, RequestSnapshot, UnknownRequest
from rag.retrieve import validate_filters, validate_question
from rag.service.batcher import RetrievalBatcher
from rag.service.feedback import FeedbackIntake
from rag.service.holder import Served, StackHolder
from rag.service.recent import RecentRequests
from rag.service.schemas import (
    ChatRequest,
    CitationOut,
    FeedbackRequest,
    FeedbackResponse,
    QueryRequest,
    QueryResponse,
    SourceOut,
    Usage,
)
from rag.service.sources import UnknownChunk, fetch_chunk
from rag.types import Answer, RetrievedChunk

logger = logging.getLogger(__name__)

STAGES = ("authenticate", "limit", "check_input", "cache", "retrieve", "answer", "check_output", "record")

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The playground's files (package data: shipped in the wheel)."""

PAGE_HEADERS = {
    # Everything the page uses comes from this service; inline script, eval, frames and plugins are refused.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass
class Timings:
    """Milliseconds per stage of one request."""

    ms: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - start) * 1000, 3)

    def total(self) -> dict[str, float]:
        """All stages plus the total."""
        return {**self.ms, "total": round((time.perf_counter() - self.started) * 1000, 3)}


@dataclass(frozen=True)
class Outcome:
    """What the stages produced for one question."""

    request_id: str
    served: Served
    answer: Answer
    chunks: list[RetrievedChunk]
    usage: Usage
    timings: dict[str, float]


class RequestLog:
    """Append-only JSONL under ``<home>/logs``: answered requests (``requests.jsonl``, for monitoring and
    feedback) or ratings (``feedback.jsonl``)."""

    def __init__(self, settings: Settings, name: str = "requests.jsonl") -> None:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        self._path = settings.logs_dir / name
        self._lock = threading.Lock()
        self._handle = self._path.open("a", encoding="utf-8", buffering=1)

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        with self._lock:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        """Flush and close."""
        self._handle.close()


class QueryPipeline:
    """The staged request path shared by ``/v1/query`` and ``/v1/chat/completions``."""

    def __init__(
        self,
        settings: Settings,
        holder: StackHolder,
        batcher: RetrievalBatcher,
        log: RequestLog,
        recent: RecentRequests | None = None,
    ) -> None:
        self._settings = settings
        self._holder = holder
        self._batcher = batcher
        self._log = log
        self._recent = recent

    async def run(self, question: object, *, filters: object, top_k: int | None) -> Outcome:
        """Run every stage for one question."""
        timings = Timings()
        request_id = uuid.uuid4().hex
        with timings.stage("authenticate"):
            principal = "anonymous"
        with timings.stage("limit"):
            pass
        with timings.stage("check_input"):
            limit = self._settings.service.max_question_chars
            if isinstance(question, str) and len(question.strip()) > limit:
                raise BadQuery(f"question has {len(question.strip())} characters; the limit is {limit}")
            text = validate_question(question)
            clean_filters = validate_filters(filters) or None  # type: ignore[arg-type]
            if top_k is not None and top_k > self._settings.service.max_top_k:
                raise BadQuery(f"top_k {top_k} is above the limit of {self._settings.service.max_top_k}")
        with self._holder.acquire() as served:
            with timings.stage("cache"):
                pass
            with timings.stage("retrieve"):
                chunks = await self._batcher.retrieve(served, text, filters=clean_filters, top_k=top_k)
            with timings.stage("answer"):
                answerer = served.engine.answerer
                if isinstance(answerer, ExtractiveAnswerer):
                    answer = answerer.answer(text, chunks)  # ~2 ms of CPU: a thread hop would cost as much
                else:
                    # An LLM answerer blocks for up to llm.timeout_s and must not stall the event loop.
                    answer = await anyio.to_thread.run_sync(answerer.answer, text, chunks)
            with timings.stage("check_output"):
                retrieved = {c.chunk_id for c in chunks}
                if any(c.chunk_id not in retrieved for c in answer.citations):
                    raise AnswerError("the answer cited a chunk that was not retrieved")
                usage = self._usage(served, text, chunks, answer)
            with timings.stage("record"):
                # The cited chunks' texts are recorded with the request: feedback turns them into training pairs,
                # and the index they came from may be gone by the time someone rates an old answer.
                texts = {c.chunk_id: c.text for c in chunks}
                snapshot = RequestSnapshot(
                    request_id=request_id,
                    at=time.time(),
                    question=text,
                    answer=answer.text,
                    abstained=answer.abstained,
                    stack_version=served.version,
                    stack_name=served.config.name,
                    index_version=served.index_version,
                    citations=tuple(
                        CitedChunk(c.n, c.chunk_id, c.doc_id, c.title, c.source, texts.get(c.chunk_id))
                        for c in answer.citations
                    ),
                )
                self._log.write(
                    {**snapshot.to_json(), "principal": principal, "filters": clean_filters, "notice": _notice(answer)}
                )
                if self._recent is not None:
                    self._recent.add(snapshot)
            return Outcome(request_id, served, answer, chunks, usage, timings.total())

    @staticmethod
    def _usage(served: Served, question: str, chunks: list[RetrievedChunk], answer: Answer) -> Usage:
        prompt, completion = served.engine.token_usage(question, chunks, answer)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _notice(answer: Answer) -> str | None:
    """What the caller should be told about how the answer was made (e.g. the LLM failed: extractive fallback)."""
    notice = getattr(answer, "notice", None)  # set by rag.llm.FallbackAnswerer (NoticedAnswer)
    return notice if isinstance(notice, str) else None


def _citations(answer: Answer) -> list[CitationOut]:
    return [
        CitationOut(
            n=c.n,
            doc_id=c.doc_id,
            source=c.source,
            chunk_id=c.chunk_id,
            position=c.position,
            title=c.title,
            score=round(c.score, 6),
        )
        for c in answer.citations
    ]


def _response(outcome: Outcome) -> QueryResponse:
    return QueryResponse(
        request_id=outcome.request_id,
        answer=outcome.answer.text,
        citations=_citations(outcome.answer),
        abstained=outcome.answer.abstained,
        support=round(outcome.answer.support, 6),
        stack_version=outcome.served.version,
        stack_name=outcome.served.config.name,
        index_version=outcome.served.index_version,
        usage=outcome.usage,
        timings=outcome.timings,
        notice=_notice(outcome.answer),
    )


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": code}})


# Library errors and the HTTP answer each gets (Starlette picks the handler of the closest class in the MRO, so
# StackNotFound is answered as "no_stack" although it is a StackError).
ERROR_MAP: tuple[tuple[type[Exception], int, str, str], ...] = (
    (BadQuery, 422, "invalid_request_error", "invalid_request"),
    (UnknownRequest, 404, "invalid_request_error", "unknown_request"),
    (UnknownChunk, 404, "invalid_request_error", "unknown_chunk"),
    (StackNotFound, 503, "service_unavailable", "no_stack"),
    (StackError, 503, "service_unavailable", "stack_error"),
    (RetrievalError, 503, "service_unavailable", "retrieval_error"),
    (AnswerError, 503, "service_unavailable", "answer_error"),
)


def _library_error_handler(
    status: int, kind: str, code: str
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return _error(status, str(exc), kind, code)

    return handle


def _last_user_message(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            if isinstance(message.content, str):
                return message.content
            if isinstance(message.content, list):
                texts = [
                    p["text"] for p in message.content if p.get("type") == "text" and isinstance(p.get("text"), str)
                ]
                if texts:
                    return " ".join(texts)
    raise BadQuery("messages must contain a user message with text content")


def create_app(settings: Settings, *, holder: StackHolder | None = None) -> FastAPI:
    """Build the service. ``holder`` defaults to one following the MLflow ``champion`` alias."""
    stack_holder = holder or StackHolder(settings)
    batcher = RetrievalBatcher(max_batch=settings.service.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(stack_holder.check)
        log = RequestLog(settings)
        feedback_log = RequestLog(settings, "feedback.jsonl")
        recent = RecentRequests(settings.service.recent_requests, log.path)
        store = await anyio.to_thread.run_sync(FeedbackStore, settings)
        app.state.pipeline = QueryPipeline(settings, stack_holder, batcher, log, recent)
        app.state.feedback = FeedbackIntake(store, recent, stack_holder, feedback_log)

        async def follow() -> None:
            while True:
                await asyncio.sleep(settings.service.reload_interval_s)
                try:
                    await anyio.to_thread.run_sync(stack_holder.check)
                except Exception:  # check() records its failures; this only guards the loop itself
                    logger.exception("stack reload check failed; trying again next interval")

        task = asyncio.create_task(follow())
        try:
            yield
        finally:
            task.cancel()
            log.close()
            feedback_log.close()
            stack_holder.close()

    app = FastAPI(
        title="ragops query service",
        version="0.1.0",
        description="Answers with citations from the champion stack of the MLflow model `rag-stack`.",
        lifespan=lifespan,
    )
    app.state.holder = stack_holder
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        return _error(422, "invalid request: " + "; ".join(parts), "invalid_request_error", "invalid_request")

    for error_type, status, kind, code in ERROR_MAP:
        app.add_exception_handler(error_type, _library_error_handler(status, kind, code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(
            exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500 else "error"
        )
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        logger.exception("unexpected error (incident %s)", incident)
        return _error(500, f"internal error (incident {incident}); see the service log", "server_error")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="A stack is loaded and its index readable")
    async def readyz() -> JSONResponse:
        served = stack_holder.current
        status = stack_holder.status
        body = {
            "ready": served is not None,
            "stack_version": served.version if served else None,
            "index_version": served.index_version if served else None,
            "registry_ok": status.registry_ok,
            "registry_error": status.registry_error,
            "registry_error_since": status.registry_error_since,
            "load_error": status.load_error,
            "last_check": status.last_check,
            "switches": status.switches,
        }
        return JSONResponse(status_code=200 if served else 503, content=body)

    @app.get("/v1/stack", summary="The stack being served")
    async def stack() -> dict[str, Any]:
        with stack_holder.acquire() as served:
            return {
                "stack_version": served.version,
                "name": served.config.name,
                "index_version": served.index_version,
                "loaded_at": served.loaded_at,
                "config": served.config.to_json(),
            }

    @app.get("/v1/models", summary="OpenAI-compatible model list")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "rag-stack", "object": "model", "owned_by": "ragops"}]}

    @app.post("/v1/query", response_model=QueryResponse, summary="Answer a question with citations")
    async def query(body: QueryRequest, request: Request) -> Any:
        pipeline: QueryPipeline = request.app.state.pipeline
        outcome = await pipeline.run(body.question, filters=body.filters, top_k=body.top_k)
        if not body.stream:
            return _response(outcome)

        def events() -> Iterator[str]:
            for sentence in outcome.answer.sentences or (outcome.answer.text,):
                yield _sse("sentence", {"text": sentence})
            yield _sse("citations", [c.model_dump() for c in _citations(outcome.answer)])
            yield _sse("done", _response(outcome).model_dump())

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.post("/v1/feedback", response_model=FeedbackResponse, summary="Rate an answer (up or down)")
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        intake: FeedbackIntake = request.app.state.feedback
        return await anyio.to_thread.run_sync(intake.rate, body)

    @app.get("/v1/sources/{chunk_id}", response_model=SourceOut, summary="A cited chunk's text and origin")
    async def source(chunk_id: str) -> SourceOut:
        with stack_holder.acquire() as served:
            chunk = await anyio.to_thread.run_sync(fetch_chunk, served, chunk_id)
            return SourceOut(
                chunk_id=chunk.chunk_id,
                doc_id=chunk.doc_id,
                title=chunk.title,
                source=chunk.source,
                position=chunk.position,
                text=chunk.text,
                index_version=chunk.index_version,
                stack_version=served.version,
            )

    @app.post("/v1/chat/completions", summary="OpenAI-compatible chat completions over the champion stack")
    async def chat(body: ChatRequest, request: Request) -> Any:
        pipeline: QueryPipeline = request.app.state.pipeline
        outcome = await pipeline.run(_last_user_message(body), filters=body.filters, top_k=body.top_k)
        created = int(time.time())
        completion_id = f"chatcmpl-{outcome.request_id}"
        citations = [c.model_dump() for c in _citations(outcome.answer)]
        extra = {
            "citations": citations,
            "stack_version": outcome.served.version,
            "abstained": outcome.answer.abstained,
            "notice": _notice(outcome.answer),
        }
        if not body.stream:
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": "rag-stack",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": outcome.answer.text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": outcome.usage.model_dump(exclude={"cost_usd"}),
                **extra,
            }

        def chunk(delta: dict[str, Any], finish: str | None, **more: Any) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": "rag-stack",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **more,
            }
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""}, None)
            sentences = outcome.answer.sentences or (outcome.answer.text,)
            for i, sentence in enumerate(sentences):
                yield chunk({"content": sentence if i == 0 else " " + sentence}, None)
            yield chunk({}, "stop", usage=outcome.usage.model_dump(exclude={"cost_usd"}), **extra)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return app
