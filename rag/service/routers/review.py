"""The review queue's API and page (:mod:`rag.review`): list queued answers, label one.

Reviewing needs the operator role (the authorisation table, :mod:`rag.security.authz`); a reviewer sees every
tenant's queued answers, as operators see every tenant's requests in the store. A label is written to the queue
and, when the request was traced, to MLflow as expectations on its trace.
"""

from __future__ import annotations

import functools

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from rag.feedback import UnknownRequest
from rag.monitoring.tracing import TraceExporter
from rag.review import ReviewItem
from rag.service.auth import principal_of
from rag.service.routers.pages import PAGE_HEADERS, STATIC_DIR
from rag.service.schemas import ReviewItemOut, ReviewLabelIn, ReviewLabelOut, ReviewListOut
from rag.store import RequestStore

router = APIRouter()


def _out(item: ReviewItem) -> ReviewItemOut:
    label = item.label
    return ReviewItemOut(
        request_id=item.request_id,
        queued_at=item.queued_at,
        reasons=list(item.reasons),
        question=item.question,
        answer=item.answer,
        abstained=item.abstained,
        blocked=item.blocked,
        tenant=item.tenant,
        stack_version=item.stack_version,
        guardrails=dict(item.verdicts),
        citations=[dict(c) for c in item.citations],
        label=ReviewLabelOut(
            verdict=label.verdict,
            reviewer=label.reviewer,
            at=label.at,
            right_answer=label.right_answer,
            relevant_chunk_ids=list(label.relevant_chunk_ids),
        )
        if label is not None
        else None,
    )


@router.get("/review", include_in_schema=False)
async def review_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "review.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/v1/review", response_model=ReviewListOut, summary="Answers queued for human review")
async def review_list(
    request: Request,
    status: str = Query(default="pending", description="pending, labelled or all"),
    limit: int = Query(default=50, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
) -> ReviewListOut:
    store: RequestStore = request.app.state.requests
    wanted = None if status == "all" else status
    found = await anyio.to_thread.run_sync(
        functools.partial(store.review_items, status=wanted, limit=limit, offset=offset)
    )
    counts = await anyio.to_thread.run_sync(store.review_counts)
    return ReviewListOut(items=[_out(i) for i in found], counts=counts)


@router.get("/v1/review/{request_id}", response_model=ReviewItemOut, summary="One queued answer")
async def review_get(request_id: str, request: Request) -> ReviewItemOut:
    store: RequestStore = request.app.state.requests
    item = await anyio.to_thread.run_sync(store.review_item, request_id)
    if item is None:
        raise UnknownRequest(f"request {request_id!r} is not in the review queue")
    return _out(item)


@router.post("/v1/review/{request_id}", response_model=ReviewItemOut, summary="Label a queued answer")
async def review_label(request_id: str, body: ReviewLabelIn, request: Request) -> ReviewItemOut:
    store: RequestStore = request.app.state.requests
    reviewer = principal_of(request).identity
    _, label = await anyio.to_thread.run_sync(
        functools.partial(
            store.label_review,
            request_id,
            verdict=body.verdict,
            reviewer=reviewer,
            right_answer=body.right_answer,
            relevant_chunk_ids=body.relevant_chunk_ids,
        )
    )
    tracer: TraceExporter | None = request.app.state.tracer
    if tracer is not None:
        tracer.label(request_id, label)
    item = await anyio.to_thread.run_sync(store.review_item, request_id)
    assert item is not None  # just labelled
    return _out(item)
