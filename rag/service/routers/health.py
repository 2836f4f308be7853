"""Liveness, readiness, the served stack and the OpenAI model list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rag.service.holder import StackHolder

router = APIRouter()


def _holder(request: Request) -> StackHolder:
    holder: StackHolder = request.app.state.holder
    return holder


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="A stack is loaded and its index readable")
async def readyz(request: Request) -> JSONResponse:
    holder = _holder(request)
    served = holder.current
    status = holder.status
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


@router.get("/v1/stack", summary="The stack being served")
async def stack(request: Request) -> dict[str, Any]:
    with _holder(request).acquire() as served:
        return {
            "stack_version": served.version,
            "name": served.config.name,
            "index_version": served.index_version,
            "loaded_at": served.loaded_at,
            "config": served.config.to_json(),
        }


@router.get("/v1/models", summary="OpenAI-compatible model list")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "rag-stack", "object": "model", "owned_by": "ragops"}]}
