"""Erasure: remove a document, a source or a tenant from everything ragops keeps, and record that it was done.

A document's text reaches many places once it is served: the index (every version kept for rollback), answers
cached from it, request records and their cited chunks, ratings and the training pairs built from them, MLflow
traces of served requests and of evaluation examples, and the per-example tables of evaluations. This module walks
them in that order (the index first, so nothing can retrieve the text while the rest is cleaned), each store
removing what it holds through its own API and then compacting itself so no deleted copy survives in free pages,
WAL files or segments. The audit trail gets one record naming *what* was erased and the counts, never the text;
a tombstone (:mod:`pipelines.erasure`) keeps the next ingestion from reading it back from its source folder.

Why it lives in ``evaluation``: it is the lowest layer that sees every store (the index from ``pipelines``, the
request store, feedback and cache from ``rag``, the evaluation runs and traces in MLflow).

Not erased, by design, and reported instead: source files outside ``RAGOPS_HOME`` (the user's own), and embedder
weights fine-tuned while the text was in the corpus (a model is not a copy of its training text; retrain to be
rid of its influence).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from pipelines.erasure import ErasureTarget, FileErasure, add_tombstone, erase_files
from pipelines.index import IndexErasure, VectorIndex
from pipelines.tracking import configure_mlflow
from rag.monitoring.tracing import REQUEST_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from evaluation.settings import EvaluationSettings

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "examples.json"
ARTIFACT_LOCATION_TAG = "mlflow.artifactLocation"
"""Where MLflow keeps a trace's span file (``mlflow.utils.mlflow_tags.MLFLOW_ARTIFACT_LOCATION``)."""
_ID_EDGE = r"[A-Za-z0-9_./:\-]"


@dataclass(frozen=True)
class ErasureReport:
    """What one erasure removed, store by store (``ragops erase --json``)."""

    target: ErasureTarget
    index: IndexErasure
    files: FileErasure
    requests: int
    ratings: int
    cache_entries: int | None
    """Cached answers deleted from Redis; None when the cache is per process (emptied by the new index version)."""
    traces: int
    example_tables: int
    mlflow_compacted: bool
    """Whether MLflow's SQLite file was compacted (a server or PostgreSQL store compacts on its own schedule)."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        data = asdict(self)
        data["target"] = asdict(self.target)
        data["index"] = self.index.to_json()
        return data


def erase(settings: EvaluationSettings, target: ErasureTarget, *, actor: str) -> ErasureReport:
    """Erase what ``target`` names everywhere (see the module docstring) and audit it as ``actor``."""
    add_tombstone(settings, target)  # first: an ingestion running meanwhile must not bring it back
    index = VectorIndex(settings, collection=target.collection).erase(target)
    doc_ids = set(index.doc_ids)
    files = erase_files(settings, target, index.sources)
    request_ids = _erase_requests(settings, doc_ids, target)
    from rag.feedback import FeedbackStore

    ratings = FeedbackStore(settings).erase(doc_ids, request_ids)
    cache = _erase_cache(settings, doc_ids)
    traces, tables, compacted = _erase_mlflow(settings, doc_ids, set(request_ids))
    report = ErasureReport(
        target=target,
        index=index,
        files=files,
        requests=len(request_ids),
        ratings=ratings,
        cache_entries=cache,
        traces=traces,
        example_tables=tables,
        mlflow_compacted=compacted,
    )
    from rag.security.gate import record_action

    record_action(
        settings,
        "erase",
        actor=actor,
        target=f"{target.collection}/{target.kind}:{target.value}",
        detail={
            "documents": len(doc_ids),
            "points": index.points_removed,
            "requests": report.requests,
            "ratings": ratings,
            "traces": traces,
            "example_tables": tables,
        },
    )
    logger.info(
        "erased",
        extra={"target": target.describe(), "collection": target.collection, "documents": len(doc_ids)},
    )
    return report


def _erase_requests(settings: EvaluationSettings, doc_ids: set[str], target: ErasureTarget) -> tuple[str, ...]:
    from rag.store.store import RequestStore

    tenant = target.value if target.kind == "tenant" else None
    store = RequestStore(settings.store.resolve_url(settings.home), retention_days=None, purge_interval_s=None)
    try:
        return store.erase(doc_ids, tenant=tenant)
    finally:
        store.close()


def _erase_cache(settings: EvaluationSettings, doc_ids: set[str]) -> int | None:
    url = settings.answer_cache.url
    if url is None:
        return None
    from rag.cache_redis import erase_cached, redis_client

    client = redis_client(url, timeout_s=settings.answer_cache.timeout_s)
    try:
        return erase_cached(client, doc_ids)
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------------ MLflow
def _erase_mlflow(settings: EvaluationSettings, doc_ids: set[str], request_ids: set[str]) -> tuple[int, int, bool]:
    if not doc_ids and not request_ids:
        return 0, 0, False
    mlflow = configure_mlflow(settings)
    client = mlflow.MlflowClient()
    mentions = _mentions(doc_ids)
    traces = tables = 0
    for experiment in client.search_experiments():
        doomed = [
            t.info
            for t in _traces(client, experiment.experiment_id)
            if t.info.tags.get(REQUEST_TAG) in request_ids or (mentions is not None and mentions.search(t.to_json()))
        ]
        for start in range(0, len(doomed), 100):
            part = doomed[start : start + 100]
            traces += client.delete_traces(experiment.experiment_id, trace_ids=[i.trace_id for i in part])
            for info in part:
                _remove_local_artifacts(info.tags.get(ARTIFACT_LOCATION_TAG))
        if mentions is not None:
            tables += _redact_examples(client, experiment.experiment_id, mentions, doc_ids)
    return traces, tables, _compact_sqlite(settings.mlflow_tracking_uri)


def _remove_local_artifacts(location: str | None) -> None:
    """Deleting a trace drops its rows but not its span file in the artifact store; a local one is removed here
    (a remote store's files follow the store's own lifecycle rules)."""
    if not location:
        return
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        logger.warning("trace artifacts left in a remote store", extra={"location": location})
        return
    folder = Path(url2pathname(parsed.path))
    if folder.is_dir():
        shutil.rmtree(folder)


def _mentions(doc_ids: Collection[str]) -> re.Pattern[str] | None:
    """A document id as a whole token (``a.md`` must not match inside ``data.md``)."""
    if not doc_ids:
        return None
    alternatives = "|".join(re.escape(d) for d in sorted(doc_ids, key=len, reverse=True))
    return re.compile(rf"(?<!{_ID_EDGE})(?:{alternatives})(?!{_ID_EDGE})")


def _traces(client: MlflowClient, experiment_id: str) -> Iterator[Any]:
    token: str | None = None
    while True:
        page = client.search_traces(locations=[experiment_id], max_results=200, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _redact_examples(client: MlflowClient, experiment_id: str, mentions: re.Pattern[str], doc_ids: set[str]) -> int:
    """Blank the answers of evaluation examples that retrieved or cited an erased document and drop its id from
    their lists, rewriting each run's ``examples.json`` in place; returns how many tables changed."""
    changed = 0
    for run in client.search_runs([experiment_id], max_results=10_000):
        run_id = run.info.run_id
        if not any(a.path == EXAMPLES_FILE for a in client.list_artifacts(run_id)):
            continue
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(client.download_artifacts(run_id, EXAMPLES_FILE, scratch))
            table = json.loads(path.read_text(encoding="utf-8"))
            columns = list(table.get("columns", []))
            rows = [list(r) for r in table.get("data", [])]
            touched = False
            for row in rows:
                if not any(isinstance(v, str) and mentions.search(v) for v in row):
                    continue
                touched = True
                for i, name in enumerate(columns):
                    if name in ("top_docs", "cited_docs") and isinstance(row[i], str):
                        row[i] = ",".join(d for d in row[i].split(",") if d and d not in doc_ids)
                    elif name == "answer":
                        row[i] = "[erased]"
            if not touched:
                continue
            path.write_text(json.dumps({**table, "data": rows}), encoding="utf-8")
            client.log_artifact(run_id, str(path))
            changed += 1
    return changed


def _compact_sqlite(tracking_uri: str) -> bool:
    """VACUUM MLflow's SQLite file (deleted traces otherwise stay in its free pages and WAL)."""
    if not tracking_uri.startswith("sqlite:///"):
        return False
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if not path.is_file():
        return False
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return True
