"""The audit chain: every single-byte change of a sample of records, deletions and reorderings are detected, and
``verify`` names the first broken record. Tampering is raw SQL on the real SQLite file (tests/security/tamper.py),
as an attacker with database access would do it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.settings import Settings
from rag.security.audit import AuditTrail
from rag.security.db import open_engine
from tests.security.tamper import byte_changes, deletions, fill, swaps

N = 8


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[tuple[AuditTrail, Path]]:
    path = tmp_path / "audit.db"
    engine = open_engine(f"sqlite:///{path}")
    audit = AuditTrail(engine)
    fill(audit, N)
    yield audit, path
    engine.dispose()


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
    report = byte_changes(audit, path, (1, N // 2, N))
    assert report.cases > 1000 and report.detected == report.cases, report
    assert audit.verify().ok  # every change was put back


def test_every_deleted_record_is_detected_and_named(trail: tuple[AuditTrail, Path]) -> None:
    audit, path = trail
    report = deletions(audit, path, range(1, N + 1))
    assert report.cases == N and report.detected == N, report
    assert audit.verify().ok


def test_reordered_records_are_detected(trail: tuple[AuditTrail, Path]) -> None:
    audit, path = trail
    report = swaps(audit, path, [(1, 2), (3, 6), (N - 1, N), (1, N)])
    assert report.cases == 4 and report.detected == 4, report
    assert audit.verify().ok


def test_records_cut_off_the_end_with_the_head_rewritten_to_match_shorten_the_chain(
    trail: tuple[AuditTrail, Path],
) -> None:
    audit, path = trail
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("DELETE FROM audit_log WHERE seq > 5")
    assert audit.verify().broken_seq == 6
    with sqlite3.connect(path, isolation_level=None) as db:  # fixing the head too only shortens the chain:
        last = db.execute("SELECT hash FROM audit_log WHERE seq = 5").fetchone()[0]  # pin the head elsewhere
        db.execute("UPDATE audit_head SET seq = 5, hash = ?", (last,))
    assert audit.verify().ok and audit.verify().head_hash == last


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
