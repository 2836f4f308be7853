"""The review half of ``bench/review.py``: the review queue's round trip through the real service.

1. The demo corpus (PDF and DOCX documents included) is ingested into a temporary ``RAGOPS_HOME``; a dense
   extractive stack is registered and promoted; ``ragops serve`` runs with ``RAGOPS_REVIEW__SAMPLE_RATE``
   ``sample_rate`` (the other rules at their defaults).
2. A reader asks every demo_qa question once (the adversarial ones included) and rates an answer down when it does
   not contain a reference answer (the gate's containment metric): the thumbs-down rule.
3. A reviewer (operator key) labels every queued item through the API the ``/review`` page calls (the page itself
   is driven in Chromium by ``tests/integration/test_playground.py``), following demo_qa's truth: ``unanswerable``
   for unanswerable questions, ``correct`` when the answer contains a reference answer (else ``incorrect`` with it),
   and the cited chunks of the item's relevant documents marked relevant.
4. ``ragops review export`` writes the ``reviewed`` test set and training pairs; ``ragops eval --testset`` runs the
   evaluation on that set (``gate_testset_sha256_matches``: the run names the export's hash), and the pairs are read
   as ``ragops retrain --train`` reads them (``pairs_from_review``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.review")


def review_round_trip(home: Path, repo: Path, *, sample_rate: float = 0.3) -> dict[str, Any]:
    """Run the round trip and return its figures."""
    import httpx

    from bench._common import demo_platform
    from bench.query import free_port, wait_ready
    from evaluation.metrics import containment
    from evaluation.testsets import load_testset
    from evaluation.trainset import load_labelled
    from pipelines.env import child_env
    from rag.security.gate import Gate

    settings, _, _, version = demo_platform(home, name="bench-review")
    gate = Gate(settings)
    reader = str(gate.keys.create(role="reader", name="user", created_by="bench").secret)
    operator = str(gate.keys.create(role="operator", name="reviewer", created_by="bench").secret)
    gate.close()
    env = child_env(settings, {"RAGOPS_HOME": str(home), "RAGOPS_REVIEW__SAMPLE_RATE": str(sample_rate)})
    port = free_port()
    log = (home.parent / "serve-review.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)], cwd=repo, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    items = load_testset("demo_qa").items
    by_question = {i.question: i for i in items}
    rated_down = 0
    try:
        wait_ready(url, server)
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {reader}"}) as user:
            for item in items:
                body = user.post("/v1/query", json={"question": item.question}).raise_for_status().json()
                good = bool(item.answers) and containment(body["answer"], item.answers) >= 1.0
                if not body["blocked"] and not good and not (item.unanswerable and body["abstained"]):
                    user.post(
                        "/v1/feedback", json={"request_id": body["request_id"], "rating": "down"}
                    ).raise_for_status()
                    rated_down += 1
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {operator}"}) as reviewer:
            queued = reviewer.get("/v1/review", params={"limit": 1000}).raise_for_status().json()["items"]
            reasons = Counter(r for q in queued for r in q["reasons"])
            verdicts: Counter[str] = Counter()
            for q in queued:
                truth = by_question.get(q["question"])
                label = _label(q, truth, containment)
                reviewer.post(f"/v1/review/{q['request_id']}", json=label).raise_for_status()
                verdicts[label["verdict"]] += 1
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    out_dir = home.parent / "reviewed"
    exported = _ragops(repo, env, "review", "export", "--out", str(out_dir), "--json")
    evaluated = _ragops(repo, env, "eval", "--stack", str(version), "--testset", exported["testset"], "--json")
    pairs = load_labelled(exported["train"])
    return {
        "questions_asked": len(items),
        "rated_down": rated_down,
        "queued_items": len(queued),
        "queued_by_rule": dict(reasons),
        "reviewed_items": sum(verdicts.values()),
        "verdicts": dict(verdicts),
        "testset_items_from_review": exported["testset_items"],
        "testset_sha256": exported["testset_sha256"],
        "gate_testset_sha256_matches": _sha_of(evaluated) == exported["testset_sha256"],
        "pairs_from_review": len(pairs),
        "export_skipped": exported["skipped"],
        "reviewed_set_metrics": {k: v for k, v in _metrics(evaluated).items() if isinstance(v, int | float)},
    }


def _label(queued: dict[str, Any], truth: Any, containment: Any) -> dict[str, Any]:
    """The simulated reviewer's label of one queued item, from demo_qa's truth."""
    if truth is None or queued["blocked"]:
        return {"verdict": "correct"}  # a refusal (or an unknown question): nothing to correct
    if truth.unanswerable:
        return {"verdict": "unanswerable"}
    relevant = [c["chunk_id"] for c in queued["citations"] if c["doc_id"] in truth.relevant]
    if truth.answers and containment(queued["answer"], truth.answers) >= 1.0:
        return {"verdict": "correct", "relevant_chunk_ids": relevant}
    right = truth.answers[0] if truth.answers else "see the relevant documents"
    return {"verdict": "incorrect", "right_answer": right, "relevant_chunk_ids": relevant}


def _ragops(repo: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode not in (0, 4):  # 4: a gate that failed still evaluated
        raise RuntimeError(f"ragops {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def _sha_of(evaluated: dict[str, Any]) -> str | None:
    for key in ("testset_sha256", "sha256"):
        if key in evaluated:
            return str(evaluated[key])
    testset = evaluated.get("testset")
    if isinstance(testset, dict):
        return str(testset.get("sha256"))
    return None


def _metrics(evaluated: dict[str, Any]) -> dict[str, Any]:
    metrics = evaluated.get("metrics")
    return dict(metrics) if isinstance(metrics, dict) else {}
