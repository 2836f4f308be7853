"""User feedback on answers, kept with the request it judges: the labelled data retraining learns from.

A thumbs-up says the cited chunks answer the question (each ``(question, chunk text)`` is a positive pair); a
thumbs-down says they do not (each is a hard negative: retrieval ranked it high, a person rejected it). So a rating
alone is useless: the store keeps, with every rating, a snapshot of what was judged (the question, the answer, the
cited chunks *with their text*, the stack and index versions). Chunk texts are copied rather than referenced
because the index moves on (re-ingestion replaces chunks, old versions are garbage-collected) while the pairs must
stay trainable.

Storage is SQLite under ``$RAGOPS_HOME/feedback/feedback.db`` in WAL mode (the service writes while a retraining
job reads) with ``synchronous=FULL``: feedback arrives at human rates, so paying an fsync per rating for
durability across a power cut costs nothing that matters. One rating per request: feedback given again on the same
request replaces the earlier one (a user who changes their mind), and the result says so.

Usage example::

    store = FeedbackStore(settings)
    result = store.record(snapshot, "up", comment="exactly right")
    result.replaced                      # False the first time, True when this request was rated before
    store.list(limit=20)                 # newest first, each with its request snapshot
    store.training_pairs()               # [FeedbackPair(question, chunk_id, doc_id, text, "positive", request_id)]
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rag.errors import BadQuery, RagError

if TYPE_CHECKING:
    from rag.settings import RagSettings

Rating = Literal["up", "down"]
Label = Literal["positive", "negative"]

MAX_COMMENT_CHARS = 2000
SCHEMA_VERSION = 1
DB_NAME = "feedback.db"
_ID_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    request_id    TEXT PRIMARY KEY,
    rating        TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    comment       TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    revisions     INTEGER NOT NULL DEFAULT 1,
    question      TEXT NOT NULL,
    answer        TEXT NOT NULL,
    abstained     INTEGER NOT NULL,
    stack_version INTEGER NOT NULL,
    stack_name    TEXT NOT NULL,
    index_version INTEGER NOT NULL,
    requested_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_update ON feedback (updated_at);
CREATE TABLE IF NOT EXISTS cited_chunks (
    request_id TEXT NOT NULL REFERENCES feedback (request_id) ON DELETE CASCADE,
    n          INTEGER NOT NULL,
    chunk_id   TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    title      TEXT NOT NULL,
    source     TEXT NOT NULL,
    text       TEXT,
    PRIMARY KEY (request_id, n)
);
"""


class FeedbackError(RagError):
    """Feedback cannot be recorded as given."""


class UnknownRequest(FeedbackError, LookupError):
    """Feedback names a request id the service never answered (or no longer remembers)."""


def normalise_rating(value: object) -> Rating:
    """``"up"``/``"down"``, also given as ``1``/``-1``; anything else (including ``true``) is BadQuery.

    Booleans are refused although ``True == 1`` in Python: a client sending ``true`` has a bug, not an opinion.
    """
    if value in ("up", "down") and isinstance(value, str):
        return "up" if value == "up" else "down"
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, -1):
        return "up" if value == 1 else "down"
    shown = repr(value)
    if len(shown) > 40:  # never echo a huge body back
        shown = shown[:40] + "…"
    raise BadQuery(f'rating must be "up" or "down" (or 1 / -1), got {shown}')


def clean_comment(comment: str | None) -> str | None:
    """The stripped comment (None when empty); BadQuery when too long or not encodable as UTF-8."""
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise BadQuery(f"comment must be a string, got {type(comment).__name__}")
    text = comment.strip()
    if len(text) > MAX_COMMENT_CHARS:
        raise BadQuery(f"comment has {len(text)} characters; the limit is {MAX_COMMENT_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadQuery(f"comment contains characters that are not valid Unicode text (at {exc.start})") from exc
    return text or None


@dataclass(frozen=True)
class CitedChunk:
    """One chunk an answer cited, as it was when the answer was given. ``text`` is None only for old log records
    that predate chunk texts in the request log and whose chunk is no longer in the index."""

    n: int
    chunk_id: str
    doc_id: str
    title: str
    source: str
    text: str | None

    def to_json(self) -> dict[str, Any]:
        """The request log's per-citation record."""
        return {
            "n": self.n,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "title": self.title,
            "source": self.source,
            "text": self.text,
        }


@dataclass(frozen=True)
class RequestSnapshot:
    """What an answered request was: enough to turn a rating of it into training pairs without the index."""

    request_id: str
    at: float
    question: str
    answer: str
    abstained: bool
    stack_version: int
    stack_name: str
    index_version: int
    citations: tuple[CitedChunk, ...]

    def to_json(self) -> dict[str, Any]:
        """The fields the request log records (the log adds principal, filters and notice)."""
        return {
            "request_id": self.request_id,
            "at": self.at,
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "stack_version": self.stack_version,
            "stack_name": self.stack_name,
            "index_version": self.index_version,
            "citations": [c.to_json() for c in self.citations],
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RequestSnapshot:
        """From a request log line; tolerates lines written before citations carried n, title, source and text.

        Raises:
            ValueError: The record lacks a field feedback cannot do without (question, versions).
        """
        try:
            citations = tuple(
                CitedChunk(
                    n=int(c.get("n") or i),
                    chunk_id=str(c["chunk_id"]),
                    doc_id=str(c["doc_id"]),
                    title=str(c.get("title") or ""),
                    source=str(c.get("source") or ""),
                    text=c["text"] if isinstance(c.get("text"), str) else None,
                )
                for i, c in enumerate(record.get("citations") or (), start=1)
            )
            return cls(
                request_id=str(record["request_id"]),
                at=float(record["at"]),
                question=str(record["question"]),
                answer=str(record.get("answer") or ""),
                abstained=bool(record.get("abstained")),
                stack_version=int(record["stack_version"]),
                stack_name=str(record.get("stack_name") or ""),
                index_version=int(record["index_version"]),
                citations=citations,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a request record: {exc!r}") from exc


@dataclass(frozen=True)
class FeedbackRecord:
    """One stored rating with the request it judges. ``revisions`` counts how often it was given (1 = never
    replaced); ``created_at`` is the first rating, ``updated_at`` the one that stands."""

    request_id: str
    rating: Rating
    comment: str | None
    created_at: float
    updated_at: float
    revisions: int
    request: RequestSnapshot


@dataclass(frozen=True)
class Recorded:
    """What :meth:`FeedbackStore.record` did: ``replaced`` is True when an earlier rating was overwritten."""

    record: FeedbackRecord
    replaced: bool
    previous_rating: Rating | None


@dataclass(frozen=True)
class FeedbackPair:
    """A labelled (question, passage) pair for retraining the embedder or a reranker.

    ``positive``: a person said the answer citing this chunk was helpful. ``negative``: they said it was not; the
    chunk was ranked high enough to be cited, so it is a *hard* negative. The same pair can appear with both labels
    (two users disagreeing); the consumer decides how to weigh that.
    """

    question: str
    chunk_id: str
    doc_id: str
    text: str
    label: Label
    request_id: str


class FeedbackStore:
    """Ratings of answered requests in SQLite (``settings.feedback_dir / "feedback.db"``).

    Thread- and process-safe: every call opens its own short-lived connection, and writes take SQLite's write lock
    up front (``BEGIN IMMEDIATE``) so that "was this request rated before?" and the write are one step.
    """

    def __init__(self, settings: RagSettings, *, path: Path | None = None) -> None:
        self.path = path or settings.feedback_dir / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise FeedbackError(
                    f"{self.path} has feedback schema version {version}; this release reads up to {SCHEMA_VERSION}"
                )
            db.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the database file
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def record(
        self, request: RequestSnapshot, rating: object, comment: str | None = None, *, now: float | None = None
    ) -> Recorded:
        """Store (or replace) the rating of ``request``.

        Raises:
            BadQuery: The rating is not up/down (1/-1) or the comment is too long or not valid text.
        """
        value = normalise_rating(rating)
        text = clean_comment(comment)
        at = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute("SELECT rating FROM feedback WHERE request_id = ?", (request.request_id,)).fetchone()
            previous: Rating | None = normalise_rating(row[0]) if row else None
            db.execute(
                """
                INSERT INTO feedback (request_id, rating, comment, created_at, updated_at, revisions, question,
                                      answer, abstained, stack_version, stack_name, index_version, requested_at)
                VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (request_id) DO UPDATE SET
                    rating = excluded.rating,
                    comment = excluded.comment,
                    updated_at = excluded.updated_at,
                    revisions = feedback.revisions + 1
                """,
                (
                    request.request_id,
                    value,
                    text,
                    at,
                    at,
                    request.question,
                    request.answer,
                    int(request.abstained),
                    request.stack_version,
                    request.stack_name,
                    request.index_version,
                    request.at,
                ),
            )
            # The snapshot of a request never changes; a replacement only fills in texts an earlier one lacked.
            db.executemany(
                """
                INSERT INTO cited_chunks (request_id, n, chunk_id, doc_id, title, source, text)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (request_id, n) DO UPDATE SET text = coalesce(cited_chunks.text, excluded.text)
                """,
                [(request.request_id, c.n, c.chunk_id, c.doc_id, c.title, c.source, c.text) for c in request.citations],
            )
            stored = self._load(db, [request.request_id])[0]
        return Recorded(record=stored, replaced=previous is not None, previous_rating=previous)

    def get(self, request_id: str) -> FeedbackRecord | None:
        """The rating of one request, if it has one."""
        with self._connect() as db:
            found = self._load(db, [request_id])
        return found[0] if found else None

    def list(self, limit: int = 100) -> builtins.list[FeedbackRecord]:
        """The most recently given ratings first (a replaced rating counts as given when it was replaced)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise BadQuery(f"limit must be a positive integer, got {limit!r}")
        with self._connect() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT request_id FROM feedback ORDER BY updated_at DESC, request_id LIMIT ?", (limit,)
                )
            ]
            return self._load(db, ids)

    def erase(self, doc_ids: Collection[str], request_ids: Collection[str] = ()) -> int:
        """Delete the ratings of ``request_ids`` and of every answer that cited one of ``doc_ids`` (its cited chunks
        hold their text), then compact the file so nothing deleted survives in free pages or the WAL. Returns how
        many ratings went (training pairs are built from these rows, so they go with them)."""
        docs, requests = sorted(set(doc_ids)), set(request_ids)
        with self._connect() as db:
            for start in range(0, len(docs), 500):
                part = docs[start : start + 500]
                marks = ",".join("?" * len(part))
                rows = db.execute(f"SELECT DISTINCT request_id FROM cited_chunks WHERE doc_id IN ({marks})", part)
                requests.update(str(r[0]) for r in rows)
        doomed = sorted(requests)
        deleted = 0
        with self._transaction() as db:
            for start in range(0, len(doomed), 500):
                part = doomed[start : start + 500]
                marks = ",".join("?" * len(part))
                deleted += db.execute(f"DELETE FROM feedback WHERE request_id IN ({marks})", part).rowcount
        if deleted:
            with self._connect() as db:
                db.execute("VACUUM")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def count(self) -> int:
        """Requests rated so far."""
        with self._connect() as db:
            return int(db.execute("SELECT count(*) FROM feedback").fetchone()[0])

    def training_pairs(self) -> builtins.list[FeedbackPair]:
        """Every (question, cited chunk text) pair with its label, oldest rating first, in citation order.

        Abstentions cite nothing and give no pairs; a cited chunk whose text is unknown (see :class:`CitedChunk`)
        is skipped, since a pair without a passage cannot be trained on.
        """
        with self._connect() as db:
            rows = db.execute(
                """
                SELECT f.question, c.chunk_id, c.doc_id, c.text, f.rating, f.request_id
                FROM feedback AS f JOIN cited_chunks AS c ON c.request_id = f.request_id
                WHERE c.text IS NOT NULL AND c.text != ''
                ORDER BY f.created_at, f.request_id, c.n
                """
            ).fetchall()
        return [
            FeedbackPair(
                question=question,
                chunk_id=chunk_id,
                doc_id=doc_id,
                text=text,
                label="positive" if rating == "up" else "negative",
                request_id=request_id,
            )
            for question, chunk_id, doc_id, text, rating, request_id in rows
        ]

    @staticmethod
    def _load(db: sqlite3.Connection, request_ids: builtins.list[str]) -> builtins.list[FeedbackRecord]:
        """Records for ``request_ids``, in that order (missing ids are left out)."""
        rows: dict[str, sqlite3.Row] = {}
        cited: dict[str, builtins.list[CitedChunk]] = {}
        for start in range(0, len(request_ids), _ID_BATCH):  # bound the number of SQL parameters
            batch = request_ids[start : start + _ID_BATCH]
            marks = ",".join("?" * len(batch))
            for row in db.execute(f"SELECT * FROM feedback WHERE request_id IN ({marks})", batch):
                rows[row["request_id"]] = row
            for c in db.execute(f"SELECT * FROM cited_chunks WHERE request_id IN ({marks}) ORDER BY n", batch):
                cited.setdefault(c["request_id"], []).append(
                    CitedChunk(c["n"], c["chunk_id"], c["doc_id"], c["title"], c["source"], c["text"])
                )
        out = []
        for request_id in request_ids:
            row = rows.get(request_id)
            if row is None:
                continue
            snapshot = RequestSnapshot(
                request_id=request_id,
                at=row["requested_at"],
                question=row["question"],
                answer=row["answer"],
                abstained=bool(row["abstained"]),
                stack_version=row["stack_version"],
                stack_name=row["stack_name"],
                index_version=row["index_version"],
                citations=tuple(cited.get(request_id, ())),
            )
            out.append(
                FeedbackRecord(
                    request_id=request_id,
                    rating=normalise_rating(row["rating"]),
                    comment=row["comment"],
                    created_at=row["created_at"],
                    updated_at=row["updated_at"],
                    revisions=row["revisions"],
                    request=snapshot,
                )
            )
        return out
