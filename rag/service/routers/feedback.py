"""Rating an answer, and reading a cited chunk."""

from __future__ import annotations

import functools

import anyio
from fastapi import APIRouter, Request

from rag.access import scope_of
from rag.service.auth import principal_of
from rag.service.feedback import FeedbackIntake
from rag.service.holder import StackHolder
from rag.service.schemas import FeedbackRequest, FeedbackResponse, SourceOut
from rag.service.sources import fetch_chunk

router = APIRouter()


@router.post("/v1/feedback", response_model=FeedbackResponse, summary="Rate an answer (up or down)")
async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    intake: FeedbackIntake = request.app.state.feedback
    return await anyio.to_thread.run_sync(intake.rate, body, principal_of(request))


@router.get("/v1/sources/{chunk_id}", response_model=SourceOut, summary="A cited chunk's text and origin")
async def source(chunk_id: str, request: Request) -> SourceOut:
    holder: StackHolder = request.app.state.holder
    with holder.acquire() as served:
        scope = scope_of(principal_of(request))
        chunk = await anyio.to_thread.run_sync(functools.partial(fetch_chunk, served, chunk_id, scope=scope))
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
