"""The request store against a real database: migrations, the background writer, reads, feedback, retention.

Every test runs on each backend in ``BACKENDS``: SQLite, and a real PostgreSQL (the session's server from
``tests/fixtures/datastores.py``; each test gets a database of its own, created by ``store_url`` below).
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from flows.settings import Settings
from rag.errors import BadQuery, StoreError
from rag.feedback import CitedChunk, UnknownRequest
from rag.store import RequestRecord, RequestStore, StoreSettings
from rag.store.migrate import current_revision, head_revision
from rag.store.tables import METADATA, VERSION_TABLE

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL per test."""
    if request.param == "postgres":
        return fresh_postgres_database(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'home' / 'requests.db'}"


def fresh_postgres_database(url: str) -> str:
    """A new empty database on the server of ``url``; returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = f"store_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname="postgres", autocommit=True
    ) as connection:
        connection.execute(f"CREATE DATABASE {name}")  # a generated name: no quoting needed
    return parsed.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def store(store_url: str) -> Iterator[RequestStore]:
    s = RequestStore(store_url)
    yield s
    s.close()


def make(n: int, at: float, **changes: object) -> RequestRecord:
    fields: dict[str, object] = {
        "request_id": f"{n:032x}",
        "at": at,
        "principal": "alice",
        "tenant": "acme",
        "question": f"question {n}?",
        "answer": f"answer {n} [1]",
        "stack_name": "default",
        "stack_version": 3,
        "index_version": 2,
        "timings_ms": {"retrieve": 4.5, "answer": 1.0, "total": 6.0},
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "cost_usd": 0.001,
        "verdicts": {"injection": "pass"},
        "citations": (
            CitedChunk(1, "c-1", "d-1", "Warranty", "warranty.md", "The warranty lasts two years."),
            CitedChunk(2, "c-2", "d-1", "Warranty", "warranty.md", None),
        ),
    }
    fields.update(changes)
    return RequestRecord(**fields)  # type: ignore[arg-type]


class TestSchema:
    def test_open_migrates_an_empty_database_to_head(self, store: RequestStore, store_url: str) -> None:
        engine = create_engine(store_url)
        try:
            assert current_revision(engine) == head_revision() == store.revision
            columns = {c["name"] for c in inspect(engine).get_columns("requests")}
            assert columns == {c.name for c in METADATA.tables["requests"].columns}
            assert "requests_window" in {i["name"] for i in inspect(engine).get_indexes("requests")}
            assert VERSION_TABLE in inspect(engine).get_table_names()
        finally:
            engine.dispose()

    def test_reopening_keeps_the_records(self, store_url: str) -> None:
        with RequestStore(store_url) as first:
            first.record(make(1, 100.0))
        with RequestStore(store_url) as second:
            assert second.get(make(1, 0).request_id) is not None

    def test_a_schema_from_a_newer_release_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "requests.db"
        RequestStore(f"sqlite:///{path}").close()
        with sqlite3.connect(path) as db:
            db.execute(f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
        with pytest.raises(StoreError, match="9999.*newer ragops"):
            RequestStore(f"sqlite:///{path}")

    def test_sqlite_runs_in_wal_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "requests.db"
        RequestStore(f"sqlite:///{path}").close()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_a_malformed_url_is_a_store_error(self) -> None:
        with pytest.raises(StoreError, match="not a database URL"):
            RequestStore("no scheme at all")

    def test_workers_starting_together_migrate_once(self, tmp_path: Path) -> None:
        # Several service workers open the same new database at the same moment.
        url = f"sqlite:///{tmp_path / 'requests.db'}"
        code = f"from rag.store import RequestStore; RequestStore({url!r}).close()"
        procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(3)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
        with RequestStore(url) as store:
            assert store.count() == 0


class TestWrites:
    def test_a_record_reads_back_whole(self, store: RequestStore) -> None:
        original = make(7, 1000.5)
        assert store.record(original)
        store.flush()
        stored = store.get(original.request_id)
        assert stored == original  # every field, citations with their texts (and a missing text) included
        assert stored is not original
        assert stored.cited_doc_ids == ("d-1",)
        assert stored.to_snapshot() is not None and stored.to_snapshot().citations == original.citations  # type: ignore[union-attr]

    def test_a_record_is_visible_before_the_writer_writes_it(self, store: RequestStore) -> None:
        record = make(1, 5.0)
        store.record(record)
        assert store.get(record.request_id) == record  # feedback can arrive within milliseconds

    def test_close_writes_everything_queued(self, store_url: str) -> None:
        store = RequestStore(store_url)
        for n in range(2000):
            store.record(make(n, float(n)))
        store.close()
        with RequestStore(store_url) as reopened:
            assert reopened.count() == 2000
        assert store.stats().written == 2000 and store.stats().dropped == 0

    def test_a_full_queue_drops_and_counts_instead_of_blocking(self, store_url: str) -> None:
        store = RequestStore(store_url, queue_size=1)
        started = time.perf_counter()
        accepted = sum(store.record(make(n, float(n))) for n in range(500))
        elapsed = time.perf_counter() - started
        store.close()
        stats = store.stats()
        assert elapsed < 0.5  # never waits for the database
        assert stats.dropped == 500 - accepted > 0
        assert stats.written == accepted

    def test_the_writer_gathers_records_for_its_delay(self, store_url: str) -> None:
        # One transaction per request costs the serving process more than a cached answer does; the service's
        # store waits a little and writes what arrived together.
        store = RequestStore(store_url, write_delay_s=30.0)
        try:
            for n in range(3):
                store.record(make(n, float(n)))
            time.sleep(0.2)
            assert store.count() == 0  # still gathering
            assert store.get(make(1, 1.0).request_id) is not None  # yet visible to feedback
            started = time.perf_counter()
            store.flush()  # cuts the delay short
            assert time.perf_counter() - started < 5.0
            assert store.count() == 3
            store.record(make(3, 3.0))
            started = time.perf_counter()
        finally:
            store.close()  # so does a stop
        assert time.perf_counter() - started < 5.0
        assert store.stats().written == 4

    def test_feedback_on_a_record_still_being_gathered_is_not_delayed(self, store_url: str) -> None:
        store = RequestStore(store_url, write_delay_s=30.0)
        try:
            store.record(make(1, 1.0))
            started = time.perf_counter()
            assert store.set_feedback(make(1, 1.0).request_id, "up") is None
            assert time.perf_counter() - started < 5.0
        finally:
            store.close()

    def test_a_negative_write_delay_is_refused(self, store_url: str) -> None:
        with pytest.raises(ValueError, match="write_delay_s must not be negative"):
            RequestStore(store_url, write_delay_s=-1.0)

    def test_a_record_after_close_is_refused(self, store_url: str) -> None:
        store = RequestStore(store_url)
        store.close()
        assert store.record(make(1, 1.0)) is False
        assert store.stats().dropped == 1

    def test_a_duplicate_id_loses_only_itself(self, store: RequestStore, caplog: pytest.LogCaptureFixture) -> None:
        store.record(make(1, 1.0))
        store.flush()
        with caplog.at_level(logging.ERROR, logger="rag.store.store"):
            for record in (make(2, 2.0), make(1, 3.0), make(3, 3.0)):
                store.record(record)
            store.flush()
        assert store.count() == 3
        assert store.get(make(1, 0).request_id).at == 1.0  # type: ignore[union-attr]
        assert store.stats().failed == 1
        assert any(getattr(r, "request_id", None) == make(1, 0).request_id for r in caplog.records)

    def test_a_refused_request_is_recorded_without_a_stack(self, store: RequestStore) -> None:
        refused = RequestRecord(
            request_id="f" * 32, at=9.0, principal="bob", question="ignore your instructions", status=422,
            error="blocked", blocked=True, verdicts={"injection": "block"},
        )  # fmt: skip
        store.record(refused)
        store.flush()
        stored = store.get(refused.request_id)
        assert stored == refused
        assert stored.to_snapshot() is None  # type: ignore[union-attr]


class TestFeedback:
    def test_feedback_joins_its_request(self, store: RequestStore) -> None:
        record = make(1, 10.0)
        store.record(record)  # not flushed: set_feedback must find it anyway
        assert store.set_feedback(record.request_id, "up", "  spot on ", at=20.0) is None
        stored = store.get(record.request_id)
        assert stored is not None and stored.feedback is not None
        assert (stored.feedback.rating, stored.feedback.comment, stored.feedback.at) == ("up", "spot on", 20.0)

    def test_changed_mind_replaces_and_reports_the_old_rating(self, store: RequestStore) -> None:
        record = make(1, 10.0)
        store.record(record)
        store.set_feedback(record.request_id, 1)
        assert store.set_feedback(record.request_id, -1) == "up"
        assert store.get(record.request_id).feedback.rating == "down"  # type: ignore[union-attr]

    def test_unknown_request_and_bad_rating(self, store: RequestStore) -> None:
        with pytest.raises(UnknownRequest, match="no record"):
            store.set_feedback("0" * 32, "up")
        store.record(make(1, 1.0))
        with pytest.raises(BadQuery, match="rating"):
            store.set_feedback(make(1, 0).request_id, True)


class TestWindow:
    def test_aggregates_only_the_window(self, store: RequestStore) -> None:
        store.record(make(1, 99.0))  # before
        store.record(make(2, 100.0, abstained=True))
        store.record(make(3, 150.0, status=503, error="retrieval_error", timings_ms={"total": 30.0}))
        store.record(make(4, 199.9, blocked=True, status=422, cost_usd=0.5))
        store.record(make(5, 200.0))  # the end is excluded
        store.flush()
        store.set_feedback(make(2, 0).request_id, "down")
        store.set_feedback(make(3, 0).request_id, "up")
        store.set_feedback(make(5, 0).request_id, "up")
        stats = store.window(100.0, 200.0)
        assert (stats.requests, stats.errors, stats.abstained, stats.blocked) == (3, 1, 1, 1)
        assert (stats.prompt_tokens, stats.completion_tokens) == (300, 30)
        assert stats.cost_usd == pytest.approx(0.502)
        assert (stats.feedback_up, stats.feedback_down, stats.thumbs_down_share) == (1, 1, 0.5)
        assert stats.mean_total_ms == pytest.approx((6.0 + 30.0 + 6.0) / 3)
        assert stats.error_share == pytest.approx(1 / 3)
        assert (stats.guardrail_triggered, stats.guardrail_trigger_share) == (1, pytest.approx(1 / 3))  # the block
        assert (stats.p50_ms, stats.p99_ms) == (6.0, pytest.approx(29.52))
        assert [r.request_id for r in store.rows(100.0, 200.0)] == [make(n, 0).request_id for n in (2, 3, 4)]

    def test_an_empty_window(self, store: RequestStore) -> None:
        stats = store.window(0.0, 10.0)
        assert (stats.requests, stats.cost_usd, stats.mean_total_ms, stats.error_share) == (0, 0.0, None, 0.0)
        assert (stats.p50_ms, stats.p95_ms, stats.guardrail_trigger_share) == (None, None, 0.0)

    def test_a_redaction_counts_as_a_guardrail_trigger(self, store: RequestStore) -> None:
        store.record(make(1, 10.0, verdicts={"injection": "allow", "pii_input": "redact"}))
        store.record(make(2, 11.0, verdicts={"injection": "allow"}))
        store.flush()
        assert store.window(0.0, 20.0).guardrail_triggered == 1

    def test_a_database_at_the_first_revision_is_upgraded_in_place(self, store_url: str) -> None:
        from alembic import command

        from rag.store.migrate import alembic_config

        if store_url.startswith("sqlite:///"):
            Path(store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(store_url)
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
            connection.execute(METADATA.tables["requests"].insert().values(
                **{k: v for k, v in make(1, 5.0).to_row().items() if k not in ("guardrail_triggered", "routing")}
            ))  # fmt: skip
        engine.dispose()
        with RequestStore(store_url) as store:
            assert store.revision == head_revision() == "0004"
            assert store.window(0.0, 10.0).requests == 1 and store.get(make(1, 0).request_id) is not None

    def test_a_backwards_window_is_refused(self, store: RequestStore) -> None:
        with pytest.raises(BadQuery, match="before it starts"):
            store.window(10.0, 5.0)


class TestRetention:
    def test_purge_deletes_only_older_records(self, store: RequestStore) -> None:
        for n in range(25):
            store.record(make(n, float(n)))
        store.flush()
        store.set_feedback(make(3, 0).request_id, "up")
        assert store.purge(10.0) == 10
        assert store.count() == 15
        assert store.get(make(3, 0).request_id) is None  # the feedback went with its request
        assert store.get(make(10, 0).request_id) is not None

    def test_purge_in_slices_deletes_everything_due(self, store: RequestStore, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("rag.store.store.PURGE_SLICE", 7)
        for n in range(30):
            store.record(make(n, float(n)))
        store.flush()
        assert store.purge(100.0) == 30
        assert store.count() == 0

    def test_retention_days_applies_to_now(self, store_url: str) -> None:
        now = 100 * 86400.0
        with RequestStore(store_url, retention_days=30, purge_interval_s=None) as store:
            store.record(make(1, now - 31 * 86400.0))
            store.record(make(2, now - 29 * 86400.0))
            store.flush()
            assert store.purge_expired(now) == 1
            assert store.get(make(2, 0).request_id) is not None

    def test_the_writer_applies_retention_by_itself(self, store_url: str) -> None:
        with RequestStore(store_url) as writer:
            writer.record(make(1, time.time() - 3 * 86400.0))
            writer.record(make(2, time.time()))
        with RequestStore(store_url, retention_days=2, purge_interval_s=0.05) as store:
            deadline = time.monotonic() + 10
            while store.count() != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.get(make(1, 0).request_id) is None
            assert store.get(make(2, 0).request_id) is not None

    def test_the_service_store_follows_the_retention_setting(
        self, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from rag.service.app import open_request_store

        with open_request_store(settings) as writer:  # the default: 90 days
            assert writer.retention_days == 90.0
            assert writer.write_delay_s == settings.store.write_delay_s > 0  # the service gathers its writes
            writer.record(make(1, time.time() - 3 * 86400.0))
            writer.record(make(2, time.time()))
        monkeypatch.setenv("RAGOPS_STORE__RETENTION_DAYS", "2")
        with open_request_store(Settings()) as store:  # the writer purges right after opening
            deadline = time.monotonic() + 10
            while store.count() != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.get(make(1, 0).request_id) is None and store.get(make(2, 0).request_id) is not None

    def test_no_retention_keeps_everything(self, store_url: str) -> None:
        with RequestStore(store_url, retention_days=None) as store:
            store.record(make(1, 0.0))
            store.flush()
            assert store.purge_expired() == 0


class TestSettings:
    def test_default_is_sqlite_under_home(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("RAGOPS_STORE__URL", raising=False)
        assert StoreSettings().resolve_url(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'requests.db'}"

    def test_environment(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RAGOPS_STORE__URL", "postgresql+psycopg://ragops@db/ragops")
        monkeypatch.setenv("RAGOPS_STORE__RETENTION_DAYS", "7")
        monkeypatch.setenv("RAGOPS_STORE__WRITE_DELAY_S", "0")
        settings = StoreSettings()
        assert settings.resolve_url(tmp_path) == "postgresql+psycopg://ragops@db/ragops"
        assert settings.retention_days == 7
        assert settings.write_delay_s == 0

    def test_a_url_without_scheme_is_refused(self) -> None:
        with pytest.raises(ValueError, match="not a database URL"):
            StoreSettings(url="/var/lib/requests.db")


def test_a_record_the_driver_rejects_does_not_stop_the_writer(store: RequestStore) -> None:
    store.record(make(1, 1.0, question="a lone surrogate \udc00"))  # the driver cannot encode it
    store.record(make(2, 2.0))
    store.flush()
    store.record(make(3, 3.0))  # written: the writer is still running
    store.flush()
    assert store.get(make(1, 0).request_id) is None
    assert store.get(make(2, 0).request_id) is not None  # its batch neighbour is written alone
    assert store.get(make(3, 0).request_id) is not None
    assert store.stats().failed == 1


def test_the_record_stage_stores_unencodable_text_replaced() -> None:
    from rag.stages.record import MAX_STORED_CHARS, storable

    assert storable("bad \udc00 text") == "bad ? text"
    assert storable(None) == "" and len(storable("x" * (MAX_STORED_CHARS + 5))) == MAX_STORED_CHARS


def test_the_spend_ledger_groups_by_tenant_key_and_stack_and_by_day(store: RequestStore) -> None:
    day = 20_000 * 86_400.0  # a UTC midnight
    records = [
        make(1, day + 10, principal="key:a", tenant="acme", prompt_tokens=100, completion_tokens=10, cost_usd=0.5),
        make(2, day + 86_399.5, principal="key:a", tenant="acme", prompt_tokens=50, completion_tokens=5, cost_usd=0.25),
        make(3, day + 86_400.0, principal="key:b", tenant="beta", stack_version=4, cost_usd=1.0),
        make(4, day + 90_000, principal="operator", tenant=None, prompt_tokens=7, completion_tokens=0, cost_usd=0.0),
        make(5, day + 10 * 86_400, principal="key:a", tenant="acme", cost_usd=9.0),  # outside the window
    ]
    for r in records:
        store.record(r)
    store.flush()
    window = (day, day + 2 * 86_400)
    by_tenant = {r.group: r for r in store.spend("tenant", *window)}
    assert set(by_tenant) == {"acme", "beta", "(none)"}
    acme = by_tenant["acme"]
    assert (acme.requests, acme.prompt_tokens, acme.completion_tokens) == (2, 150, 15)
    assert acme.cost_usd == pytest.approx(0.75)
    assert [r.group for r in store.spend("tenant", *window)][0] == "beta"  # most expensive first
    assert {r.group: r.requests for r in store.spend("key", *window)} == {"key:a": 2, "key:b": 1, "operator": 1}
    assert {r.group: r.requests for r in store.spend("stack", *window)} == {"default v3": 3, "default v4": 1}
    inside = [r for r in records if window[0] <= r.at < window[1]]
    assert sum(r.total_tokens for r in store.spend("key", *window)) == sum(
        r.prompt_tokens + r.completion_tokens for r in inside
    )
    daily = {(d.tenant, d.day - 20_000): (d.requests, round(d.cost_usd, 6)) for d in store.daily_spend(*window)}
    # 86,399.5 s is still the first day, 86,400 s the second: the boundary floors on either database
    assert daily == {("acme", 0): (2, 0.75), ("beta", 1): (1, 1.0), ("(none)", 1): (1, 0.0)}


def test_a_postgresql_restart_loses_no_record_and_refuses_feedback_with_a_retry() -> None:
    """Records that arrive while the database is down wait in the queue and land once it is back; a rating of a
    record still waiting is refused as "unavailable" (503 with Retry-After at the service), never a 500."""
    from sqlalchemy.exc import OperationalError

    from rag.errors import StoreUnavailable
    from rag.service.errors import error_kind
    from tests.fixtures.datastores import PostgresServer

    with PostgresServer.start() as server:
        store = RequestStore(server.url, purge_interval_s=None)
        try:
            now = time.time()
            store.record(make(1, now))
            store.flush()
            server.stop()
            for n in range(2, 12):
                assert store.record(make(n, now))
            deadline = time.monotonic() + 10
            while store.unavailable_since is None and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(StoreUnavailable, match="unavailable"):
                store.set_feedback(make(5, now).request_id, "up")
            server.restart()
            store.flush()
            assert store.count() == 11, "every record queued during the outage landed"
            assert store.set_feedback(make(5, now).request_id, "down") is None
            assert store.get(make(5, now).request_id).feedback.rating == "down"  # type: ignore[union-attr]
        finally:
            store.close()
    assert error_kind(StoreUnavailable("down")) == (503, "store_unavailable")
    assert error_kind(OperationalError("SELECT 1", {}, Exception("connection refused"))) == (503, "store_unavailable")
