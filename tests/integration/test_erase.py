"""`ragops erase`: a document's text leaves every store, every kept index version and every file under RAGOPS_HOME.

The stores are the real ones (embedded Qdrant, the SQLite request store and feedback, MLflow on SQLite with traces
written by the service's exporter and an evaluation's examples table, Redis for the shared answer cache). The proof
is a byte grep over every file under ``RAGOPS_HOME`` for a sentence only the erased document holds: it must be found
before the erasure (so the grep can fail) and nowhere after it, while another tenant's document stays whole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.settings import Settings
from pipelines.index import VectorIndex
from pipelines.ingest import run_ingest
from rag.cache import CachedAnswer
from rag.cache_redis import RedisAnswerCache, redis_client
from rag.feedback import CitedChunk, FeedbackStore, RequestSnapshot
from rag.monitoring.tracing import TraceExporter, TracingSettings
from rag.security.gate import Gate
from rag.store.records import RequestRecord
from rag.store.store import RequestStore
from rag.types import Answer, RetrievedChunk

pytestmark = pytest.mark.slow

SECRET = "Ferdinand Quillby earns 48,213 euros and lives at 7 Larkspur Lane"
KEPT = "The beta canteen serves lentil soup every Thursday"
ERASED_ID = "acme:people/quillby.md"


def _corpus(root: Path) -> tuple[Path, Path]:
    acme, beta = root / "acme", root / "beta"
    (acme / "people").mkdir(parents=True)
    beta.mkdir(parents=True)
    (acme / "people" / "quillby.md").write_text(f"# Staff record\n\n{SECRET}. He joined in 2019.\n")
    (acme / "policy.md").write_text("# Expense policy\n\nHotels cost at most 120 euros per night.\n")
    (beta / "canteen.md").write_text(f"# Canteen\n\n{KEPT}. Coffee is free.\n")
    return acme, beta


def _files_with(home: Path, needle: str) -> list[str]:
    data = needle.encode()
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and data in p.read_bytes())


def _served(settings: Settings, request_id: str, doc_id: str, text: str, tenant: str) -> RequestRecord:
    """What the service records for an answer citing ``doc_id`` (the cited chunk with its text)."""
    return RequestRecord(
        request_id=request_id,
        at=time.time(),
        principal=f"{tenant}/app",
        tenant=tenant,
        question="What does the record say?",
        answer=text,
        stack_name="rag-stack",
        stack_version=1,
        index_version=2,
        citations=(CitedChunk(1, f"{doc_id}#0", doc_id, "t", "s", text),),
    )


def _seed_stores(settings: Settings, redis_url: str) -> None:
    records = [
        _served(settings, "r-secret", ERASED_ID, SECRET, "acme"),
        _served(settings, "r-kept", "beta:canteen.md", KEPT, "beta"),
    ]
    with RequestStore(settings.store.resolve_url(settings.home)) as store:
        for record in records:
            store.record(record)
    feedback = FeedbackStore(settings)
    for record in records:
        snapshot = RequestSnapshot(
            request_id=record.request_id,
            at=record.at,
            question=record.question,
            answer=record.answer,
            abstained=False,
            stack_version=1,
            stack_name="rag-stack",
            index_version=2,
            citations=tuple(record.citations),
        )
        feedback.record(snapshot, "up")
    exporter = TraceExporter(settings, TracingSettings(sample_rate=1.0))
    for record in records:
        exporter.submit(record)
    exporter.close(timeout_s=60)
    assert exporter.exported == 2
    import pandas as pd

    from pipelines.tracking import configure_mlflow, ensure_experiment

    mlflow = configure_mlflow(settings)
    with mlflow.start_run(experiment_id=ensure_experiment(settings, "evaluation"), run_name="eval"):
        rows = [
            {"id": "q1", "answer": SECRET, "top_docs": f"{ERASED_ID},acme:policy.md", "cited_docs": ERASED_ID},
            {"id": "q2", "answer": KEPT, "top_docs": "beta:canteen.md", "cited_docs": "beta:canteen.md"},
        ]
        mlflow.log_table(pd.DataFrame(rows), artifact_file="examples.json")
    cache = RedisAnswerCache(
        redis_client(redis_url, timeout_s=1.0), namespace="erase-test:1:2", threshold=0.9, ttl_s=600, max_entries=10
    )
    for n, (doc_id, text) in enumerate(((ERASED_ID, SECRET), ("beta:canteen.md", KEPT))):
        chunk = RetrievedChunk(f"{doc_id}#0", doc_id, "t", "s", 0, text, 1.0)
        answer = Answer(text=text, citations=(), abstained=False, support=1.0)
        cache.put(f"scope{n}", text, np.ones(4, dtype=np.float32), CachedAnswer(text, answer, (chunk,), time.time()))


def test_erase_a_document_leaves_no_trace_in_home_or_stores(
    settings: Settings, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme, beta = _corpus(tmp_path / "sources")
    run_ingest(settings, acme, tenant="acme")
    run_ingest(settings, beta, tenant="beta")  # a second version: the first one is kept for rollback
    index = VectorIndex(settings)
    assert index.versions() == [1, 2]
    _seed_stores(settings, redis_url)
    home = settings.home
    before = _files_with(home, SECRET)
    assert any("qdrant" in f for f in before) and any(f.endswith(".db") for f in before), before

    monkeypatch.setenv("RAGOPS_ANSWER_CACHE__URL", redis_url)
    result = CliRunner().invoke(app, ["erase", "--doc", ERASED_ID, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["index"]["doc_ids"] == [ERASED_ID]
    assert report["index"]["versions_rewritten"] == [1, 2] and report["index"]["published"] == 3
    assert (report["requests"], report["ratings"], report["traces"], report["example_tables"]) == (1, 1, 1, 1)
    assert report["cache_entries"] == 1 and report["mlflow_compacted"] is True
    assert report["files"]["outside_home"] == [str((acme / "people" / "quillby.md").resolve())]

    assert _files_with(home, SECRET) == []
    assert _files_with(home, KEPT), "the other tenant's text must survive"
    for version in index.versions():
        manifest = index.manifest(version)
        assert manifest is not None and ERASED_ID not in manifest.docs
        with index.reader(version) as reader:
            assert all((p.payload or {}).get("doc_id") != ERASED_ID for p in reader.scroll())
    with index.reader() as reader:
        assert {(p.payload or {}).get("doc_id") for p in reader.scroll()} == {"acme:policy.md", "beta:canteen.md"}
    with RequestStore(settings.store.resolve_url(home)) as store:
        assert store.get("r-secret") is None and store.get("r-kept") is not None
    assert [p.request_id for p in FeedbackStore(settings).list()] == ["r-kept"]

    gate = Gate(settings)
    try:
        audit = [r for r in gate.audit.records() if r.action == "erase"]
    finally:
        gate.close()
    assert len(audit) == 1 and audit[0].target == f"docs/doc:{ERASED_ID}" and SECRET not in json.dumps(audit[0].detail)

    # The source file is still in the user's folder: the next ingestion must not bring it back.
    again = run_ingest(settings, acme, tenant="acme")
    current = index.manifest()
    assert again.documents_new == 0 and current is not None and ERASED_ID not in current.docs
    assert _files_with(home, SECRET) == []

    # A whole tenant: its documents and every request its users made.
    result = CliRunner().invoke(app, ["erase", "--tenant", "beta", "--yes"])
    assert result.exit_code == 0, result.output
    assert "erased 1 document(s)" in result.stdout
    assert _files_with(home, KEPT) == []
    with RequestStore(settings.store.resolve_url(home)) as store:
        assert store.get("r-kept") is None
    with index.reader() as reader:
        assert {(p.payload or {}).get("doc_id") for p in reader.scroll()} == {"acme:policy.md"}


def test_erase_names_exactly_one_thing(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["erase", "--doc", "a", "--tenant", "b", "--yes"])
    assert result.exit_code == 1 and "exactly one" in result.output
    result = CliRunner().invoke(app, ["erase", "--tenant", "no spaces allowed", "--yes"])
    assert result.exit_code == 1 and "tenant" in result.output and "Traceback" not in result.output
