"""Shedding at the door: past capacity, a question is refused before it is parsed, authenticated or queued.

Why: under sustained overload (a standing admission queue, :mod:`rag.limits.admission`) most newcomers would wait
``overload_wait_s`` and be shed anyway, after the service paid for their body, their credential check and their
place in the queue. That work comes out of the requests being answered: in ``bench/load.py`` it is what separates
the goodput at twice the capacity from the capacity. The door asks the worker's admission controller whether a
newcomer could be admitted in time and, if not, answers 503 with ``Retry-After`` at once (an admitted request is
unaffected: it still takes its slot in :meth:`rag.service.query.QueryService.request`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from rag.service.errors import library_error_response
from rag.service.routers.query import CHAT, QUERY

ADMITTED_PATHS = frozenset({QUERY, CHAT})
"""The routes that take an admission slot (the others are cheap: probes, metrics, feedback, pages)."""


class AdmissionDoor:
    """Refuse questions that the admission queue could not take in time, before any route runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in ADMITTED_PATHS:
            queries = getattr(scope["app"].state, "queries", None)  # set by the app's lifespan
            refused = queries.admission.shed_at_door() if queries is not None else None
            if queries is not None and refused is not None:
                queries.count_unserved(scope["path"], refused)
                await library_error_response(refused, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)
