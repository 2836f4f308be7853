"""The FastAPI app: ``/v1/query``, OpenAI-compatible ``/v1/chat/completions``, feedback, sources, health,
readiness, the stack, the playground page at ``/`` and the API docs at ``/docs``.

Every question runs the served stack's chain of stages (:mod:`rag.stages`), the same chain evaluation runs;
the routes live in :mod:`rag.service.routers`, errors are answered by :mod:`rag.service.errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI

from pipelines.settings import Settings
from rag.feedback import FeedbackStore
from rag.security.gate import Gate
from rag.service.auth import authorize_request
from rag.service.batcher import BatchedVectors
from rag.service.errors import install_error_handlers
from rag.service.feedback import FeedbackIntake
from rag.service.holder import StackHolder
from rag.service.query import QueryService
from rag.service.recent import RecentRequests
from rag.service.recording import RequestLog
from rag.service.routers import feedback, health, query
from rag.service.routers.pages import mount_pages

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, holder: StackHolder | None = None) -> FastAPI:
    """Build the service. ``holder`` defaults to one following the MLflow ``champion`` alias."""
    stack_holder = holder or StackHolder(settings)
    vectors = BatchedVectors(max_batch=settings.service.max_batch)
    gate = Gate(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(stack_holder.check)
        log = RequestLog(settings)
        feedback_log = RequestLog(settings, "feedback.jsonl")
        recent = RecentRequests(settings.service.recent_requests, log.path)
        store = await anyio.to_thread.run_sync(FeedbackStore, settings)
        app.state.queries = QueryService(settings, stack_holder, vectors, log, recent, gate=gate)
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
            gate.close()

    app = FastAPI(
        title="ragops query service",
        version="0.1.0",
        description="Answers with citations from the champion stack of the MLflow model `rag-stack`.",
        lifespan=lifespan,
        docs_url=None,  # served from installed files by rag.service.routers.pages (no CDN)
        redoc_url=None,
        # every route passes the authorisation table (rag.security.authz) first
        dependencies=[Depends(authorize_request)],
    )
    app.state.holder = stack_holder
    app.state.vectors = vectors
    app.state.gate = gate
    install_error_handlers(app)
    mount_pages(app)
    for router in (health.router, query.router, feedback.router):
        app.include_router(router)
    return app
