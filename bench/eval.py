"""Evaluation benchmark: dense and hybrid stacks on a BEIR test split, through ``ragops``' own evaluation path.

Usage: ``python bench/eval.py [--data DIR] [--home DIR] [--limit N]``. Prints one JSON object.

1. Ingests DIR's corpus (default ``../shared/datasets/scifact``) into a RAGOPS_HOME (temporary, or ``--home`` to
   reuse an index; re-ingesting an unchanged corpus embeds nothing).
2. Registers two stacks over the same index: ``dense`` (MiniLM cosine) and ``hybrid`` (weighted reciprocal-rank
   fusion of MiniLM and stemmed BM25, 300 candidates per list so recall@100 is measured on a deep enough list).
3. Evaluates each on the test queries with :func:`evaluation.deploy.evaluate_stack` (logged to MLflow, experiment
   ``evaluation``) and reports the figures against the published ones.

Targets on SciFact: ``ndcg10_dense >= 0.64`` (published all-MiniLM-L6-v2: 0.645), ``ndcg10_hybrid >= 0.715``
(BM25 0.687, bge-small-en-v1.5 0.713), ``eval_seconds <= 60`` for the 300 queries against an existing index.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "scifact"
HYBRID_CANDIDATES = 300

logger = logging.getLogger("bench.eval")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder (corpus, queries, qrels).")
    parser.add_argument("--home", type=Path, default=None, help="Reuse this RAGOPS_HOME (keeps the index).")
    parser.add_argument("--split", default="test", help="qrels split to evaluate.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    from evaluation.deploy import evaluate_stack
    from evaluation.testsets import load_beir
    from flows.settings import Settings
    from pipelines.env import apply_offline_env
    from pipelines.index import VectorIndex
    from pipelines.ingest import run_ingest
    from rag.stack import StackRegistry
    from rag.types import StackConfig

    home = args.home or Path(tempfile.mkdtemp(prefix="ragops-bench-eval-")) / "home"
    settings = Settings(home=home)
    apply_offline_env(settings)
    settings.ensure_dirs()

    started = time.perf_counter()
    logger.info("ingesting %s into %s", args.data, home)
    report = run_ingest(settings, args.data)
    ingest_seconds = time.perf_counter() - started
    current = VectorIndex(settings).current()
    assert current is not None
    testset = load_beir(args.data, split=args.split)
    registry = StackRegistry(settings)
    stacks = {
        "dense": StackConfig.for_index(current, name="bench-dense"),
        "hybrid": StackConfig.for_index(
            current, name="bench-hybrid", retrieval={"mode": "hybrid", "candidates": HYBRID_CANDIDATES}
        ),
    }
    out: dict[str, Any] = {
        "data": str(args.data),
        "queries": len(testset.items),
        "testset_sha256": testset.sha256,
        "chunks": report.points_total,
        "ingest_seconds": round(ingest_seconds, 1),
        "embeddings_computed": report.embeddings_computed,
    }
    for label, config in stacks.items():
        version = registry.register(config, description=f"bench/eval.py {label}")
        logger.info("evaluating %s (stack v%s) on %d queries", label, version, len(testset.items))
        outcome = evaluate_stack(settings, registry, version, testset=testset, gate=False)
        metrics = outcome.result.metrics
        out[f"ndcg10_{label}"] = round(metrics["ndcg@10"], 4)
        out[f"recall100_{label}"] = round(metrics["recall@100"], 4)
        out[f"recall10_{label}"] = round(metrics["recall@10"], 4)
        out[f"mrr10_{label}"] = round(metrics["mrr@10"], 4)
        out[f"eval_seconds_{label}"] = round(outcome.result.seconds, 2)
        out[f"p50_ms_{label}"] = round(metrics["latency_total_p50_ms"], 2)
        out[f"mlflow_run_{label}"] = outcome.run_id
    out["eval_seconds"] = max(out["eval_seconds_dense"], out["eval_seconds_hybrid"])
    out["published"] = {"minilm_ndcg10": 0.645, "bm25_ndcg10": 0.687, "bge_small_ndcg10": 0.713}
    out["targets"] = {
        "ndcg10_dense>=0.64": out["ndcg10_dense"] >= 0.64,
        "ndcg10_hybrid>=0.715": out["ndcg10_hybrid"] >= 0.715,
        "eval_seconds<=60": out["eval_seconds"] <= 60,
    }
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
