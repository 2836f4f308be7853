"""Shared helpers of the benchmarks: BEIR folders, nDCG@k, timing, machine facts.

Nothing here imports a heavy library (torch, llama-index, qdrant-client): a benchmark calls
``pipelines.env.apply_offline_env`` first and imports those afterwards.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"

Qrels = dict[str, dict[str, int]]


# ------------------------------------------------------------------------------------------------------ BEIR
def corpus_file(folder: Path) -> Path:
    """``corpus.jsonl`` or ``corpus.jsonl.gz`` of a BEIR folder."""
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} holds no corpus.jsonl or corpus.jsonl.gz")


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL or JSONL.gz file (blank lines skipped)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def load_corpus(folder: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` corpus records (all when None), as ``{"_id", "title", "text"}`` dicts."""
    out: list[dict[str, Any]] = []
    for record in iter_jsonl(corpus_file(folder)):
        if limit is not None and len(out) >= limit:
            break
        out.append(record)
    return out


def load_queries(folder: Path) -> dict[str, str]:
    """Query id -> text."""
    return {str(r["_id"]): str(r["text"]) for r in iter_jsonl(folder / "queries.jsonl")}


def load_qrels(path: Path) -> Qrels:
    """``query-id<TAB>corpus-id<TAB>score`` with a header line -> {query: {doc: score}}."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for row in reader:
            if not row or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def write_subset(source: Path, target: Path, limit: int) -> int:
    """Write a BEIR folder holding the first ``limit`` documents of ``source`` (qrels restricted to them).

    Returns:
        The number of documents written.
    """
    docs = load_corpus(source, limit)
    target.mkdir(parents=True, exist_ok=True)
    with (target / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
    (target / "queries.jsonl").write_bytes((source / "queries.jsonl").read_bytes())
    kept = {str(d["_id"]) for d in docs}
    qrels_dir = target / "qrels"
    qrels_dir.mkdir(exist_ok=True)
    for split in sorted((source / "qrels").glob("*.tsv")):
        qrels = load_qrels(split)
        with (qrels_dir / split.name).open("w", encoding="utf-8") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for query_id, rels in qrels.items():
                for doc_id, score in rels.items():
                    if doc_id in kept:
                        handle.write(f"{query_id}\t{doc_id}\t{score}\n")
    return len(docs)


# ------------------------------------------------------------------------------------------------- metrics
def docs_from_chunk_hits(hits: Iterable[tuple[str, float]]) -> list[str]:
    """Rank documents by their best chunk: ``(doc_id, score)`` chunk hits -> doc ids, best first.

    A document's score is the maximum over its chunks; ties keep the order of the hits.
    """
    best: dict[str, float] = {}
    for doc_id, score in hits:
        if doc_id not in best or score > best[doc_id]:
            best[doc_id] = score
    return sorted(best, key=lambda d: -best[d])


def mean_ndcg(run: Mapping[str, Sequence[str]], qrels: Qrels, k: int = 10) -> float:
    """Mean nDCG@k of ranked document ids, computed by the evaluation package (ir-measures/pytrec_eval).

    The same implementation the evaluation gate and ``bench/eval.py`` use; a query missing from ``run`` scores 0.
    """
    from evaluation.metrics import retrieval_metrics

    if not qrels:
        return float("nan")
    ranked = {q: [(doc, 0.0) for doc in docs] for q, docs in run.items()}
    return retrieval_metrics(qrels, ranked, metrics=(f"ndcg@{k}",)).mean(f"ndcg@{k}") or 0.0


# ------------------------------------------------------------------------------------------- timing, machine
@contextmanager
def stopwatch(label: str, into: dict[str, float]) -> Iterator[None]:
    """Record the wall time of the block in ``into[label]`` and log it."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[label] = time.perf_counter() - start
        logger.info("%s took %.2f s", label, into[label])


@contextmanager
def contention(label: str, into: dict[str, dict[str, float]]) -> Iterator[None]:
    """Record how much CPU this process got during the block, to read timings on a shared machine.

    ``into[label]`` gets the wall seconds, this process's CPU seconds (all threads), the share of the machine's
    cores it used (``cpu_seconds / wall / cores``; near 1.0 means it had the machine to itself while busy) and the
    1-minute load average when the block started.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    load = load_average()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - wall
        used = time.process_time() - cpu
        cores = os.cpu_count() or 1
        into[label] = {
            "wall_seconds": round(elapsed, 2),
            "cpu_seconds": round(used, 2),
            "core_share": round(used / elapsed / cores, 3) if elapsed > 0 else 0.0,
            "load1_at_start": load[0] if load else float("nan"),
        }


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide which kernels are fast (bf16 needs avx512_bf16 or AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")}


def cpu_model() -> str:
    """The CPU model name (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def rounded(value: float | None, digits: int = 3) -> float | None:
    """Round for the JSON report (None and NaN stay None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, digits)


def run_measured(prefix: str, measure: Callable[[Path], Mapping[str, object]], out_path: Path | None) -> int:
    """Run ``measure`` in a fresh temporary folder (removed after), with the CPU and load before and after, and
    print the JSON (also written to ``out_path``): the shape every ``bench/`` script's stdout has."""
    import shutil
    import sys
    import tempfile

    temp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        out: dict[str, object] = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "load_before": load_average()}
        out.update(measure(temp))
        out["load_after"] = load_average()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    text = json.dumps(out, indent=2)
    sys.stdout.write(text + "\n")
    if out_path is not None:
        out_path.write_text(text + "\n", encoding="utf-8")
    return 0


def demo_platform(home: Path, *, name: str, reload_interval_s: float = 5.0) -> tuple[Any, Any, Any, int]:
    """The demo corpus ingested into ``home`` and a dense extractive stack over it registered and promoted:
    (settings, registry, the stack's config, its version). The corpus is written beside ``home``."""
    from flows.settings import Settings
    from pipelines.demo import build_demo_corpus
    from pipelines.env import apply_offline_env
    from pipelines.index import VectorIndex
    from pipelines.ingest import run_ingest
    from rag.stack import StackRegistry
    from rag.types import StackConfig

    base = Settings(home=home)
    service = base.service.model_copy(update={"reload_interval_s": reload_interval_s})
    settings = base.model_copy(update={"service": service})
    apply_offline_env(settings)
    settings.ensure_dirs()
    corpus = home.parent / "corpus"
    build_demo_corpus(corpus)
    run_ingest(settings, corpus)
    current = VectorIndex(settings).current()
    assert current is not None
    registry = StackRegistry(settings)
    config = StackConfig.for_index(current, name=name)
    version = registry.register(config, description=f"bench: {name}")
    registry.promote(version, actor="bench", reason="benchmark")
    return settings, registry, config, version
