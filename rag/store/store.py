"""The request store: every request's record in SQLite (default) or PostgreSQL, written off the request path.

The record stage runs on every request, so :meth:`RequestStore.record` only puts the frozen record on a bounded
queue (a few microseconds); a background thread turns records into rows and inserts them in batches, one
transaction per batch. The writer waits ``write_delay_s`` after a batch's first record and writes everything queued
by then (group commit): a transaction per request costs the service's process more interpreter time than a cached
answer takes, and at low concurrency that work would run while the next request is being served.
:meth:`RequestStore.flush` and :meth:`RequestStore.close` cut the wait short. When the queue is full (the database
is stalled) new records are dropped and counted rather than making requests wait: the metrics show the drop and the
answers keep flowing. :meth:`RequestStore.close` drains the queue first, so a graceful shutdown loses nothing.
Records not yet written are still visible to :meth:`get` (feedback may arrive within milliseconds of its answer).

SQLite runs in WAL mode with ``synchronous=NORMAL``: readers (the monitor, feedback lookups, other workers) never
block the writer, and a power cut can lose at most the last few batches, never corrupt the file. Several worker
processes may share one SQLite file (``busy_timeout`` makes them take turns). Retention deletes in slices of
:data:`PURGE_SLICE` rows so no single transaction holds the write lock for long.

Usage example::

    store = RequestStore("sqlite:////srv/ragops/requests.db", retention_days=90)
    store.record(RequestRecord(request_id=..., at=time.time(), principal="alice", question="..."))
    store.set_feedback(request_id, "up", "exactly right")
    store.window(time.time() - 3600, time.time())     # WindowStats(requests=..., errors=..., cost_usd=...)
    store.close()                                      # drains the queue
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, case, create_engine, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from rag.errors import BadQuery, StoreError, StoreUnavailable
from rag.feedback import Rating, UnknownRequest, clean_comment, normalise_rating
from rag.review import ReviewItem, ReviewLabel
from rag.store import ledger, review
from rag.store.ledger import DailySpend, Grouping, SpendRow
from rag.store.migrate import upgrade
from rag.store.records import RequestRecord, StoreStats, WindowStats
from rag.store.tables import requests, review_items

logger = logging.getLogger(__name__)

BATCH = 500
"""Rows inserted per transaction at most."""

PURGE_SLICE = 10_000
"""Rows deleted per transaction by retention."""

PURGE_INTERVAL_S = 3600.0
"""How often the writer applies the retention setting by itself."""

_STOP = object()
OUTAGE_WAIT_S = 120.0
"""How long the writer waits for a database that does not answer before it gives a batch up (and counts it)."""


class RequestStore:
    """Request records in a SQL database, migrated to the newest schema when opened.

    Args:
        url: SQLAlchemy URL (``sqlite:///path/requests.db``, ``postgresql+psycopg://...``).
        retention_days: Records older than this are purged (hourly by the writer, or by :meth:`purge_expired`);
            None keeps everything.
        queue_size: Records waiting to be written before new ones are dropped.
        purge_interval_s: How often the writer applies ``retention_days`` by itself (first right after opening);
            None leaves retention to explicit :meth:`purge_expired` calls.
        write_delay_s: How long the writer gathers records after a batch's first before writing the batch (0: write
            whatever is queued at once, a transaction per record when they arrive one by one).

    Raises:
        StoreError: The database cannot be reached or migrated.
    """

    def __init__(
        self,
        url: str,
        *,
        retention_days: float | None = None,
        queue_size: int = 10_000,
        purge_interval_s: float | None = PURGE_INTERVAL_S,
        write_delay_s: float = 0.0,
    ) -> None:
        if retention_days is not None and retention_days <= 0:
            raise ValueError(f"retention_days must be positive, got {retention_days}")
        if write_delay_s < 0:
            raise ValueError(f"write_delay_s must not be negative, got {write_delay_s}")
        self.write_delay_s = write_delay_s
        self.retention_days = retention_days
        self._purge_interval_s = purge_interval_s
        self._engine = store_engine(url)
        try:
            self.revision = upgrade(self._engine)
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise StoreError(f"cannot open the request store {self.url}: {exc}") from exc
        except BaseException:
            self._engine.dispose()
            raise
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._pending: dict[str, RequestRecord] = {}
        self._lock = threading.Lock()
        self._queued = self._written = self._dropped = self._failed = 0
        self._closed = False
        self._hurry = threading.Event()  # set by flush() and close(): write what is queued without the delay
        self._last_purge: float | None = None
        self._outage_since: float | None = None  # set while the writer waits for the database
        self._writer = threading.Thread(target=self._write_loop, name="ragops-request-store", daemon=True)
        self._writer.start()

    @property
    def unavailable_since(self) -> float | None:
        """When the writer last found the database not answering (monotonic seconds); None while it answers."""
        return self._outage_since

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._engine.url.render_as_string(hide_password=True)

    # -- the request path ------------------------------------------------------------------------------------------

    def record(self, item: RequestRecord) -> bool:
        """Queue one request's record for writing; False (and counted) when the queue is full or the store closed.

        Never blocks and never raises for a full queue: it runs on the service's event loop.
        """
        with self._lock:
            if self._closed:
                self._dropped += 1
                return False
            self._pending[item.request_id] = item
            self._queued += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._pending.pop(item.request_id, None)
                self._dropped += 1
                dropped = self._dropped
            if dropped == 1 or dropped % 1000 == 0:
                logger.warning(
                    "request store queue full: record dropped",
                    extra={"request_id": item.request_id, "dropped": dropped},
                )
            return False
        return True

    # -- reads and updates -----------------------------------------------------------------------------------------

    def get(self, request_id: str, *, wait_s: float = 0.0) -> RequestRecord | None:
        """The record of ``request_id`` (with its feedback), including one still waiting to be written.

        ``wait_s``: how long to keep looking for a record another process may still be holding in its writer's
        queue (up to its ``write_delay_s``: another worker or replica answered the request a moment ago).
        """
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                pending = self._pending.get(request_id)
            if pending is not None:
                return pending
            with self._engine.connect() as db:
                row = db.execute(select(requests).where(requests.c.request_id == request_id)).mappings().first()
            if row is not None:
                return RequestRecord.from_row(row)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    @property
    def visibility_s(self) -> float:
        """How long a record answered by another process of the same store may take to become readable here."""
        return self.write_delay_s + 0.5

    def _written_through(self, request_id: str) -> None:
        """Before ``request_id``'s row is updated: if its record still waits in this writer's queue, write it now.

        Raises:
            StoreUnavailable: The writer is waiting for the database (a flush would wait as long).
        """
        with self._lock:
            waiting = request_id in self._pending
        if waiting:
            if self._outage_since is not None:
                raise StoreUnavailable("the request store's database is unavailable; retry shortly")
            self.flush()

    def set_feedback(
        self, request_id: str, rating: object, comment: str | None = None, *, at: float | None = None
    ) -> Rating | None:
        """Join a rating to its request; returns the rating it replaced (None for the first one).

        Raises:
            BadQuery: The rating is not up/down (1/-1), or the comment is too long or not text.
            UnknownRequest: The store has no record of ``request_id`` (never answered, or purged).
        """
        value = normalise_rating(rating)
        text = clean_comment(comment)
        when = time.time() if at is None else at
        self._written_through(request_id)
        with self._engine.begin() as db:
            previous = db.execute(
                select(requests.c.feedback_rating).where(requests.c.request_id == request_id).with_for_update()
            ).first()
            if previous is None:
                raise UnknownRequest(f"the request store has no record of request {request_id!r}")
            db.execute(
                update(requests)
                .where(requests.c.request_id == request_id)
                .values(feedback_rating=value, feedback_comment=text, feedback_at=when)
            )
        old = previous[0]
        return normalise_rating(old) if old is not None else None

    def window(self, since: float, until: float, *, stack_version: int | None = None) -> WindowStats:
        """Aggregates over the records with ``since <= at < until`` (one indexed range scan), optionally only those
        answered by ``stack_version`` (an A/B experiment's arm)."""
        if until < since:
            raise BadQuery(f"window ends ({until}) before it starts ({since})")
        c = requests.c
        where = [c.at >= since, c.at < until]
        if stack_version is not None:
            where.append(c.stack_version == stack_version)
        query = select(
            func.count(),
            func.coalesce(func.sum(case((c.status >= 500, 1), else_=0)), 0),
            func.coalesce(func.sum(case((c.blocked, 1), else_=0)), 0),
            func.coalesce(func.sum(case((c.abstained, 1), else_=0)), 0),
            func.coalesce(func.sum(c.prompt_tokens), 0),
            func.coalesce(func.sum(c.completion_tokens), 0),
            func.coalesce(func.sum(c.cost_usd), 0.0),
            func.coalesce(func.sum(case((c.feedback_rating == "up", 1), else_=0)), 0),
            func.coalesce(func.sum(case((c.feedback_rating == "down", 1), else_=0)), 0),
            func.avg(c.total_ms),
            func.coalesce(func.sum(case((c.guardrail_triggered, 1), else_=0)), 0),
            func.coalesce(func.sum(c.cost_usd * c.cost_usd), 0.0),
            func.sum(c.total_ms * c.total_ms),
        ).where(*where)
        totals = select(c.total_ms).where(*where, c.total_ms.is_not(None))
        with self._engine.connect() as db:
            row = db.execute(query).one()
            latencies = _column(db, totals) if row[0] else []
        n, errors, blocked, abstained, prompt, completion, cost, up, down, mean, triggered, cost_sq, ms_sq = row
        p50, p95, p99 = _percentiles(latencies, (50, 95, 99))
        timed = len(latencies)
        sd_ms = (
            max((float(ms_sq) - timed * float(mean) ** 2) / (timed - 1), 0.0) ** 0.5
            if timed >= 2 and mean is not None and ms_sq is not None
            else None
        )
        return WindowStats(
            since=since,
            until=until,
            requests=int(n),
            errors=int(errors),
            blocked=int(blocked),
            abstained=int(abstained),
            prompt_tokens=int(prompt),
            completion_tokens=int(completion),
            cost_usd=float(cost),
            feedback_up=int(up),
            feedback_down=int(down),
            mean_total_ms=float(mean) if mean is not None else None,
            guardrail_triggered=int(triggered),
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            sd_total_ms=sd_ms,
            cost_sq_usd=float(cost_sq),
        )

    def arm_callers(self, since: float, until: float, versions: Sequence[int]) -> tuple[dict[int, int], int]:
        """Callers (tenant and key name) per stack version over ``[since, until)`` among ``versions``, and how many
        callers were answered by more than one of them (an A/B experiment's stickiness check: 0 expected)."""
        c = requests.c
        query = (
            select(c.principal, c.tenant, c.stack_version)
            .where(c.at >= since, c.at < until, c.stack_version.in_(list(versions)))
            .distinct()
        )
        per_version: dict[int, int] = {}
        seen: dict[tuple[str, str | None], int] = {}
        with self._engine.connect() as db:
            for principal, tenant, version in db.execute(query):
                per_version[int(version)] = per_version.get(int(version), 0) + 1
                seen[(principal, tenant)] = seen.get((principal, tenant), 0) + 1
        return per_version, sum(1 for n in seen.values() if n > 1)

    # -- the review queue (rag/store/review.py) --------------------------------------------------------------------

    def queue_review(self, request_id: str, reasons: Sequence[str]) -> bool:
        """Queue a recorded request for human review (reasons merge into an item already queued); True when new.

        Raises:
            UnknownRequest: The store has no record of ``request_id``.
        """
        self._written_through(request_id)
        if self.get(request_id) is None:
            raise UnknownRequest(f"the request store has no record of request {request_id!r}")
        return review.enqueue(self._engine, [(request_id, reasons, time.time())]) == 1  # type: ignore[list-item]

    def review_items(self, *, status: str | None = "pending", limit: int = 50, offset: int = 0) -> list[ReviewItem]:
        """Queued items with their requests, oldest first."""
        return review.items(self._engine, status=status, limit=limit, offset=offset)

    def labelled_reviews(self) -> list[ReviewItem]:
        """Every labelled item (the export's input)."""
        return review.labelled(self._engine)

    def review_item(self, request_id: str) -> ReviewItem | None:
        """One queued item, or None."""
        return review.get(self._engine, request_id)

    def review_counts(self) -> dict[str, int]:
        """Items per status (pending, labelled)."""
        return review.counts(self._engine)

    def label_review(
        self,
        request_id: str,
        *,
        verdict: object,
        reviewer: str,
        right_answer: object = None,
        relevant_chunk_ids: Sequence[object] = (),
    ) -> tuple[ReviewItem, ReviewLabel]:
        """Record a reviewer's label (see :func:`rag.store.review.label`)."""
        return review.label(
            self._engine,
            request_id,
            verdict=verdict,
            reviewer=reviewer,
            right_answer=right_answer,
            relevant_chunk_ids=relevant_chunk_ids,
        )

    def spend(self, by: Grouping, since: float, until: float) -> list[SpendRow]:
        """The spend ledger over ``[since, until)`` by tenant, key or stack version (:mod:`rag.store.ledger`)."""
        return ledger.spend(self._engine, by, since, until)

    def daily_spend(self, since: float, until: float) -> list[DailySpend]:
        """Cost per tenant and UTC day over ``[since, until)`` (the forecast's input)."""
        return ledger.daily_spend(self._engine, since, until)

    def rows(self, since: float, until: float, *, limit: int | None = None) -> Iterator[RequestRecord]:
        """The records with ``since <= at < until``, oldest first (streamed: the window may be large)."""
        query = select(requests).where(requests.c.at >= since, requests.c.at < until).order_by(requests.c.at)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as db:
            for row in db.execution_options(yield_per=1000).execute(query).mappings():
                yield RequestRecord.from_row(row)

    def count(self) -> int:
        """Records written so far (those still queued are not counted)."""
        with self._engine.connect() as db:
            return int(db.execute(select(func.count()).select_from(requests)).scalar_one())

    def purge(self, older_than: float) -> int:
        """Delete the records with ``at < older_than`` (feedback with them); returns how many went."""
        deleted = 0
        ids = select(requests.c.request_id).where(requests.c.at < older_than).limit(PURGE_SLICE).scalar_subquery()
        while True:
            with self._engine.begin() as db:
                n = db.execute(requests.delete().where(requests.c.request_id.in_(ids))).rowcount
            deleted += n
            if n < PURGE_SLICE:
                break
        if deleted:
            with self._engine.begin() as db:  # queued items of purged requests go with them
                db.execute(review_items.delete().where(review_items.c.request_id.not_in(select(requests.c.request_id))))
            logger.info("request store purged old records", extra={"deleted": deleted, "older_than": older_than})
        return deleted

    def erase(self, doc_ids: Collection[str], *, tenant: str | None = None) -> tuple[str, ...]:
        """Delete the records that cited any of ``doc_ids`` (their cited texts and answers quote them) and, for a
        tenant's erasure, every record of ``tenant``; then compact the database so no deleted row survives in free
        pages or the WAL. Returns the deleted request ids (their traces and feedback go too)."""
        self.flush()
        doubtful = set(doc_ids)
        doomed: list[str] = []
        query = select(requests.c.request_id, requests.c.tenant, requests.c.citations)
        with self._engine.connect() as db:
            for request_id, owner, citations in db.execute(query.execution_options(yield_per=1000)):
                cited = {str(c.get("doc_id")) for c in citations or () if isinstance(c, Mapping)}
                if (tenant is not None and owner == tenant) or cited & doubtful:
                    doomed.append(str(request_id))
        for start in range(0, len(doomed), PURGE_SLICE):
            review.delete(self._engine, doomed[start : start + PURGE_SLICE])  # the queue quotes them too
            with self._engine.begin() as db:
                db.execute(requests.delete().where(requests.c.request_id.in_(doomed[start : start + PURGE_SLICE])))
        if doomed:
            vacuum(self._engine)
        logger.info("request store erased records", extra={"deleted": len(doomed), "tenant": tenant})
        return tuple(doomed)

    def purge_expired(self, now: float | None = None) -> int:
        """Apply ``retention_days`` (nothing when it is None); returns how many records went."""
        if self.retention_days is None:
            return 0
        return self.purge((time.time() if now is None else now) - self.retention_days * 86400.0)

    # -- the writer ------------------------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """The writer's counters."""
        with self._lock:
            return StoreStats(queued=self._queued, written=self._written, dropped=self._dropped, failed=self._failed)

    def flush(self) -> None:
        """Wait until every record queued so far is written (or given up on), without the writer's gathering delay."""
        if self._writer.is_alive():
            self._hurry.set()
            self._queue.join()

    def close(self) -> None:
        """Write what is queued, stop the writer and release the database. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)  # blocks while full: the writer is draining it
        self._hurry.set()
        self._writer.join()
        self._engine.dispose()

    def __enter__(self) -> RequestStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._maybe_purge()
                continue
            batch, taken, stop = self._gather(first)
            try:
                if batch:
                    self._insert(batch)
            except Exception:  # a record the driver cannot take must never stop the writer (and every later write)
                with self._lock:
                    self._failed += len(batch)
                    for r in batch:
                        self._pending.pop(r.request_id, None)
                logger.exception("request store could not write a batch", extra={"records": len(batch)})
            finally:
                for _ in range(taken):
                    self._queue.task_done()
            self._maybe_purge()

    def _gather(self, first: object) -> tuple[list[RequestRecord], int, bool]:
        """The batch that starts with ``first``: after waiting ``write_delay_s`` (unless a flush or a stop cuts it
        short, or a whole batch is already queued), every queued record up to :data:`BATCH`. Returns the batch, how
        many queue items were taken and whether the stop marker was among them."""
        if first is not _STOP and self.write_delay_s > 0 and self._queue.qsize() < BATCH - 1:
            # An event, not the queue, is waited on: records arriving meanwhile do not wake this thread, whose work
            # would compete with the requests being served.
            self._hurry.wait(self.write_delay_s)
            self._hurry.clear()
        batch: list[RequestRecord] = []
        taken = 0
        item = first
        while True:
            taken += 1
            if item is _STOP:
                return batch, taken, True
            if isinstance(item, RequestRecord):
                batch.append(item)
            if len(batch) >= BATCH:
                return batch, taken, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, taken, False

    def _insert(self, batch: list[RequestRecord]) -> None:
        written = self._insert_rows([r.to_row() for r in batch])
        queued = [(r.request_id, r.review, r.at) for r in batch if r.review]
        if queued and written:
            review.enqueue(self._engine, queued)  # type: ignore[arg-type]
        with self._lock:
            self._written += written
            for r in batch:
                self._pending.pop(r.request_id, None)

    def _insert_rows(self, rows: list[dict[str, Any]]) -> int:
        """Insert ``rows`` in one transaction; returns how many were written.

        A database that does not answer (a restart, a network blip) is waited for, with backoff, up to
        ``OUTAGE_WAIT_S``: the queue holds what arrives meanwhile (bounded; past it records are dropped and
        counted), so a restart loses nothing. A batch the database refuses (a duplicate id, text the driver cannot
        encode) is not retried; its rows are tried one by one."""
        error: Exception | None = None
        attempt = 0
        # a database server can be down for a while; SQLite is only ever busy (or broken: no use waiting long)
        patience = OUTAGE_WAIT_S if self._engine.dialect.name != "sqlite" and not self._closed else 1.2
        deadline = time.monotonic() + patience
        while True:
            attempt += 1
            try:
                with self._engine.begin() as db:
                    db.execute(requests.insert(), rows)
                if self._outage_since is not None:
                    logger.info(
                        "request store database back",
                        extra={"outage_s": round(time.monotonic() - self._outage_since, 1), "records": len(rows)},
                    )
                    self._outage_since = None
                return len(rows)
            except (IntegrityError, ValueError) as exc:  # a duplicate id, text the driver cannot encode: retrying
                error = exc  # the batch cannot help
                break
            except (OperationalError, InterfaceError) as exc:  # not answering, or busy
                error = exc
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    logger.warning(
                        "request store database unavailable; holding records until it answers",
                        extra={"records": len(rows), "error": str(exc).splitlines()[0]},
                    )
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.1 * 2 ** (attempt - 1), 0.5))  # short: the queue waits behind this batch
            except SQLAlchemyError as exc:  # anything else will not get better by waiting
                error = exc
                break
        if isinstance(error, IntegrityError | ValueError) and len(rows) > 1:
            # One bad row must not take its batch with it: write the others one by one.
            return sum(self._insert_rows([row]) for row in rows)
        with self._lock:
            self._failed += len(rows)
        logger.error(
            "request store could not write records",
            extra={"records": len(rows), "request_id": rows[0]["request_id"], "error": str(error).splitlines()[0]},
        )
        return 0

    def _maybe_purge(self) -> None:
        if self.retention_days is None or self._purge_interval_s is None:
            return
        if self._last_purge is not None and time.monotonic() - self._last_purge < self._purge_interval_s:
            return
        self._last_purge = time.monotonic()
        try:
            self.purge_expired()
        except SQLAlchemyError:
            logger.exception("request store retention purge failed; trying again next interval")


def _column(db: Connection, query: Select[tuple[float | None]]) -> Sequence[float]:
    """The values of a one-column query, read through the driver's cursor.

    For exact latency percentiles the window's totals are read whole (from the covering index: no wide row is
    touched). A million rows through SQLAlchemy's result objects took 1.7 s; the driver's cursor into a numpy array
    takes about 0.3 s.
    """
    import numpy as np

    compiled = query.compile(dialect=db.dialect)
    params = compiled.construct_params()
    args: Any = tuple(params[k] for k in compiled.positiontup or ()) if compiled.positional else params
    cursor = db.connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        parts = []
        while rows := cursor.fetchmany(65536):
            parts.append(np.fromiter((value for (value,) in rows), dtype=np.float64, count=len(rows)))
        found: Sequence[float] = np.concatenate(parts) if parts else np.empty(0)  # type: ignore[assignment]
        return found
    finally:
        cursor.close()


def _percentiles(values: Sequence[float], qs: tuple[float, ...]) -> tuple[float | None, ...]:
    """The ``qs`` percentiles of ``values`` (linear interpolation); None each for no values."""
    if len(values) == 0:
        return tuple(None for _ in qs)
    import numpy as np

    found = np.percentile(np.asarray(values, dtype=np.float64), qs)
    return tuple(round(float(v), 3) for v in found)


def vacuum(engine: Engine) -> None:
    """Rewrite the database so deleted rows leave no copy behind: SQLite keeps them in free pages and the WAL until
    ``VACUUM`` and a truncating checkpoint, PostgreSQL in dead tuples until ``VACUUM`` (run outside a transaction)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.exec_driver_sql("VACUUM")
        if engine.dialect.name == "sqlite":
            db.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def store_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets its folder created, WAL, NORMAL sync and a busy timeout."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError for a malformed URL
        raise StoreError(f"not a database URL: {url!r} ({exc})") from exc
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30.0})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine
