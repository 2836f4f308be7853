"""The audit chain: every single-byte change of a sample of records, deletions and reorderings are detected, and
``verify`` names the first broken record. Tampering is done with raw SQL on the real SQLite file, as an attacker
with database access would."""

from __future__ import annotations

import sqlite3
import string
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.settings import Settings
from rag.security.audit import AuditTrail
from rag.security.db import open_engine

TEXT_COLUMNS = ("actor", "action", "outcome", "body", "prev_hash", "hash")
N = 8


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[tuple[AuditTrail, Path]]:
    path = tmp_path / "audit.db"
    engine = open_engine(f"sqlite:///{path}")
    audit = AuditTrail(engine)
    for i in range(N):
        audit.append(
            ["keys.create", "auth.failed", "stack.promote", "query"][i % 4],
            actor=f"user{i % 3}",
            outcome="ok" if i % 2 else "denied",
            target=f"t{i}",
            detail={"n": i, "doc_ids": [f"doc-{i}", "shared é"], "note": None},
        )
    yield audit, path
    engine.dispose()


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _other(ch: str) -> str:
    """A different character of the same kind, so the row stays well-formed text."""
    pool = string.hexdigits.lower() if ch in string.hexdigits.lower() else string.ascii_letters + string.digits
    return next(c for c in pool if c != ch)


def test_an_untouched_chain_verifies(trail: tuple[AuditTrail, Path]) -> None:
    audit, _ = trail
    result = audit.verify()
    assert result.ok and result.records == N and result.broken_seq is None
    records = audit.records()
    assert [r.seq for r in records] == list(range(1, N + 1))
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))
    assert records[3].detail == {"n": 3, "doc_ids": ["doc-3", "shared é"], "note": None}
    assert [r.seq for r in audit.records(actor="user1")] == [2, 5, 8]


def test_every_single_byte_change_of_sampled_records_is_detected(trail: tuple[AuditTrail, Path]) -> None:
    """Each character of every text column of the first, a middle and the last record, changed one at a time."""
    audit, path = trail
    cases = detected = 0
    with _db(path) as db:
        for seq in (1, N // 2, N):
            row = db.execute(f"SELECT {', '.join(TEXT_COLUMNS)} FROM audit_log WHERE seq = ?", (seq,)).fetchone()
            for column, original in zip(TEXT_COLUMNS, row, strict=True):
                for i, ch in enumerate(original):
                    changed = original[:i] + _other(ch) + original[i + 1 :]
                    db.execute(f"UPDATE audit_log SET {column} = ? WHERE seq = ?", (changed, seq))
                    result = audit.verify()
                    cases += 1
                    detected += (not result.ok) and result.broken_seq == seq
                    db.execute(f"UPDATE audit_log SET {column} = ? WHERE seq = ?", (original, seq))
            for column, delta in (("seq", 100), ("at", 1.0)):
                db.execute(f"UPDATE audit_log SET {column} = {column} + ? WHERE seq = ?", (delta, seq))
                result = audit.verify()
                cases += 1
                detected += (not result.ok) and result.broken_seq == seq
                restore = seq + 100 if column == "seq" else seq
                db.execute(f"UPDATE audit_log SET {column} = {column} - ? WHERE seq = ?", (delta, restore))
    assert audit.verify().ok
    assert cases > 1000 and detected == cases, (detected, cases)


@pytest.mark.parametrize("seq", [1, 4, N])
def test_a_deleted_record_is_detected_and_named(trail: tuple[AuditTrail, Path], seq: int) -> None:
    audit, path = trail
    with _db(path) as db:
        db.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
    result = audit.verify()
    assert not result.ok and result.broken_seq == seq, result


def test_records_cut_off_the_end_with_the_head_rewritten_to_match_are_detected(
    trail: tuple[AuditTrail, Path],
) -> None:
    audit, path = trail
    with _db(path) as db:
        db.execute("DELETE FROM audit_log WHERE seq > 5")
    assert audit.verify().broken_seq == 6
    with _db(path) as db:  # an attacker who also fixes the head can only shorten the chain: pin the head elsewhere
        last = db.execute("SELECT hash FROM audit_log WHERE seq = 5").fetchone()[0]
        db.execute("UPDATE audit_head SET seq = 5, hash = ?", (last,))
    assert audit.verify().ok and audit.verify().head_hash == last


@pytest.mark.parametrize(("a", "b"), [(1, 2), (3, 6), (N - 1, N)])
def test_reordered_records_are_detected(trail: tuple[AuditTrail, Path], a: int, b: int) -> None:
    audit, path = trail
    with _db(path) as db:  # swap the contents of two rows (their numbers stay in place)
        db.execute("UPDATE audit_log SET seq = -1 WHERE seq = ?", (a,))
        db.execute("UPDATE audit_log SET seq = ? WHERE seq = ?", (a, b))
        db.execute("UPDATE audit_log SET seq = ? WHERE seq = -1", (b,))
    result = audit.verify()
    assert not result.ok and result.broken_seq == a, result


def test_concurrent_appends_from_two_writers_keep_one_chain(settings: Settings) -> None:
    url = settings.security.resolve_db_url(settings.home)
    engines = [open_engine(url), open_engine(url)]
    trails = [AuditTrail(e) for e in engines]

    def write(t: AuditTrail, who: str) -> None:
        for i in range(25):
            t.append("query", actor=who, detail={"i": i})

    threads = [threading.Thread(target=write, args=(t, f"w{n}")) for n, t in enumerate(trails)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = trails[0].verify()
    assert result.ok and result.records == 50, result
    for engine in engines:
        engine.dispose()
