"""Errors as HTTP answers: OpenAI's envelope ``{"error": {"message", "type", "code"}}``, never a traceback.

One table maps library errors to statuses: 422 for a bad request, 404 for an unknown id, 429 over a quota, 503 while
no stack can be served or past capacity (429 and 503 of load control carry ``Retry-After``); anything unexpected is
a 500 with an incident id that the service log explains.
"""

from __future__ import annotations

import logging
import math
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.errors import (
    AnswerError,
    BadQuery,
    BudgetExceeded,
    CircuitOpen,
    Overloaded,
    RateLimited,
    RetrievalError,
    StackError,
    StackNotFound,
    StoreUnavailable,
)
from rag.feedback import UnknownRequest
from rag.security.errors import AuthenticationFailed, PermissionDenied
from rag.service.sources import UnknownChunk

logger = logging.getLogger(__name__)

# Starlette picks the handler of the closest class in the MRO, so StackNotFound is answered as "no_stack" although
# it is a StackError.
ERROR_MAP: tuple[tuple[type[Exception], int, str, str], ...] = (
    (BadQuery, 422, "invalid_request_error", "invalid_request"),
    (UnknownRequest, 404, "invalid_request_error", "unknown_request"),
    (UnknownChunk, 404, "invalid_request_error", "unknown_chunk"),
    (PermissionDenied, 403, "permission_error", "permission_denied"),
    (StackNotFound, 503, "service_unavailable", "no_stack"),
    (StackError, 503, "service_unavailable", "stack_error"),
    (RetrievalError, 503, "service_unavailable", "retrieval_error"),
    (AnswerError, 503, "service_unavailable", "answer_error"),
    (BudgetExceeded, 429, "rate_limit_exceeded", "budget_exceeded"),
    (RateLimited, 429, "rate_limit_exceeded", "rate_limited"),
    (Overloaded, 503, "service_unavailable", "overloaded"),
    (CircuitOpen, 503, "service_unavailable", "dependency_unavailable"),
    (StoreUnavailable, 503, "service_unavailable", "store_unavailable"),
    # a database (request store, feedback store, keys) that does not answer: worth retrying, not a server bug
    (OperationalError, 503, "service_unavailable", "store_unavailable"),
    (InterfaceError, 503, "service_unavailable", "store_unavailable"),
)


DEFAULT_RETRY_AFTER_S = 1.0
"""``Retry-After`` of a 503 whose error does not say when to come back (the index or a stack not answering)."""


def error_kind(exc: BaseException) -> tuple[int, str]:
    """The status a library error is answered with and its low-cardinality kind (the ``code``); 500/``internal``
    for anything unexpected. What the request store and the ``ragops_errors_total`` metric record."""
    for error_type, status, _, code in ERROR_MAP:
        if isinstance(exc, error_type):
            return status, code
    return 500, "internal"


def error_response(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    """One error in OpenAI's envelope."""
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": code}})


def library_error_response(exc: Exception, path: str) -> JSONResponse:
    """The response of a library error in :data:`ERROR_MAP` (the first entry it is an instance of: the map lists
    subclasses first), with ``Retry-After`` on load control's refusals and on every 503. Also what
    :mod:`rag.service.door` answers before any route runs."""
    status, kind, code = next((s, k, c) for error_type, s, k, c in ERROR_MAP if isinstance(exc, error_type))
    message = str(exc)
    if isinstance(exc, OperationalError | InterfaceError):  # the driver's text names hosts and SQL: log it only
        logger.warning("database unavailable", extra={"path": path, "error": str(exc.orig).splitlines()[0]})
        message = "a database of the service is unavailable right now; retry shortly"
    response = error_response(status, message, kind, code)
    retry_after = getattr(exc, "retry_after_s", None)  # load control's errors say when to come back
    if not isinstance(retry_after, int | float) and status == 503:
        retry_after = DEFAULT_RETRY_AFTER_S  # a dependency down: worth retrying, soon
    if isinstance(retry_after, int | float):
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    return library_error_response(exc, request.url.path)


def _bearer_error(reason: str) -> str:
    """RFC 6750's error code: ``invalid_request`` for a missing or malformed header, else ``invalid_token``."""
    return "invalid_request" if reason in ("missing", "malformed") else "invalid_token"


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler on ``app``."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg')}")
        return error_response(422, "invalid request: " + "; ".join(parts), "invalid_request_error", "invalid_request")

    for error_type, *_ in ERROR_MAP:
        app.add_exception_handler(error_type, _library_error)

    @app.exception_handler(AuthenticationFailed)
    async def _unauthenticated(_: Request, exc: AuthenticationFailed) -> JSONResponse:
        response = error_response(401, str(exc), "authentication_error", "invalid_api_key")
        response.headers["WWW-Authenticate"] = f'Bearer realm="ragops", error="{_bearer_error(exc.reason)}"'
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(
            exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500 else "error"
        )
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        logger.exception("unexpected error (incident %s)", incident)
        return error_response(500, f"internal error (incident {incident}); see the service log", "server_error")
