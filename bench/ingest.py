"""Ingestion benchmark: ragops end to end against the encode floor and a naive llama-index pipeline, plus quality.

Usage::

    .venv/bin/python bench/ingest.py [--data DIR] [--limit N] [--out FILE]

Prints one JSON object to stdout (everything else goes to stderr). ``DIR`` is a BEIR folder (``corpus.jsonl[.gz]``,
``queries.jsonl``, ``qrels/test.tsv``); the default is ``<repo>/../shared/datasets/scifact``. All state lives in a
temporary ``RAGOPS_HOME`` removed at the end; ``RAGOPS_*`` variables of the calling shell are ignored so the run
measures the default settings. Steps, in this order and in one process (see bench/README.md for every key):

a. encode floor: ragops's own chunk texts through plain float32 sentence-transformers at batch sizes 8/16/32/64;
b. naive llama-index: ``VectorStoreIndex.from_documents`` with HuggingFaceEmbedding and an on-disk local Qdrant;
c. ``run_ingest`` with default settings;
d. ``run_ingest`` again over the unchanged source;
e. dense nDCG@10 on the test qrels: ragops's default embedder over its index, and the float32 floor vectors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _common import (
    DEFAULT_SCIFACT,
    contention,
    cpu_flags,
    cpu_model,
    docs_from_chunk_hits,
    load_average,
    load_corpus,
    load_qrels,
    load_queries,
    mean_ndcg,
    rounded,
    stopwatch,
    write_subset,
)

from flows.settings import Settings
from pipelines.env import apply_offline_env

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from qdrant_client import QdrantClient
    from rich.progress import Progress as RichProgressBar

    from pipelines.embed import Embedder

logger = logging.getLogger("bench")

FLOOR_BATCH_SIZES = (8, 16, 32, 64)
FLOOR_SAMPLE = 1000
TOP_CHUNKS = 100
DENSE = "text-dense"


@dataclass
class Prepared:
    """What step (a) hands to the later steps."""

    chunk_ids: list[str]
    doc_ids: list[str]
    texts: list[str]
    chunk_size: int
    chunk_overlap: int
    tokenizer: Callable[[str], list[int]]
    model_path: Path


class RichProgress:
    """ragops's ``Progress`` protocol drawn as rich progress bars on stderr."""

    def __init__(self, bar: RichProgressBar, prefix: str) -> None:
        self._bar = bar
        self._prefix = prefix
        self._tasks: dict[str, Any] = {}

    def start(self, stage: str, total: int) -> None:
        """A stage begins."""
        self._tasks[stage] = self._bar.add_task(f"{self._prefix} {stage}", total=total)

    def advance(self, stage: str, amount: int) -> None:
        """More of a stage is done."""
        if stage in self._tasks:
            self._bar.advance(self._tasks[stage], amount)


def progress_bar() -> RichProgressBar:
    """A rich progress display on stderr (stdout is reserved for the JSON)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


# --------------------------------------------------------------------------------------------------- step (a)
def prepare_chunks(settings: Settings, data: Path, timings: dict[str, float]) -> Prepared:
    """Run ragops's discover -> plan -> read -> chunk steps and return the exact texts it embeds."""
    from pipelines.ingest import IngestContext, chunk_step, discover_step, plan_step, read_step

    ctx = IngestContext(settings)
    with stopwatch("embedder_first_use", timings):
        embedder = ctx.embedder  # weights hash, one-time ONNX export into the temp cache, session load
    with stopwatch("chunk_prep", timings):
        discovery = discover_step(ctx, data)
        plan = plan_step(ctx, discovery)
        docs, rejected = read_step(ctx, plan.todo)
        chunks, chunk_rejects = chunk_step(ctx, docs)
    if rejected or discovery.rejected or chunk_rejects:
        logger.warning(
            "%d documents rejected while reading or chunking",
            len(rejected) + len(discovery.rejected) + len(chunk_rejects),
        )
    params = ctx.chunker.params
    logger.info(
        "%d documents -> %d chunks (chunk_size %d, overlap %d)",
        len(docs),
        len(chunks),
        params.chunk_size,
        params.chunk_overlap,
    )
    return Prepared(
        chunk_ids=[c.chunk_id for c in chunks],
        doc_ids=[c.doc_id for c in chunks],
        texts=[c.embed_text for c in chunks],
        chunk_size=params.chunk_size,
        chunk_overlap=params.chunk_overlap,
        tokenizer=embedder.token_ids,
        model_path=embedder.model_path,
    )


def encode_floor(model: Any, texts: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Time plain float32 sentence-transformers over ``texts``; return the figures and the vectors."""
    sample = texts
    sampled = len(texts) > FLOOR_SAMPLE
    if sampled:
        sample = random.Random(0).sample(list(texts), FLOOR_SAMPLE)
    model.encode(list(sample[:32]), batch_size=32, normalize_embeddings=True)  # untimed warm-up
    by_batch: dict[str, float] = {}
    best_vectors: np.ndarray | None = None
    for bs in FLOOR_BATCH_SIZES:
        logger.info("encode floor: batch size %d on %d texts", bs, len(sample))
        start = time.perf_counter()
        vectors = model.encode(list(sample), batch_size=bs, normalize_embeddings=True, show_progress_bar=True)
        by_batch[str(bs)] = time.perf_counter() - start
        if min(by_batch.values()) == by_batch[str(bs)]:
            best_vectors = np.asarray(vectors, dtype=np.float32)
    best_bs = int(min(by_batch, key=lambda k: by_batch[k]))
    if sampled:
        logger.info("encode floor: batch size %d on all %d texts", best_bs, len(texts))
        start = time.perf_counter()
        vectors = model.encode(list(texts), batch_size=best_bs, normalize_embeddings=True, show_progress_bar=True)
        floor = time.perf_counter() - start
        best_vectors = np.asarray(vectors, dtype=np.float32)
        method = (
            f"batch sizes {list(FLOOR_BATCH_SIZES)} timed on a random sample of {FLOOR_SAMPLE} chunks (seed 0); "
            f"the fastest ({best_bs}) then timed on all {len(texts)} chunks"
        )
    else:
        floor = by_batch[str(best_bs)]
        method = f"batch sizes {list(FLOOR_BATCH_SIZES)} each timed on all {len(texts)} chunks; fastest reported"
    assert best_vectors is not None
    figures = {
        "encode_floor_seconds": floor,
        "encode_floor_by_batch": {k: round(v, 3) for k, v in by_batch.items()},
        "encode_floor_batch_size": best_bs,
        "encode_floor_sample": len(sample),
        "encode_floor_method": method,
        "encode_floor_texts_per_second": len(texts) / floor if floor else None,
    }
    return figures, best_vectors


# --------------------------------------------------------------------------------------------------- step (b)
def llamaindex_baseline(data: Path, prepared: Prepared, workdir: Path) -> dict[str, Any]:
    """Naive llama-index ingestion of the same corpus; components passed explicitly, no global Settings."""
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    documents = []
    for record in load_corpus(data):
        title = str(record.get("title") or "").strip()
        text = str(record.get("text") or "").strip()
        documents.append(Document(text=f"{title}\n\n{text}" if title else text, id_=str(record["_id"])))
    logger.info("llama-index baseline: %d documents", len(documents))
    start = time.perf_counter()
    embed_model = HuggingFaceEmbedding(
        model_name=str(prepared.model_path), device="cpu", cache_folder=str(workdir / "llamaindex-cache")
    )
    client = QdrantClient(path=str(workdir / "llamaindex-qdrant"))
    store = QdrantVectorStore(client=client, collection_name="baseline")
    splitter = SentenceSplitter(
        chunk_size=prepared.chunk_size, chunk_overlap=prepared.chunk_overlap, tokenizer=prepared.tokenizer
    )
    VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
        transformations=[splitter],
        show_progress=True,
    )
    seconds = time.perf_counter() - start
    points = int(client.count("baseline", exact=True).count)
    client.close()
    return {
        "llamaindex_seconds": seconds,
        "llamaindex_chunks": points,
        "llamaindex_embed_batch_size": embed_model.embed_batch_size,
    }


# ---------------------------------------------------------------------------------------------- steps (c, d)
def ragops_ingest(settings: Settings, data: Path, label: str) -> tuple[float, dict[str, Any]]:
    """``run_ingest`` with a progress display; returns wall seconds and the report's JSON."""
    from pipelines.ingest import run_ingest

    with progress_bar() as bar:
        start = time.perf_counter()
        report = run_ingest(settings, data, progress=RichProgress(bar, label))
        seconds = time.perf_counter() - start
    logger.info("%s took %.2f s: %s", label, seconds, json.dumps(report.to_json()["stage_seconds"]))
    return seconds, report.to_json()


# --------------------------------------------------------------------------------------------------- step (e)
def search_run(
    client: QdrantClient, collection: str, query_ids: Sequence[str], vectors: np.ndarray
) -> dict[str, list[str]]:
    """Top-100 chunks per query, aggregated to documents (max over chunks)."""
    run: dict[str, list[str]] = {}
    for query_id, vector in zip(query_ids, vectors, strict=True):
        points = client.query_points(
            collection, query=vector.tolist(), using=DENSE, limit=TOP_CHUNKS, with_payload=["doc_id"]
        ).points
        run[query_id] = docs_from_chunk_hits((str((p.payload or {})["doc_id"]), float(p.score)) for p in points)
    return run


def quality_default(
    settings: Settings, embedder: Embedder, query_ids: Sequence[str], texts: Sequence[str], qrels: Any
) -> float:
    """nDCG@10 of ragops's default embedder (query side) over the index ragops built."""
    from pipelines.index import VectorIndex

    vectors = embedder.encode(list(texts))
    with VectorIndex(settings).reader(expect=embedder.identity) as reader:
        run = {
            qid: docs_from_chunk_hits(
                (str((h.payload or {})["doc_id"]), h.score)
                for h in reader.search_dense(v, limit=TOP_CHUNKS, payload=["doc_id"])
            )
            for qid, v in zip(query_ids, vectors, strict=True)
        }
    return mean_ndcg(run, qrels)


def quality_float32(
    prepared: Prepared, chunk_vectors: np.ndarray, query_ids: Sequence[str], query_vectors: np.ndarray, qrels: Any
) -> float:
    """nDCG@10 of the float32 floor vectors in an in-memory Qdrant collection, float32 query vectors."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    client.create_collection(
        "float32",
        vectors_config={DENSE: models.VectorParams(size=chunk_vectors.shape[1], distance=models.Distance.COSINE)},
    )
    for start in range(0, len(prepared.chunk_ids), 1024):
        stop = start + 1024
        client.upsert(
            "float32",
            points=[
                models.PointStruct(id=cid, vector={DENSE: vec.tolist()}, payload={"doc_id": did})
                for cid, did, vec in zip(
                    prepared.chunk_ids[start:stop], prepared.doc_ids[start:stop], chunk_vectors[start:stop], strict=True
                )
            ],
        )
    run = search_run(client, "float32", query_ids, query_vectors)
    client.close()
    return mean_ndcg(run, qrels)


# ---------------------------------------------------------------------------------------------------- driver
def run_benchmark(settings: Settings, data: Path, workdir: Path) -> dict[str, Any]:
    """Steps (a) to (e) in order; returns the JSON report."""
    import torch
    from sentence_transformers import SentenceTransformer

    timings: dict[str, float] = {}
    shares: dict[str, dict[str, float]] = {}
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)

    # (a) encode floor over ragops's own chunk texts
    prepared = prepare_chunks(settings, data, timings)
    floor_model = SentenceTransformer(str(prepared.model_path), device="cpu")
    with contention("encode_floor", shares):
        floor, chunk_vectors = encode_floor(floor_model, prepared.texts)

    qrels_path = data / "qrels" / "test.tsv"
    qrels = load_qrels(qrels_path) if qrels_path.is_file() else {}
    queries = load_queries(data) if qrels else {}
    qrels = {q: r for q, r in qrels.items() if q in queries and any(s > 0 for s in r.values())}
    query_ids = sorted(qrels)
    query_texts = [queries[q] for q in query_ids]
    query_vectors_f32 = (
        np.asarray(floor_model.encode(query_texts, batch_size=32, normalize_embeddings=True), dtype=np.float32)
        if query_ids
        else np.empty((0, chunk_vectors.shape[1]), dtype=np.float32)
    )
    del floor_model

    # (b) naive llama-index
    import llama_index.embeddings.huggingface  # import time (about 5 s) is not part of the baseline
    import llama_index.vector_stores.qdrant  # noqa: F401

    with contention("llamaindex", shares):
        baseline = llamaindex_baseline(data, prepared, workdir)

    # (c) ragops end to end, (d) unchanged re-ingest
    with contention("ragops_ingest", shares):
        seconds, report = ragops_ingest(settings, data, "ingest")
    with contention("ragops_reingest", shares):
        reingest_seconds, rereport = ragops_ingest(settings, data, "re-ingest")
    chunks = int(report["points_total"])
    if chunks != len(prepared.texts):
        logger.warning("ragops indexed %d chunks but the floor encoded %d", chunks, len(prepared.texts))

    # (e) quality
    from pipelines.embed import Embedder

    embedder = Embedder(settings.embedder, cache_dir=settings.cache_dir)  # ragops's default: what the service uses
    embedder.warm_up()
    ndcg_default = ndcg_f32 = None
    if query_ids:
        with stopwatch("quality_default", timings):
            ndcg_default = quality_default(settings, embedder, query_ids, query_texts, qrels)
        with stopwatch("quality_float32", timings):
            ndcg_f32 = quality_float32(prepared, chunk_vectors, query_ids, query_vectors_f32, qrels)
    else:
        logger.warning("no test qrels at %s: quality skipped", qrels_path)

    floor_seconds = float(floor["encode_floor_seconds"])
    ratio = seconds / floor_seconds if floor_seconds else None
    speedup = baseline["llamaindex_seconds"] / seconds if seconds else None
    reingest_ratio = reingest_seconds / seconds if seconds else None
    computed_again = int(rereport["embeddings_computed"])
    ndcg_gap = abs(ndcg_default - ndcg_f32) if ndcg_default is not None and ndcg_f32 is not None else None

    return {
        "chunks": chunks,
        "seconds": rounded(seconds),
        "encode_floor_seconds": rounded(floor_seconds),
        "ratio_to_encode_floor": rounded(ratio),
        "llamaindex_seconds": rounded(baseline["llamaindex_seconds"]),
        "speedup_vs_llamaindex": rounded(speedup),
        "reingest_seconds": rounded(reingest_seconds),
        "reingest_ratio": rounded(reingest_ratio, 4),
        "embeddings_computed_reingest": computed_again,
        "ndcg10_float32": rounded(ndcg_f32, 4),
        "ndcg10_default": rounded(ndcg_default, 4),
        "ndcg10_gap": rounded(ndcg_gap, 4),
        "targets": {
            "ratio_to_encode_floor<=1.15": ratio is not None and ratio <= 1.15,
            "speedup_vs_llamaindex>=1.5": speedup is not None and speedup >= 1.5,
            "reingest_ratio<=0.03": reingest_ratio is not None and reingest_ratio <= 0.03,
            "embeddings_computed_reingest==0": computed_again == 0,
            "ndcg_gap<=0.005": ndcg_gap is not None and ndcg_gap <= 0.005,
        },
        "backend": embedder.backend,
        "precision": embedder.precision,
        "cpu_flags": cpu_flags(),
        "cpu_model": cpu_model(),
        "cpu_count": threads,
        "torch_threads": torch.get_num_threads(),
        "documents": report["documents_seen"],
        "documents_failed": report["documents_failed"],
        "chunks_truncated": report["chunks_truncated"],
        "stage_seconds": report["stage_seconds"],
        "reingest_stage_seconds": rereport["stage_seconds"],
        "embeddings_computed": report["embeddings_computed"],
        "encode_floor_by_batch": floor["encode_floor_by_batch"],
        "encode_floor_batch_size": floor["encode_floor_batch_size"],
        "encode_floor_method": floor["encode_floor_method"],
        "encode_floor_texts_per_second": rounded(floor["encode_floor_texts_per_second"], 1),
        "ragops_texts_per_second": rounded(chunks / seconds, 1) if seconds else None,
        "llamaindex_chunks": baseline["llamaindex_chunks"],
        "llamaindex_embed_batch_size": baseline["llamaindex_embed_batch_size"],
        "chunking": {"chunk_size": prepared.chunk_size, "chunk_overlap": prepared.chunk_overlap},
        "embedder_first_use_seconds": rounded(timings.get("embedder_first_use")),
        "chunk_prep_seconds": rounded(timings.get("chunk_prep")),
        "ndcg10_queries": len(query_ids),
        "cpu_contention": shares,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_SCIFACT, help="BEIR folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N corpus documents")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one JSON object on stdout."""
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ignored = sorted(k for k in os.environ if k.startswith("RAGOPS_"))
    for key in ignored:
        del os.environ[key]
    if ignored:
        logger.warning("ignoring %s: the benchmark measures default settings in a temporary home", ignored)
    data = args.data.expanduser().resolve()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = load_average()
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragops-bench-") as tmp:
        workdir = Path(tmp)
        settings = Settings(home=workdir / "home")
        settings.ensure_dirs()
        apply_offline_env(settings)
        if args.limit is not None:
            subset = workdir / "data"
            n = write_subset(data, subset, args.limit)
            logger.info("using the first %d documents of %s", n, data)
            source = subset
        else:
            source = data
        result = run_benchmark(settings, source, workdir)
    result.update(
        {
            "data": str(data),
            "limit": args.limit,
            "date": started_at,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "total_wall_seconds": rounded(time.perf_counter() - wall, 1),
        }
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
