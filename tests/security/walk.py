"""The authorisation table walked over HTTP: every route of a served app, for every role and for no key.

Shared by tests/security/test_authz.py and bench/security.py, so the benchmark's ``authz_cells`` are the cells the
test asserts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from rag.security.authz import expected_status, route_action

ROLES: tuple[str | None, ...] = (None, "reader", "operator", "admin")
BODIES: dict[str, Any] = {
    "/v1/query": {"question": "What is the warranty?"},
    "/v1/chat/completions": {"model": "rag-stack", "messages": [{"role": "user", "content": "What is the warranty?"}]},
    "/v1/feedback": {"request_id": "0" * 32, "rating": "up"},
    "/v1/review/{request_id}": {"verdict": "correct"},
}
SAMPLE_PARAMS = {"chunk_id": "0123456789abcdef", "request_id": "0" * 32}


@dataclass(frozen=True)
class Cell:
    """One route for one role: what the table says and what the service answered."""

    method: str
    path: str
    role: str | None
    action: str
    expected: int | None
    status: int
    www_authenticate: str | None

    @property
    def passed(self) -> bool:
        if self.expected is None:
            return self.status not in (401, 403)
        if self.expected == 401:
            return self.status == 401 and (self.www_authenticate or "").startswith("Bearer")
        return self.status == self.expected


def app_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every route of ``app``: those in its OpenAPI schema plus the pages kept out of
    it (the playground, the review page, the docs, the schema itself). HEAD is left out: it is treated as GET.
    Static file mounts are not routes of the table (see :data:`rag.security.authz.ROUTES`)."""
    from fastapi.routing import APIRoute

    out = {("GET", "/openapi.json")}
    for path, operations in app.openapi()["paths"].items():
        out.update((method.upper(), path) for method in operations)
    for route in app.routes:
        if isinstance(route, APIRoute):
            out.update((method, route.path) for method in route.methods if method != "HEAD")
    return sorted(out)


def walk(base_url: str, routes: list[tuple[str, str]], keys: Mapping[str, str]) -> list[Cell]:
    """Request every route as every role in :data:`ROLES` (``keys``: role -> API key)."""
    cells = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for method, path in routes:
            action = route_action(method, path)
            assert action is not None, f"{method} {path} is not in the authorisation table"
            url = path.format(**SAMPLE_PARAMS)
            for role in ROLES:
                headers = {"Authorization": f"Bearer {keys[role]}"} if role else {}
                response = client.request(method, url, json=BODIES.get(path), headers=headers)
                cells.append(
                    Cell(
                        method,
                        path,
                        role,
                        action,
                        expected_status(role, action),
                        response.status_code,
                        response.headers.get("www-authenticate"),
                    )
                )
    return cells
