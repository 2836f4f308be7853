"""`ragops` as a user runs it: a real process, JSON on stdout, clear errors and exit codes, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.settings import Settings
from tests.fixtures.files import write_bad_inputs, write_sample_docs

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REQUIRED_KEYS = {
    "documents_seen",
    "documents_new",
    "documents_changed",
    "documents_unchanged",
    "documents_deleted",
    "documents_failed",
    "chunks_upserted",
    "chunks_deleted",
    "embeddings_computed",
    "points_total",
    "seconds",
}


def ragops(settings: Settings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "RAGOPS_HOME": str(settings.home), "RAGOPS_CACHE": str(settings.cache_dir), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=full_env, timeout=600
    )


def test_ingest_json_contract_and_incremental_rerun(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "docs"
    write_sample_docs(source)
    first = ragops(settings, "ingest", str(source), "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data.keys() >= REQUIRED_KEYS
    assert data["documents_new"] == 5 and data["embeddings_computed"] == data["chunks_upserted"] > 0
    second = json.loads(ragops(settings, "ingest", str(source), "--json").stdout)
    assert second["embeddings_computed"] == 0 and second["documents_unchanged"] == 5
    status = json.loads(ragops(settings, "index", "status", "--json").stdout)
    assert status["current"]["points"] == data["points_total"]
    assert status["current"]["embedder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_failure_threshold_exits_3_and_keeps_the_quarantine(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "bad"
    write_bad_inputs(source)
    result = ragops(settings, "ingest", str(source), "--json")
    assert result.returncode == 3
    assert "nothing was published" in result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)  # the summary is printed although the run failed
    assert summary["published"] is False and summary["index_version"] is None
    assert summary["documents_failed"] == len(summary["quarantined"]) >= 5
    assert {"reason", "source"} <= summary["quarantined"][0].keys()
    listed = json.loads(ragops(settings, "quarantine", "--json").stdout)
    assert {r["doc_id"] for r in listed} >= {"empty.txt", "junk.txt", "corrupt.pdf", "encrypted.pdf", "notes.xyz"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ingest", "/nonexistent/folder"], 1, "does not exist"),
        (["ingest"], 2, "Missing argument"),
        (["ingest", "--bogus", "x"], 2, "No such option"),
    ],
)
def test_bad_invocations_get_clear_errors(settings: Settings, args: list[str], code: int, message: str) -> None:
    result = ragops(settings, *args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_is_reported_not_raised(settings: Settings) -> None:
    result = ragops(settings, "index", "status", env={"RAGOPS_CHUNKING__CHUNK_SIZE": "not-a-number"})
    assert result.returncode == 1
    assert "RAGOPS_CHUNKING__CHUNK_SIZE" in result.stderr or "chunk_size" in result.stderr
    assert "Traceback" not in result.stderr
