"""Authentication and authorisation of every route, as one app-wide FastAPI dependency.

The dependency finds the matched route's path template, asks :class:`rag.security.gate.Gate` whether the bearer
credential may do that route's action (:data:`rag.security.authz.ROUTES`), and leaves the principal and the time
it took on ``request.state`` for the query routes (the ``authenticate`` timing). A cached key costs a dictionary
lookup and one HMAC on the event loop; a key not in the cache is looked up in a worker thread.
"""

from __future__ import annotations

import time

import anyio
from fastapi import Request

from rag.security.gate import Gate
from rag.stages.context import ANONYMOUS, Principal


async def authorize_request(request: Request) -> Principal:
    """Raise :class:`AuthenticationFailed` (401), :class:`PermissionDenied` (403) or, for a client address past its
    refused-credential budget, :class:`rag.errors.RateLimited` (429 with Retry-After); else the principal."""
    started = time.perf_counter()
    gate: Gate = request.app.state.gate
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    header = request.headers.get("authorization")
    client = request.client.host if request.client else None
    principal = gate.check_fast(request.method, path, header, client=client)
    if principal is None:  # a database lookup, or a failure to audit: off the event loop
        principal = await anyio.to_thread.run_sync(lambda: gate.check(request.method, path, header, client=client))
    request.state.principal = principal
    request.state.auth_ms = round((time.perf_counter() - started) * 1000, 3)
    return principal


def principal_of(request: Request) -> Principal:
    """The principal :func:`authorize_request` resolved for this request."""
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


def auth_ms(request: Request) -> float:
    """Milliseconds the credential check took for this request."""
    value: float = getattr(request.state, "auth_ms", 0.0)
    return value
