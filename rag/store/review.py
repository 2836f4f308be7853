"""The review queue in the request store's database (:mod:`rag.review` says what it is for).

A queued item is a row of ``review_items`` keyed by the request id; everything the reviewer sees (question, answer,
cited chunks with their text, guardrail verdicts) is the request's own row, joined. Queueing is an upsert that
merges reasons, so a sampled answer that is later rated down carries both.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from rag.errors import BadQuery
from rag.feedback import UnknownRequest
from rag.review import REASONS, Reason, ReviewItem, ReviewLabel
from rag.store.tables import requests, review_items

PENDING = "pending"
LABELLED = "labelled"
STATUSES = (PENDING, LABELLED)


def enqueue(engine: Engine, entries: Iterable[tuple[str, Sequence[Reason], float]]) -> int:
    """Queue ``(request_id, reasons, at)`` entries, merging reasons into an item already queued; returns how many
    entries were new."""
    new = 0
    c = review_items.c
    with engine.begin() as db:
        for request_id, reasons, at in entries:
            wanted = [r for r in REASONS if r in reasons]
            if not wanted:
                continue
            found = db.execute(select(c.reasons).where(c.request_id == request_id)).first()
            if found is None:
                try:
                    with db.begin_nested():
                        db.execute(
                            review_items.insert().values(
                                request_id=request_id, queued_at=at, reasons=wanted, status=PENDING
                            )
                        )
                    new += 1
                    continue
                except IntegrityError:  # queued meanwhile by another worker: merge below
                    found = db.execute(select(c.reasons).where(c.request_id == request_id)).first()
            merged = [r for r in REASONS if r in set(found[0] if found else ()) | set(wanted)]
            db.execute(update(review_items).where(c.request_id == request_id).values(reasons=merged))
    return new


def _item(row: Any) -> ReviewItem:
    label = None
    if row["status"] == LABELLED:
        label = ReviewLabel(
            verdict=row["verdict"],
            reviewer=row["reviewer"] or "",
            at=float(row["labelled_at"] or 0.0),
            right_answer=row["right_answer"],
            relevant_chunk_ids=tuple(row["relevant_chunk_ids"] or ()),
        )
    return ReviewItem(
        request_id=row["request_id"],
        queued_at=float(row["queued_at"]),
        reasons=tuple(row["reasons"] or ()),
        question=row["question"],
        answer=row["answer"],
        abstained=bool(row["abstained"]),
        blocked=bool(row["blocked"]),
        tenant=row["tenant"],
        stack_version=row["stack_version"],
        verdicts={str(k): str(v) for k, v in (row["verdicts"] or {}).items()},
        citations=tuple(dict(c) for c in (row["citations"] or ())),
        label=label,
    )


def _joined() -> Any:
    r, q = requests.c, review_items.c
    return select(
        q.request_id,
        q.queued_at,
        q.reasons,
        q.status,
        q.verdict,
        q.right_answer,
        q.relevant_chunk_ids,
        q.reviewer,
        q.labelled_at,
        r.question,
        r.answer,
        r.abstained,
        r.blocked,
        r.tenant,
        r.stack_version,
        r.verdicts,
        r.citations,
    ).join(requests, r.request_id == q.request_id)


def items(engine: Engine, *, status: str | None = PENDING, limit: int = 50, offset: int = 0) -> list[ReviewItem]:
    """Queued items, oldest first (``status`` None: both pending and labelled)."""
    if status is not None and status not in STATUSES:
        raise BadQuery(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if not 1 <= limit <= 1000 or offset < 0:
        raise BadQuery("limit must be between 1 and 1000 and offset not negative")
    q = review_items.c
    query = _joined().order_by(q.queued_at, q.request_id).limit(limit).offset(offset)
    if status is not None:
        query = query.where(q.status == status)
    with engine.connect() as db:
        return [_item(row) for row in db.execute(query).mappings()]


def labelled(engine: Engine) -> list[ReviewItem]:
    """Every labelled item, oldest first (what an export reads)."""
    q = review_items.c
    query = _joined().where(q.status == LABELLED).order_by(q.queued_at, q.request_id)
    with engine.connect() as db:
        return [_item(row) for row in db.execute(query.execution_options(yield_per=1000)).mappings()]


def get(engine: Engine, request_id: str) -> ReviewItem | None:
    """The queued item of ``request_id``, or None."""
    with engine.connect() as db:
        row = db.execute(_joined().where(review_items.c.request_id == request_id)).mappings().first()
    return _item(row) if row is not None else None


def counts(engine: Engine) -> dict[str, int]:
    """Items per status."""
    q = review_items.c
    with engine.connect() as db:
        rows = db.execute(select(q.status, func.count()).group_by(q.status)).all()
    return {status: 0 for status in STATUSES} | {str(s): int(n) for s, n in rows}


def label(
    engine: Engine,
    request_id: str,
    *,
    verdict: object,
    reviewer: str,
    right_answer: object = None,
    relevant_chunk_ids: Sequence[object] = (),
    at: float | None = None,
) -> tuple[ReviewItem, ReviewLabel]:
    """Record a reviewer's label on a queued item (a second label replaces the first).

    Raises:
        UnknownRequest: ``request_id`` is not in the queue.
        BadQuery: The label is malformed (see :meth:`ReviewLabel.checked`).
    """
    item = get(engine, request_id)
    if item is None:
        raise UnknownRequest(f"request {request_id!r} is not in the review queue")
    checked = ReviewLabel.checked(
        verdict=verdict,
        reviewer=reviewer,
        at=time.time() if at is None else at,
        right_answer=right_answer,
        relevant_chunk_ids=relevant_chunk_ids,
        cited=item.cited_chunk_ids,
    )
    with engine.begin() as db:
        db.execute(
            update(review_items)
            .where(review_items.c.request_id == request_id)
            .values(
                status=LABELLED,
                verdict=checked.verdict,
                right_answer=checked.right_answer,
                relevant_chunk_ids=list(checked.relevant_chunk_ids),
                reviewer=checked.reviewer,
                labelled_at=checked.at,
            )
        )
    return item, checked


def delete(engine: Engine, request_ids: Iterable[str]) -> int:
    """Remove items (their requests were purged or erased)."""
    ids = list(request_ids)
    if not ids:
        return 0
    with engine.begin() as db:
        return int(db.execute(review_items.delete().where(review_items.c.request_id.in_(ids))).rowcount)
