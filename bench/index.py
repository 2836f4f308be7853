"""Index benchmark: search latency, exactness, upsert speed and small-change publishing on a real corpus.

Usage: ``python bench/index.py [--data DIR] [--home DIR] [--baseline-queries N]``. Prints one JSON object.

1. Uses the index published under ``--home`` (ingests DIR's corpus there first when it has none; a temporary home
   otherwise), default SciFact (about 12.7k chunks).
2. Copies that version's points into a fresh embedded store, giving every document one of 10 tenants
   (``upsert_points_per_s``), and times on it, per test query and in process: dense top-10 (``dense_p50_ms``),
   tenant-filtered dense top-10 (``filtered_p50_ms``), hybrid top-10 fused by the engine's RRF of dense 50 and BM25
   50 (``hybrid_p50_ms``). ``retriever_dense_p50_ms`` / ``retriever_hybrid_p50_ms`` are the Retriever's own paths
   over the published index (what the service runs: hybrid fuses two lists in Python to keep each hit's dense
   similarity, then reads payloads and makes llama-index nodes). p50s in milliseconds.
3. ``same_rankings_as_exact``: the dense top-10 of every test query equals brute force (numpy, float64 over the
   stored vectors; ties within 1e-6 may swap).
4. ``ndcg10_dense`` / ``ndcg10_hybrid``: the Retriever over the published index (top 100 chunks, documents ranked by
   their best chunk; hybrid with 300 candidates per list, as ``bench/eval.py``).
5. Publishing: a full build of the index (all points, vectors given) into a scratch collection, then runs that
   rewrite 1% of the documents, both through the index stage of an ingestion (``IndexWriter.upsert`` with the
   chunks, begin to publish); ``publish_seconds_small_change`` is the median small run and
   ``small_change_over_full_index`` its ratio to the full build (target <= 0.10: no whole copy). The
   ``*_ready_payloads`` keys are the same builds from ready payloads (``upsert_points``, no payload building: a
   stricter ratio).
6. Baseline, same run: qdrant-client's local mode (what embedded mode used before) on ``--baseline-queries``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "scifact"
TENANTS = 10

logger = logging.getLogger("bench.index")


def p50_ms(fn: Callable[[int], object], n: int) -> float:
    """Median wall time of ``fn(i)`` over ``i < n`` in milliseconds (one warm-up call first)."""
    fn(0)
    times = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 3)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder (corpus, queries, qrels).")
    parser.add_argument("--home", type=Path, default=None, help="RAGOPS_HOME holding (or to hold) the index.")
    parser.add_argument("--baseline-queries", type=int, default=20, help="Queries timed in local mode (0: skip).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    out = run(args.data, args.home, args.baseline_queries)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


def run(data: Path, home: Path | None, baseline_queries: int) -> dict[str, Any]:
    """Every measurement of the module docstring, as the JSON report."""
    from bench._common import cpu_flags, cpu_model, load_average, load_qrels, load_queries
    from flows.settings import Settings
    from pipelines.embed import Embedder
    from pipelines.env import apply_offline_env
    from pipelines.index import VectorIndex
    from pipelines.ingest import run_ingest

    settings = Settings(home=home or Path(tempfile.mkdtemp(prefix="ragops-bench-index-")) / "home")
    apply_offline_env(settings)
    settings.ensure_dirs()
    index = VectorIndex(settings)
    if index.current_version() is None:
        logger.info("ingesting %s into %s", data, settings.home)
        run_ingest(settings, data)
    qrels = load_qrels(data / "qrels" / "test.tsv")
    queries = load_queries(data)
    query_ids = [q for q in qrels if q in queries]
    texts = [queries[q] for q in query_ids]
    embedder = Embedder(settings.embedder, cache_dir=settings.cache_dir)
    vectors = embedder.encode(texts)
    out: dict[str, Any] = {"data": str(data), "queries": len(texts), "cpu": cpu_model(), "cpu_flags": cpu_flags()}
    with index.reader(expect=embedder.identity) as reader:
        out["chunks"] = reader.count()
        points = list(reader.scroll(dense=True, sparse=True, payload=True))
        out.update(engine_figures(settings, points, texts, vectors, reader.version.avgdl))
        out.update(retriever_figures(reader, embedder, texts, vectors, query_ids, qrels))
        out.update(publish_figures(settings, points, reader.version))
    if baseline_queries:
        out.update(local_mode_baseline(points, texts[:baseline_queries], vectors[:baseline_queries], out))
    out["load_average"] = load_average()
    out["targets"] = {
        "dense_p50_ms<=2": out["dense_p50_ms"] <= 2,
        "hybrid_p50_ms<=2": out["hybrid_p50_ms"] <= 2,
        "filtered_p50_ms<=2": out["filtered_p50_ms"] <= 2,
        "filtered_over_unfiltered_p50<=2": out["filtered_over_unfiltered_p50"] <= 2,
        "same_rankings_as_exact": out["same_rankings_as_exact"],
        "small_change_over_full_index<=0.10": out["small_change_over_full_index"] <= 0.10,
    }
    return out


def _tenant_points(points: Sequence[Any]) -> list[Any]:
    from pipelines.store import StoredPoint

    return [
        StoredPoint(
            p.id,
            p.dense,
            p.sparse,
            {**p.payload, "tenant": f"t{zlib.crc32(str(p.payload['doc_id']).encode()) % TENANTS}"},
        )
        for p in points
    ]


def engine_figures(
    settings: Any, points: Sequence[Any], texts: Sequence[str], vectors: np.ndarray, avgdl: float
) -> dict[str, Any]:
    """Upsert speed, engine latencies and exactness on an embedded store holding the version with tenants."""
    from pipelines.sparse import Bm25Encoder
    from pipelines.store import EdgeStore, HybridRequest, PointFilter, StoreSchema

    scratch = Path(tempfile.mkdtemp(prefix="bench-index-", dir=settings.home))
    tenanted = _tenant_points(points)
    started = time.perf_counter()
    store = EdgeStore.create(scratch / "shard", StoreSchema(dim=vectors.shape[1]))
    store.upsert(tenanted)
    store.flush()
    upsert_seconds = time.perf_counter() - started
    bm25 = Bm25Encoder(avgdl=avgdl)
    sparse = [bm25.encode_query(t) for t in texts]
    tenant = PointFilter.of({"tenant": ["t3"]})
    n = len(texts)
    out: dict[str, Any] = {
        "upsert_points_per_s": round(len(points) / upsert_seconds),
        "dense_p50_ms": p50_ms(lambda i: store.search_dense(vectors[i], limit=10), n),
        "filtered_p50_ms": p50_ms(lambda i: store.search_dense(vectors[i], limit=10, flt=tenant), n),
        "sparse_p50_ms": p50_ms(lambda i: store.search_sparse(sparse[i], limit=50), n),
        "hybrid_p50_ms": p50_ms(
            lambda i: store.search_hybrid(HybridRequest(vectors[i], sparse[i], depth=50), limit=10), n
        ),
    }
    out["filtered_over_unfiltered_p50"] = round(out["filtered_p50_ms"] / out["dense_p50_ms"], 3)
    matrix = np.stack([p.dense for p in points]).astype(np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = [p.id for p in points]
    equal = 0
    for vector in vectors:
        scores = matrix @ vector.astype(np.float64)
        order = np.argsort(-scores, kind="stable")[:10]
        hits = store.search_dense(vector, limit=10)
        exact_scores = scores[order]
        same = [h.id for h in hits] == [ids[i] for i in order] or (
            {h.id for h in hits} <= {ids[i] for i in np.flatnonzero(scores >= exact_scores[-1] - 1e-6)}
            and np.allclose([h.score for h in hits], exact_scores, atol=1e-5)
        )
        equal += bool(same)
    out["exact_top10_equal"] = f"{equal}/{len(vectors)}"
    out["same_rankings_as_exact"] = equal == len(vectors)
    store.close()
    return out


def retriever_figures(
    reader: Any, embedder: Any, texts: Sequence[str], vectors: np.ndarray, query_ids: Sequence[str], qrels: Any
) -> dict[str, Any]:
    """The Retriever's own paths (what the service runs) over the published index, and nDCG@10."""
    from bench._common import docs_from_chunk_hits, mean_ndcg
    from rag.retrieve import Retriever
    from rag.types import RetrievalConfig

    dense = Retriever(reader, embedder, RetrievalConfig(mode="dense", top_k=10))
    hybrid = Retriever(reader, embedder, RetrievalConfig(mode="hybrid", top_k=10))
    n = len(texts)
    out: dict[str, Any] = {
        "retriever_dense_p50_ms": p50_ms(lambda i: dense.search(texts[i], vectors[i], top_k=10), n),
        "retriever_hybrid_p50_ms": p50_ms(lambda i: hybrid.search(texts[i], vectors[i], top_k=10), n),
    }
    deep = Retriever(reader, embedder, RetrievalConfig(mode="hybrid", top_k=10, candidates=300))
    for label, retriever in (("dense", dense), ("hybrid", deep)):
        run = {
            q: docs_from_chunk_hits((c.doc_id, c.score) for c in retriever.search(t, v, top_k=100))
            for q, t, v in zip(query_ids, texts, vectors, strict=True)
        }
        out[f"ndcg10_{label}"] = round(mean_ndcg(run, qrels), 4)
    return out


def publish_figures(settings: Any, points: Sequence[Any], version: Any) -> dict[str, Any]:
    """A full index build, then runs rewriting 1% of documents (new titles), into a scratch collection.

    Both go through the index stage of an ingestion: ``begin`` with the manifest the plan step read,
    ``IndexWriter.upsert`` with the chunks (which builds each point's llama-index payload, as
    ``pipelines/ingest.py`` calls it), then ``publish``; embedding is not index time, so vectors are given. The
    same builds from ready payloads (``upsert_points``) are reported beside them. The small run is repeated and its
    median reported (one run is at the mercy of a noisy machine).
    """
    from pipelines.index import DocEntry, VectorIndex

    scratch = VectorIndex(settings, collection="bench-publish")
    by_doc: dict[str, list[Any]] = {}
    for p in points:
        by_doc.setdefault(str(p.payload["doc_id"]), []).append(p)
    docs = {d: DocEntry(d, f"h-{d}", "bench", "bench", d, tuple(p.id for p in chunks)) for d, chunks in by_doc.items()}
    changed = sorted(by_doc)[::100]  # 1% of documents
    small_points = [p for d in changed for p in by_doc[d]]

    def build(chunks: Sequence[Any], run_id: str, title: str | None, *, from_chunks: bool) -> float:
        dense = np.stack([p.dense for p in chunks])
        sparse = [p.sparse for p in chunks]
        objects = [_chunk_of(p, title) for p in chunks] if from_chunks else []
        payloads = [] if from_chunks else [{**p.payload, "title": title} if title else p.payload for p in chunks]
        known = scratch.manifest()  # what an ingestion's plan step read (not index time)
        started = time.perf_counter()
        writer = scratch.begin(
            embedder=version.embedder, chunking=version.chunking, avgdl=version.avgdl, run_id=run_id, known=known
        )
        if from_chunks:
            writer.upsert(objects, dense, sparse, source_key="bench")
        else:
            writer.upsert_points([p.id for p in chunks], dense, sparse, payloads)
        writer.publish(docs)
        return time.perf_counter() - started

    out: dict[str, Any] = {}
    for label, from_chunks in (("", True), ("_ready_payloads", False)):
        scratch.drop()
        full = build(points, "full", None, from_chunks=from_chunks)
        smalls = [build(small_points, f"small{i}", f"changed {i}", from_chunks=from_chunks) for i in range(5)]
        small = float(np.median(smalls))
        out[f"full_index_seconds{label}"] = round(full, 3)
        out[f"publish_seconds_small_change{label}"] = round(small, 3)
        out[f"small_change_over_full_index{label}"] = round(small / full, 4)
    out["small_change_documents"] = len(changed)
    opened = time.perf_counter()
    with scratch.reader() as reader:
        assert reader.count() == len(points)
    out["reader_open_seconds"] = round(time.perf_counter() - opened, 3)
    scratch.drop()
    return out


def _chunk_of(point: Any, title: str | None) -> Any:
    """The chunk a stored point was made from (llama-index's node layout read back), retitled when ``title``."""
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    from pipelines.chunk import embed_text
    from pipelines.types import Chunk

    node = metadata_dict_to_node(point.payload)
    meta = dict(node.metadata)
    fixed = {k: meta.pop(k) for k in ("title", "source", "source_key", "position", "n_tokens", "doc_hash")}
    title = title or str(fixed["title"])
    return Chunk(
        chunk_id=point.id,
        doc_id=str(point.payload["doc_id"]),
        position=int(fixed["position"]),
        text=node.get_content(),
        embed_text=embed_text(title, node.get_content()),
        n_tokens=int(fixed["n_tokens"]),
        truncated=False,
        source=str(fixed["source"]),
        title=title,
        doc_hash=str(fixed["doc_hash"]),
        metadata=meta,
    )


def local_mode_baseline(
    points: Sequence[Any], texts: Sequence[str], vectors: np.ndarray, out: dict[str, Any]
) -> dict[str, Any]:
    """qdrant-client local mode, the engine embedded mode used before, on the same points and queries."""
    from qdrant_client import QdrantClient

    from pipelines.sparse import Bm25Encoder
    from pipelines.store import ClientStore, HybridRequest, PointFilter, StoreSchema

    client = QdrantClient(":memory:")
    store = ClientStore.create(client, "baseline", StoreSchema(dim=vectors.shape[1]))
    started = time.perf_counter()
    store.upsert(_tenant_points(points))
    upsert = time.perf_counter() - started
    bm25 = Bm25Encoder()
    sparse = [bm25.encode_query(t) for t in texts]
    tenant = PointFilter.of({"tenant": ["t3"]})
    n = len(texts)
    base = {
        "dense_p50_ms": p50_ms(lambda i: store.search_dense(vectors[i], limit=10), n),
        "filtered_p50_ms": p50_ms(lambda i: store.search_dense(vectors[i], limit=10, flt=tenant), n),
        "hybrid_p50_ms": p50_ms(
            lambda i: store.search_hybrid(HybridRequest(vectors[i], sparse[i], depth=50), limit=10), n
        ),
        "upsert_points_per_s": round(len(points) / upsert),
    }
    client.close()
    return {
        "baseline_local_mode": base,
        "speedup_vs_local_mode": {
            "dense": round(base["dense_p50_ms"] / out["dense_p50_ms"], 1),
            "filtered": round(base["filtered_p50_ms"] / out["filtered_p50_ms"], 1),
            "hybrid": round(base["hybrid_p50_ms"] / out["hybrid_p50_ms"], 1),
            "upsert": round(out["upsert_points_per_s"] / base["upsert_points_per_s"], 1),
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
