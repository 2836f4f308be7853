"""Tampering with an audit database the way an attacker with write access would (raw SQL on the SQLite file), and
counting what :meth:`rag.security.audit.AuditTrail.verify` detects. Shared by the unit tests and bench/security.py.
"""

from __future__ import annotations

import sqlite3
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.security.audit import AuditTrail

TEXT_COLUMNS = ("actor", "action", "outcome", "body", "prev_hash", "hash")


@dataclass(frozen=True)
class TamperReport:
    """How many tampered states were tried and how many ``verify`` flagged at the right record."""

    cases: int
    detected: int


def fill(audit: AuditTrail, n: int) -> None:
    """``n`` varied records (actions, actors, outcomes, details with lists, None and non-ASCII text)."""
    for i in range(n):
        audit.append(
            ["keys.create", "auth.failed", "stack.promote", "query"][i % 4],
            actor=f"user{i % 3}",
            outcome="ok" if i % 2 else "denied",
            target=f"t{i}",
            detail={"n": i, "doc_ids": [f"doc-{i}", "shared é"], "note": None},
        )


def _other(ch: str) -> str:
    """A different character of the same kind, so the row stays well-formed text."""
    pool = string.hexdigits.lower() if ch in string.hexdigits.lower() else string.ascii_letters + string.digits
    return next(c for c in pool if c != ch)


def _flagged(audit: AuditTrail, seq: int) -> bool:
    result = audit.verify()
    return not result.ok and result.broken_seq == seq


def byte_changes(audit: AuditTrail, path: Path, sample: Sequence[int]) -> TamperReport:
    """Change each character of every text column (and the number and time) of the ``sample`` records, one at a
    time, restoring each before the next."""
    cases = detected = 0
    with sqlite3.connect(path, isolation_level=None) as db:
        for seq in sample:
            row = db.execute(f"SELECT {', '.join(TEXT_COLUMNS)} FROM audit_log WHERE seq = ?", (seq,)).fetchone()
            for column, original in zip(TEXT_COLUMNS, row, strict=True):
                for i, ch in enumerate(original):
                    changed = original[:i] + _other(ch) + original[i + 1 :]
                    db.execute(f"UPDATE audit_log SET {column} = ? WHERE seq = ?", (changed, seq))
                    cases += 1
                    detected += _flagged(audit, seq)
                    db.execute(f"UPDATE audit_log SET {column} = ? WHERE seq = ?", (original, seq))
            for column, delta in (("seq", 100), ("at", 1.0)):
                db.execute(f"UPDATE audit_log SET {column} = {column} + ? WHERE seq = ?", (delta, seq))
                cases += 1
                detected += _flagged(audit, seq)
                restore = seq + 100 if column == "seq" else seq
                db.execute(f"UPDATE audit_log SET {column} = {column} - ? WHERE seq = ?", (delta, restore))
    return TamperReport(cases, detected)


def deletions(audit: AuditTrail, path: Path, seqs: Sequence[int]) -> TamperReport:
    """Delete each record of ``seqs`` in turn (put back afterwards)."""
    cases = detected = 0
    with sqlite3.connect(path, isolation_level=None) as db:
        for seq in seqs:
            row = db.execute("SELECT * FROM audit_log WHERE seq = ?", (seq,)).fetchone()
            db.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
            cases += 1
            detected += _flagged(audit, seq)
            db.execute(f"INSERT INTO audit_log VALUES ({', '.join('?' * len(row))})", row)
    return TamperReport(cases, detected)


def swaps(audit: AuditTrail, path: Path, pairs: Sequence[tuple[int, int]]) -> TamperReport:
    """Swap the contents of each pair of records (their numbers stay in place), then swap them back."""
    cases = detected = 0
    with sqlite3.connect(path, isolation_level=None) as db:
        for a, b in pairs:
            _swap(db, a, b)
            cases += 1
            detected += _flagged(audit, min(a, b))
            _swap(db, a, b)
    return TamperReport(cases, detected)


def _swap(db: sqlite3.Connection, a: int, b: int) -> None:
    db.execute("UPDATE audit_log SET seq = -1 WHERE seq = ?", (a,))
    db.execute("UPDATE audit_log SET seq = ? WHERE seq = ?", (a, b))
    db.execute("UPDATE audit_log SET seq = ? WHERE seq = -1", (b,))
