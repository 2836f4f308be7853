"""``POST /v1/feedback``: find the rated request in the request store, keep the rating with it, count it.

Kept apart from the route so the steps read in order: look the request up in the :class:`rag.store.RequestStore`
(which also sees records its writer has not written yet, so a rating seconds after its answer is found), fill in
cited texts a record lacks (from the served index: a chunk id names exactly one text), keep the snapshot and the
rating in the :class:`rag.feedback.FeedbackStore` (the training pairs retraining reads; the comment with its PII
redacted first: e-mail addresses, phone and card numbers, IBANs, ... never reach either store), join the rating to the
request's row in the request store (what monitoring's thumbs-down share reads) and count it in the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING

from rag.errors import RagError
from rag.feedback import FeedbackStore, RequestSnapshot, UnknownRequest, clean_comment
from rag.guardrails.pii import TextRedactor
from rag.service.holder import StackHolder
from rag.service.schemas import FeedbackRequest, FeedbackResponse
from rag.service.sources import fetch_chunk

if TYPE_CHECKING:
    from rag.monitoring.metrics import ServiceMetrics
    from rag.monitoring.tracing import TraceExporter
    from rag.review import ReviewSettings
    from rag.stages.context import Principal
    from rag.store import RequestStore

logger = logging.getLogger(__name__)


class FeedbackIntake:
    """Records ratings of answered requests.

    Args:
        store: Where ratings and what they judge are kept for training.
        requests: The request store (lookups, and the rating joined to its request).
        holder: The served stack (to fill in chunk texts that a record lacks).
        metrics: The service's metrics (``ragops_feedback_total``); None counts nothing.
        review: The review queue's rules: an answer rated down is queued for a reviewer (None: never).
    """

    def __init__(
        self,
        store: FeedbackStore,
        requests: RequestStore,
        holder: StackHolder,
        metrics: ServiceMetrics | None = None,
        tracer: TraceExporter | None = None,
        review: ReviewSettings | None = None,
    ) -> None:
        self._review = review
        self.store = store
        self.requests = requests
        self._holder = holder
        self._metrics = metrics
        self._tracer = tracer
        self._redact = TextRedactor()

    def rate(self, body: FeedbackRequest, principal: Principal | None = None) -> FeedbackResponse:
        """Store the rating in ``body`` by ``principal``. Blocking (database reads and writes): run it in a worker
        thread.

        A principal rates only answers it was given (same principal and tenant); an admin rates any. Another's
        answer is answered exactly like an unknown one, so request ids cannot be probed across users or tenants.

        Raises:
            UnknownRequest: The service has no record of ``body.request_id`` (that this principal may rate), or it
                was not an answer.
            BadQuery: The comment is not valid text.
        """
        # another worker or replica may have answered it and still hold its record for a moment
        found = self.requests.get(body.request_id, wait_s=self.requests.visibility_s)
        if found is not None and principal is not None and not _may_rate(principal, found.principal, found.tenant):
            found = None
        snapshot = found.to_snapshot() if found is not None and found.status < 400 and not found.blocked else None
        if snapshot is None:
            raise UnknownRequest(
                f"unknown request_id {body.request_id!r}: feedback needs the request_id of an answer this service "
                "gave (the `request_id` field of a /v1/query response)"
            )
        snapshot = self._with_texts(snapshot)
        comment = clean_comment(body.comment)
        if comment:
            comment = self._redact(comment)
        result = self.store.record(snapshot, body.rating, comment)
        record = result.record
        try:
            self.requests.set_feedback(record.request_id, record.rating, record.comment, at=record.updated_at)
        except UnknownRequest:  # purged by retention between the lookup and now: the training copy is kept
            logger.warning("rated request left the request store", extra={"request_id": record.request_id})
        else:
            review = self._review
            if record.rating == "down" and review is not None and review.enabled and review.thumbs_down:
                self.requests.queue_review(record.request_id, ("thumbs_down",))
        if self._metrics is not None:
            self._metrics.observe_feedback(record.rating)
        if self._tracer is not None:
            self._tracer.rate(record.request_id, record.rating)  # an assessment on the request's MLflow trace
        logger.info(
            "feedback recorded",
            extra={"request_id": record.request_id, "rating": record.rating, "replaced": result.replaced},
        )
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
        """Fill in cited texts a record lacks (the store keeps them; this covers records written without them)."""
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
        except RagError:  # no stack served right now; store what the record had
            return snapshot
        return dataclasses.replace(snapshot, citations=tuple(filled))


def _may_rate(principal: Principal, asked_by: str, tenant: str | None) -> bool:
    """Whether ``principal`` may rate an answer given to ``asked_by`` in ``tenant``."""
    return principal.role == "admin" or (principal.name == asked_by and principal.tenant == tenant)
