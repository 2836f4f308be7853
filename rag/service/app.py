"""The FastAPI app: ``/v1/query``, OpenAI-compatible ``/v1/chat/completions``, feedback, sources, health,
readiness, the stack, ``/metrics``, the playground page at ``/`` and the API docs at ``/docs``.

Every question runs the served stack's chain of stages (:mod:`rag.stages`), the same chain evaluation runs;
the routes live in :mod:`rag.service.routers`, errors are answered by :mod:`rag.service.errors`. Every request's
record goes to the request store (:mod:`rag.store`, opened at start-up and drained at shutdown, so a clean stop
loses no record) and to the Prometheus metrics (:mod:`rag.monitoring.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI
from threadpoolctl import threadpool_limits

from rag.feedback import FeedbackStore
from rag.monitoring.metrics import ServiceMetrics
from rag.monitoring.tracing import TraceExporter
from rag.security.gate import Gate
from rag.service.auth import authorize_request
from rag.service.batcher import BatchedVectors
from rag.service.door import AdmissionDoor
from rag.service.errors import install_error_handlers
from rag.service.feedback import FeedbackIntake
from rag.service.hardening import HardeningMiddleware
from rag.service.holder import StackHolder
from rag.service.query import QueryService
from rag.service.routers import feedback, health, metrics, query, review
from rag.service.routers.pages import mount_pages
from rag.settings import RagSettings
from rag.store import RequestStore

logger = logging.getLogger(__name__)


def create_app(
    settings: RagSettings, *, holder: StackHolder | None = None, vectors: BatchedVectors | None = None
) -> FastAPI:
    """Build the service. ``holder`` defaults to one following the MLflow ``champion`` alias; ``vectors`` (how
    requests reach the model and the index) to a :class:`BatchedVectors`. Only code passes them, never
    configuration: tests and fault drills (``bench/monitor.py`` fails index searches this way)."""
    stack_holder = holder or StackHolder(settings)
    vectors = vectors or BatchedVectors(max_batch=settings.service.max_batch)
    service_metrics = ServiceMetrics()
    gate = Gate(settings)
    tracer = TraceExporter(settings, settings.tracing) if settings.tracing.sample_rate > 0 else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # NumPy's BLAS defaults to a thread per core. The service's matrix products are small (the topic check is
        # one (2080, 384) product per question), and a pool of BLAS threads contending with the embedder's threads
        # and the event loop for two cores made that product take ~7 ms under load instead of 0.1 ms in one thread
        # (py-spy at concurrency 8: 13% of the service's samples). Restored when the service stops.
        with threadpool_limits(limits=1, user_api="blas"):
            async with serving(app):
                yield

    @asynccontextmanager
    async def serving(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(stack_holder.check)
        requests = await anyio.to_thread.run_sync(open_request_store, settings)
        try:
            store = await anyio.to_thread.run_sync(FeedbackStore, settings)
        except BaseException:
            requests.close()
            raise
        app.state.requests = requests
        app.state.queries = QueryService(
            settings, stack_holder, vectors, requests, service_metrics, gate=gate, tracer=tracer
        )
        app.state.feedback = FeedbackIntake(
            store, requests, stack_holder, service_metrics, tracer, review=settings.review
        )

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
            await anyio.to_thread.run_sync(requests.close)  # drains the queue: nothing recorded is lost
            app.state.queries.close()
            stack_holder.close()
            gate.close()
            if tracer is not None:
                await anyio.to_thread.run_sync(tracer.close)

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
    app.state.metrics = service_metrics
    app.state.gate = gate
    app.state.tracer = tracer
    install_error_handlers(app)
    app.add_middleware(AdmissionDoor)  # inside the hardening: its refusals get the security headers too
    app.add_middleware(
        HardeningMiddleware,
        max_body_bytes=settings.service.max_body_bytes,
        max_header_bytes=settings.service.max_header_bytes,
    )
    if settings.service.cors_origins:  # off unless configured: the API is not for other sites' pages by default
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.service.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    mount_pages(app)
    for router in (health.router, query.router, feedback.router, metrics.router, review.router):
        app.include_router(router)
    return app


def open_request_store(settings: RagSettings) -> RequestStore:
    """The request store of ``settings`` (``RAGOPS_STORE__*``), migrated to the newest schema."""
    config = settings.store
    return RequestStore(
        config.resolve_url(settings.home),
        retention_days=config.retention_days,
        queue_size=config.queue_size,
        write_delay_s=config.write_delay_s,
    )


def app_from_environment() -> FastAPI:
    """The service built from ``RAGOPS_*`` alone: the factory each worker process calls when ``ragops serve
    --workers N`` runs several (the multi-process metrics folder is prepared by the parent)."""
    return create_app(RagSettings())
