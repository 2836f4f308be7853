"""``POST /v1/feedback``: find the rated request, store the rating with it, and log it for monitoring.

Kept apart from the route so the steps read in order: look the request up (memory, then the request log), fill in
cited texts an old log record lacks (from the served index: a chunk id names exactly one text), store it in the
:class:`rag.feedback.FeedbackStore`, append a line to ``<home>/logs/feedback.jsonl``. The line goes to its own file
rather than ``requests.jsonl`` so that every line of the request log stays one answered request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Protocol

from rag.errors import RagError
from rag.feedback import FeedbackStore, RequestSnapshot, UnknownRequest
from rag.service.holder import StackHolder
from rag.service.recent import RecentRequests
from rag.service.schemas import FeedbackRequest, FeedbackResponse
from rag.service.sources import fetch_chunk

logger = logging.getLogger(__name__)


class JsonlWriter(Protocol):
    """The service's append-only log (``rag.service.app.RequestLog``)."""

    def write(self, record: dict[str, object]) -> None:
        """Append one record."""
        ...


class FeedbackIntake:
    """Records ratings of answered requests.

    Args:
        store: Where ratings are kept.
        recent: Snapshots of answered requests.
        holder: The served stack (to fill in chunk texts that an old request log record lacks).
        log: ``feedback.jsonl``.
    """

    def __init__(self, store: FeedbackStore, recent: RecentRequests, holder: StackHolder, log: JsonlWriter) -> None:
        self.store = store
        self.recent = recent
        self._holder = holder
        self._log = log

    def rate(self, body: FeedbackRequest) -> FeedbackResponse:
        """Store the rating in ``body``. Blocking (SQLite, maybe the request log): run it in a worker thread.

        Raises:
            UnknownRequest: The service has no record of ``body.request_id``.
            BadQuery: The comment is not valid text.
        """
        snapshot = self.recent.get(body.request_id)
        if snapshot is None:
            raise UnknownRequest(
                f"unknown request_id {body.request_id!r}: feedback needs the request_id of an answer this service "
                "gave (the `request_id` field of a /v1/query response)"
            )
        snapshot = self._with_texts(snapshot)
        result = self.store.record(snapshot, body.rating, body.comment)
        record = result.record
        self._log.write(
            {
                "request_id": record.request_id,
                "at": record.updated_at,
                "rating": record.rating,
                "comment": record.comment,
                "replaced": result.replaced,
                "previous_rating": result.previous_rating,
                "stack_version": snapshot.stack_version,
                "index_version": snapshot.index_version,
                "abstained": snapshot.abstained,
                "cited_chunk_ids": [c.chunk_id for c in snapshot.citations],
            }
        )
        logger.info("feedback %s on request %s (replaced: %s)", record.rating, record.request_id, result.replaced)
        if result.replaced:
            message = f"feedback recorded; it replaces the earlier rating ({result.previous_rating}) of this answer"
        else:
            message = "feedback recorded"
        return FeedbackResponse(
            request_id=record.request_id,
            rating=record.rating,
            comment=record.comment,
            replaced=result.replaced,
            previous_rating=result.previous_rating,
            revisions=record.revisions,
            recorded_at=record.updated_at,
            message=message,
        )

    def _with_texts(self, snapshot: RequestSnapshot) -> RequestSnapshot:
        """Fill in cited texts missing from a request log record written before the log carried them."""
        if all(c.text is not None for c in snapshot.citations):
            return snapshot
        filled = []
        try:
            with self._holder.acquire() as served:
                for cited in snapshot.citations:
                    if cited.text is None:
                        # Gone from the index: the rating is kept, the pair just cannot be trained on.
                        with contextlib.suppress(RagError):
                            cited = dataclasses.replace(cited, text=fetch_chunk(served, cited.chunk_id).text)
                    filled.append(cited)
        except RagError:  # no stack served right now; store what the log had
            return snapshot
        return dataclasses.replace(snapshot, citations=tuple(filled))
