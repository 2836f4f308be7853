"""The audit trail: append-only records, each hash-chained to the one before it.

A record's ``body`` is canonical JSON (sorted keys, no spaces) of its number, time, actor, action, outcome, target
and details plus the previous record's hash; its ``hash`` is SHA-256 over the previous hash and that exact body
text. The columns that queries filter on (time, actor, action, outcome) are copies checked against the body.
:meth:`AuditTrail.verify` walks the chain from the first record and names the first one that does not hold: a
changed byte anywhere in a row breaks its hash or its link, a deleted record leaves a gap in the numbers, swapped
records break the links, and the head row (last number and hash) catches records cut off the end.

The chain makes tampering evident, not impossible: whoever can write the database can rewrite the whole chain.
Ship the head hash elsewhere (``ragops audit verify --json`` prints it) to pin it.

Appends from several processes are serialised by a compare-and-swap on the head row, so SQLite and PostgreSQL run
the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from rag.security.db import audit_head, audit_log
from rag.security.errors import AuditError

if TYPE_CHECKING:
    from sqlalchemy import Engine, RowMapping

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
"""The previous hash of the first record."""

DetailValue = str | int | float | bool | None | Sequence[str]


@dataclass(frozen=True)
class AuditRecord:
    """One entry of the trail."""

    seq: int
    at: float
    actor: str
    action: str
    outcome: str
    target: str | None
    detail: Mapping[str, DetailValue]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, object]:
        """The ``--json`` shape."""
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
            "target": self.target,
            "detail": dict(self.detail),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Verification:
    """What :meth:`AuditTrail.verify` found: ``broken_seq`` is the first record that does not hold (None: intact)."""

    ok: bool
    records: int
    head_hash: str
    broken_seq: int | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        """The ``--json`` shape."""
        return {
            "ok": self.ok,
            "records": self.records,
            "head_hash": self.head_hash,
            "broken_seq": self.broken_seq,
            "reason": self.reason,
        }


def canonical(payload: Mapping[str, object]) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: str) -> str:
    """SHA-256 over the previous hash and the record's body."""
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


class AuditTrail:
    """Append to, read and verify the trail in the security database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def append(
        self,
        action: str,
        *,
        actor: str,
        outcome: str = "ok",
        target: str | None = None,
        detail: Mapping[str, DetailValue] | None = None,
        at: float | None = None,
    ) -> AuditRecord:
        """Add one record at the end of the chain (retried when another writer appended meanwhile)."""
        extra = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in (detail or {}).items()}
        last_error: Exception | None = None
        for attempt in range(50):
            try:
                return self._append_once(action, actor, outcome, target, extra, at)
            except (IntegrityError, OperationalError, _Raced) as exc:
                last_error = exc
                time.sleep(min(0.002 * (attempt + 1), 0.05))
        raise AuditError(f"could not append to the audit trail: {last_error}")

    def _append_once(
        self,
        action: str,
        actor: str,
        outcome: str,
        target: str | None,
        detail: Mapping[str, DetailValue],
        at: float | None,
    ) -> AuditRecord:
        with self._engine.begin() as conn:
            head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).first()
            seq, prev = (int(head[0]) + 1, str(head[1])) if head else (1, GENESIS)
            when = round(time.time() if at is None else at, 6)
            body = canonical(
                {
                    "seq": seq,
                    "at": when,
                    "actor": actor,
                    "action": action,
                    "outcome": outcome,
                    "target": target,
                    "detail": detail,
                    "prev": prev,
                }
            )
            digest = chain_hash(prev, body)
            if head is None:
                conn.execute(insert(audit_head).values(id=1, seq=seq, hash=digest))
            else:
                moved = conn.execute(
                    update(audit_head)
                    .where(audit_head.c.id == 1, audit_head.c.seq == seq - 1, audit_head.c.hash == prev)
                    .values(seq=seq, hash=digest)
                )
                if moved.rowcount != 1:
                    raise _Raced()
            conn.execute(
                insert(audit_log).values(
                    seq=seq,
                    at=when,
                    actor=actor,
                    action=action,
                    outcome=outcome,
                    body=body,
                    prev_hash=prev,
                    hash=digest,
                )
            )
        return AuditRecord(seq, when, actor, action, outcome, target, detail, prev, digest)

    def records(
        self, *, since: float | None = None, actor: str | None = None, limit: int | None = None
    ) -> list[AuditRecord]:
        """Records in chain order, optionally from ``since`` (epoch seconds) and of one ``actor``."""
        query = select(audit_log).order_by(audit_log.c.seq)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        if actor is not None:
            query = query.where(audit_log.c.actor == actor)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        out = []
        for row in rows:
            body = json.loads(row["body"])
            out.append(
                AuditRecord(
                    seq=int(row["seq"]),
                    at=float(row["at"]),
                    actor=str(row["actor"]),
                    action=str(row["action"]),
                    outcome=str(row["outcome"]),
                    target=body.get("target"),
                    detail=body.get("detail") or {},
                    prev_hash=str(row["prev_hash"]),
                    hash=str(row["hash"]),
                )
            )
        return out

    def verify(self) -> Verification:
        """Walk the whole chain; the first record that does not hold is named (see the module docstring)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings().all()
            head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).first()
        prev = GENESIS
        expected = 1
        for row in rows:
            problem = _check_row(row, expected, prev)
            if problem is not None:
                return Verification(False, len(rows), prev, broken_seq=expected, reason=problem)
            prev = str(row["hash"])
            expected += 1
        last = expected - 1
        if head is None:
            if rows:
                return Verification(False, len(rows), prev, broken_seq=last, reason="the head row is missing")
            return Verification(True, 0, GENESIS)
        if int(head[0]) != last or str(head[1]) != prev:
            return Verification(
                False,
                len(rows),
                prev,
                broken_seq=last + 1,
                reason=f"the head names record {int(head[0])} but the chain ends at record {last}: "
                "records were removed from the end or the head was changed",
            )
        return Verification(True, len(rows), prev)


class _Raced(Exception):
    """Another writer moved the head between our read and our update."""


def _check_row(row: RowMapping, expected: int, prev: str) -> str | None:
    """Why record ``expected`` (this row) breaks the chain, or None when it holds."""
    if row["seq"] != expected:
        return f"record {expected} is missing (found record {row['seq']} in its place)"
    body_text = row["body"]
    if not isinstance(body_text, str):
        return "its body is not text"
    if chain_hash(prev, body_text) != row["hash"]:
        if row["prev_hash"] != prev:
            return "it does not link to the record before it (deleted, reordered or changed)"
        return "its hash does not match its content (changed)"
    try:
        body = json.loads(body_text)
    except ValueError:
        return "its body is not JSON"
    if not isinstance(body, dict) or canonical(body) != body_text:
        return "its body is not canonical JSON"
    for column in ("seq", "at", "actor", "action", "outcome"):
        if body.get(column) != row[column]:
            return f"its {column} column differs from its hashed body"
    if body.get("prev") != prev or row["prev_hash"] != prev:
        return "it does not link to the record before it"
    return None
