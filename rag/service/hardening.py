"""What every response and every request body go through before a route sees them.

* Security headers on every response (``nosniff``, no framing, no referrer, no caching of API answers; the pages
  set their own Content-Security-Policy), and HSTS when the service itself speaks TLS.
* A bound on the request body: a declared ``Content-Length`` over ``service.max_body_bytes`` is refused with 413
  before anything is read, and a chunked body is cut off with 413 once it passes the bound, so a huge upload costs
  the service neither memory nor parsing (OWASP LLM10, unbounded consumption).
* A bound on the request's header block: over ``service.max_header_bytes`` (names and values together) it is
  refused with 431 before any route, authentication or logging sees it. The HTTP server parses the head first
  (uvicorn's httptools parser sets no bound of its own; its h11 parser and any ingress do), so this bounds what the
  service does with it, and a front proxy bounds what is read.
* CORS is off unless ``service.cors_origins`` names the sites that may call the API from a browser.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: it must not buffer streamed answers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000")


class BodyTooLarge(HTTPException):
    """A request body passed the configured bound while being read (an HTTP error, so FastAPI's body parsing
    passes it on as the 413 it is rather than as a parse failure)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class HardeningMiddleware:
    """Security headers on every response and a request body bound (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int = 32 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"
        head = sum(len(name) + len(value) for name, value in scope.get("headers", []))
        if head > self.max_header_bytes:
            message = f"request headers larger than {self.max_header_bytes} bytes"
            await self._refuse(send, tls, 431, message, "headers_too_large")
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send, tls)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [h for h in SECURITY_HEADERS if h[0] not in names]
                if tls:
                    extra.append(HSTS)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await self._too_large(send, tls)

    async def _too_large(self, send: Send, tls: bool) -> None:
        await self._refuse(send, tls, 413, f"request body larger than {self.max_body_bytes} bytes", "body_too_large")

    @staticmethod
    async def _refuse(send: Send, tls: bool, status: int, message: str, code: str) -> None:
        """Answer ``status`` with the service's error envelope, before any route ran."""
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += list(SECURITY_HEADERS) + ([HSTS] if tls else [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
