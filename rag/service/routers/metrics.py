"""``GET /metrics``: the service's Prometheus exposition (every worker's samples in multi-process mode)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rag.monitoring.metrics import ServiceMetrics
from rag.service.batcher import BatchedVectors

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format, or OpenMetrics when the scraper's ``Accept`` asks for it."""
    exported: ServiceMetrics = request.app.state.metrics
    vectors: BatchedVectors = request.app.state.vectors
    exported.set_batcher_queue_depth(vectors.depth)  # read at scrape time: costs the request path nothing
    body, content_type = exported.render(request.headers.get("accept"))
    return Response(content=body, media_type=content_type)
