"""``POST /v1/query`` and the OpenAI-compatible ``POST /v1/chat/completions``, whole or streamed.

Both run the served stack's chain. A stream's first event is computed before the response starts, so a bad
request or a refused one is still a proper status code; after that the answer streams as it is produced, through
the output checks, and ends with ``done`` (or ``blocked``: the stream stops with the refusal and the check's
name, never silently). A client that goes away closes the chain's stream, which releases the LLM request.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from rag.errors import BadQuery
from rag.service.auth import auth_ms, principal_of
from rag.service.holder import Served
from rag.service.query import QueryService, citations, guardrails, query_response, usage
from rag.service.schemas import ChatRequest, QueryRequest, QueryResponse
from rag.stages.chain import StreamEvent
from rag.stages.context import RequestContext

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-store"}

QUERY = "/v1/query"
CHAT = "/v1/chat/completions"
"""Route templates: paths and the ``route`` the request store and the metrics record."""


def _service(request: Request) -> QueryService:
    service: QueryService = request.app.state.queries
    return service


async def _answer(
    request: Request, question: object, *, filters: object, top_k: int | None, route: str
) -> tuple[Served, RequestContext]:
    """The whole chain for one question, as the authenticated principal."""
    return await _service(request).answer(
        question,
        filters=filters,
        top_k=top_k,
        principal=principal_of(request),
        route=route,
        auth_ms=auth_ms(request),
    )


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _primed(
    request: Request, question: object, *, filters: object, top_k: int | None, route: str
) -> tuple[Served, RequestContext, AsyncIterator[StreamEvent], StreamEvent, AsyncExitStack]:
    """Start a streamed request and compute its first event (errors surface before the response starts)."""
    service = _service(request)
    stack = AsyncExitStack()
    try:
        served, chain, ctx = await stack.enter_async_context(
            service.request(
                question,
                filters=filters,
                top_k=top_k,
                principal=principal_of(request),
                route=route,
                auth_ms=auth_ms(request),
            )
        )
        events = chain.stream(ctx)
        stack.push_async_callback(_aclose, events)
        first = await events.__anext__()
    except BaseException:
        await stack.aclose()
        raise
    return served, ctx, events, first, stack


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def _streaming(
    primed: tuple[Served, RequestContext, AsyncIterator[StreamEvent], StreamEvent, AsyncExitStack],
    render: Callable[[Served, RequestContext, StreamEvent], list[str]],
) -> StreamingResponse:
    served, ctx, events, first, stack = primed

    async def body() -> AsyncIterator[str]:
        async with stack:
            for piece in render(served, ctx, first):
                yield piece
            async for event in events:
                for piece in render(served, ctx, event):
                    yield piece

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post(QUERY, response_model=QueryResponse, summary="Answer a question with citations")
async def query(body: QueryRequest, request: Request) -> Any:
    """Server-sent events with ``"stream": true``: ``delta`` (text to append), ``notice``, then ``citations`` and
    ``done`` (the whole response), or ``blocked`` (the refusal, with ``blocked_by``) when a check stops it."""
    if not body.stream:
        served, ctx = await _answer(request, body.question, filters=body.filters, top_k=body.top_k, route=QUERY)
        return query_response(served, ctx)

    def render(served: Served, ctx: RequestContext, event: StreamEvent) -> list[str]:
        if event.kind == "delta":
            return [_sse("delta", {"text": event.text})]
        if event.kind == "notice":
            return [_sse("notice", {"text": event.text})]
        if event.kind == "blocked":
            return [_sse("blocked", query_response(served, ctx).model_dump())]
        return [
            _sse("citations", [c.model_dump() for c in citations(ctx)]),
            _sse("done", query_response(served, ctx).model_dump()),
        ]

    primed = await _primed(request, body.question, filters=body.filters, top_k=body.top_k, route=QUERY)
    return _streaming(primed, render)


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


def _finish_reason(ctx: RequestContext) -> str:
    return "content_filter" if ctx.refusal is not None else "stop"


def _extra(served: Served, ctx: RequestContext) -> dict[str, Any]:
    return {
        "citations": [c.model_dump() for c in citations(ctx)],
        "stack_version": served.version,
        "abstained": bool(ctx.answer and ctx.answer.abstained) and ctx.refusal is None,
        "blocked": ctx.refusal is not None,
        "blocked_by": ctx.refusal.check if ctx.refusal else None,
        "guardrails": [g.model_dump(exclude_none=True) for g in guardrails(ctx)],
        "notice": ctx.notice,
        "degraded": list(ctx.degraded),
    }


def _chat_usage(ctx: RequestContext) -> dict[str, Any]:
    return usage(ctx).model_dump(exclude={"cost_usd"}, exclude_none=True)


@router.post(CHAT, summary="OpenAI-compatible chat completions over the champion stack")
async def chat(body: ChatRequest, request: Request) -> Any:
    """OpenAI's chat completion (``finish_reason`` ``content_filter`` when a guardrail refused the request)."""
    question = _last_user_message(body)
    created = int(time.time())
    if not body.stream:
        served, ctx = await _answer(request, question, filters=body.filters, top_k=body.top_k, route=CHAT)
        text = ctx.refusal.text if ctx.refusal else (ctx.answer.text if ctx.answer else "")
        return {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion",
            "created": created,
            "model": "rag-stack",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": _finish_reason(ctx)}
            ],
            "usage": _chat_usage(ctx),
            **_extra(served, ctx),
        }

    started = {"role": False}

    def chunk(ctx: RequestContext, delta: dict[str, Any], finish: str | None, **more: Any) -> str:
        payload = {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "rag-stack",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **more,
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def render(served: Served, ctx: RequestContext, event: StreamEvent) -> list[str]:
        out = []
        if not started["role"]:
            started["role"] = True
            out.append(chunk(ctx, {"role": "assistant", "content": ""}, None))
        if event.kind in ("delta", "notice"):
            text = event.text if event.kind == "delta" else f"[{event.text}]\n\n"
            out.append(chunk(ctx, {"content": text}, None))
        elif event.kind == "blocked":
            out.append(chunk(ctx, {"content": event.text}, None))
            out.append(chunk(ctx, {}, "content_filter", usage=_chat_usage(ctx), **_extra(served, ctx)))
            out.append("data: [DONE]\n\n")
        else:
            out.append(chunk(ctx, {}, "stop", usage=_chat_usage(ctx), **_extra(served, ctx)))
            out.append("data: [DONE]\n\n")
        return out

    primed = await _primed(request, question, filters=body.filters, top_k=body.top_k, route=CHAT)
    return _streaming(primed, render)
