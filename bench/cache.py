"""Answer-cache benchmark: hits, their correctness and speed over HTTP, isolation, staleness and the spend ledger.

Usage: ``python bench/cache.py [--threshold T] [--seed S] [--redis URL] [--out FILE]``. Prints one JSON object.

1. Builds the demo corpus, ingests it into a temporary ``RAGOPS_HOME``, registers a dense extractive stack and
   promotes it; creates three reader keys: ``acme`` (the replay's tenant), ``beta`` (another tenant) and ``acme`` with
   the ``hr`` group (another access scope).
2. In process, with the stack's own embedder: ``embed_p50_ms`` (one question per forward pass, as a request pays
   it, over demo_qa questions as written: the floor of the semantic-hit target) and, for information only,
   ``embed_p50_ms_paraphrases`` (the same over the paraphrases, the questions semantic hits are, of about the same
   length), the cosines of the paraphrase pairs
   (``evaluation/testsets/demo_paraphrases.jsonl``) and of the near-miss pairs (``demo_near_misses.jsonl``: similar
   words, another answer), and a threshold sweep that simulates the replay below (a hit is correct when it comes
   from the same demo_qa question) to choose the default threshold.
3. Starts ``ragops serve`` (answer cache on, ``--threshold``) and replays over loopback, concurrency 1: every
   answerable demo_qa question once as written and twice as paraphrases, shuffled (at most two thirds can hit).
   ``llm_calls_saved_share`` is hits over replayed requests (each hit skipped retrieval and generation; the stack is
   extractive here, so "LLM call" means the answer stage); ``cache_hit_precision`` is the share of hits whose answer
   is the one the same question's first (uncached) request produced. Then every replayed original is asked again
   (exact hits: ``exact_hit_p50_ms``); ``miss_p50_ms`` is the baseline of uncached requests.
4. Isolation and staleness: the other tenant and the other scope ask questions the replay cached
   (``cross_tenant_hits``, target 0); then the same stack is registered again and promoted, and once the service
   serves the new version the same questions are asked (``stale_hits_after_promote``, target 0).
5. Ledger: the request store's rows for the benchmark's request ids against the responses' ``usage``
   (``ledger_mismatch``: requests missing or differing in tokens or cost, target 0), and the ledger's per-key sums.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.query import free_port, percentile, wait_ready  # noqa: E402  (the query benchmark's helpers)

logger = logging.getLogger("bench.cache")
TESTSETS = REPO / "evaluation" / "testsets"
SWEEP = tuple(round(t, 2) for t in np.arange(0.80, 0.991, 0.01))


@dataclass(frozen=True)
class Ask:
    """One replayed question and the demo_qa question whose answer it wants."""

    text: str
    of: str
    kind: str  # "original" | "paraphrase"


@dataclass
class Replay:
    """What the HTTP replay saw."""

    hits: int = 0
    correct: int = 0
    requests: int = 0
    semantic_ms: list[float] = field(default_factory=list)
    semantic_stages: dict[str, list[float]] = field(default_factory=dict)  # server-side stage timings of the hits
    miss_ms: list[float] = field(default_factory=list)
    answers: dict[str, set[str]] = field(default_factory=dict)  # question id -> its uncached answers
    stored: list[str] = field(default_factory=list)  # texts that missed (and were stored)
    wrong: list[dict[str, str]] = field(default_factory=list)


def load_sets() -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Answerable demo_qa questions by id, the paraphrases and the near-miss pairs."""

    def read(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (TESTSETS / name).read_text().splitlines() if line.strip()]

    qa = {r["id"]: r["question"] for r in read("demo_qa.jsonl") if r["answers"]}
    return qa, read("demo_paraphrases.jsonl"), read("demo_near_misses.jsonl")


def replay_order(qa: dict[str, str], paraphrases: list[dict[str, Any]], seed: int) -> list[Ask]:
    """Each answerable question once as written and twice paraphrased, shuffled."""
    asks = [Ask(q, i, "original") for i, q in qa.items()]
    asks += [Ask(p["question"], p["of"], "paraphrase") for p in paraphrases]
    random.Random(seed).shuffle(asks)
    return asks


def simulate(asks: Sequence[Ask], vectors: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    """The replay against an in-memory cache of (vector, question id): saved share and precision at ``threshold``."""
    from rag.cache import normalise

    stored_vecs: list[np.ndarray] = []
    stored_of: list[str] = []
    exact: dict[str, str] = {}
    hits = correct = 0
    for ask in asks:
        key = normalise(ask.text)
        if key in exact:
            hits += 1
            correct += exact[key] == ask.of
            continue
        v = vectors[ask.text]
        if stored_vecs:
            scores = np.asarray(stored_vecs) @ v
            best = int(np.argmax(scores))
            if scores[best] >= threshold:
                hits += 1
                correct += stored_of[best] == ask.of
                continue
        stored_vecs.append(v)
        stored_of.append(ask.of)
        exact[key] = ask.of
    return {
        "threshold": threshold,
        "saved_share": round(hits / len(asks), 4),
        "precision": round(correct / hits, 4) if hits else 1.0,
    }


def pair_cosines(pairs: Sequence[tuple[str, str]], vectors: dict[str, np.ndarray]) -> list[float]:
    """Cosine of each pair (the vectors are unit length)."""
    return [float(vectors[a] @ vectors[b]) for a, b in pairs]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    from rag.settings import AnswerCacheSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = AnswerCacheSettings().threshold
    parser.add_argument("--threshold", type=float, default=default, help=f"Cache threshold served (default {default}).")
    parser.add_argument("--seed", type=int, default=0, help="Shuffle of the replay.")
    parser.add_argument("--checks", type=int, default=60, help="Questions asked per isolation and staleness check.")
    parser.add_argument("--redis", default=None, help="Run the service with the Redis cache at this URL.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    import httpx

    from flows.settings import Settings
    from pipelines.demo import build_demo_corpus
    from pipelines.env import apply_offline_env, child_env

    temp = Path(tempfile.mkdtemp(prefix="ragops-bench-cache-"))
    settings = Settings(home=temp / "home")
    apply_offline_env(settings)
    settings.ensure_dirs()
    qa, paraphrases, near = load_sets()
    asks = replay_order(qa, paraphrases, args.seed)
    out: dict[str, Any] = {"threshold": args.threshold, "replay_requests": len(asks), "backend": "memory"}
    server: subprocess.Popen[bytes] | None = None
    try:
        from pipelines.index import VectorIndex
        from pipelines.ingest import run_ingest
        from rag.engine import RagEngine
        from rag.security.gate import Gate
        from rag.stack import StackRegistry
        from rag.store import RequestStore
        from rag.types import StackConfig

        corpus = temp / "corpus"
        build_demo_corpus(corpus)
        run_ingest(settings, corpus)
        current = VectorIndex(settings).current()
        assert current is not None
        registry = StackRegistry(settings)
        config = StackConfig.for_index(current, name="bench-cache")
        version = registry.register(config, description="bench/cache.py")
        registry.promote(version, actor="bench", reason="benchmark")

        logger.info("in process: embedding floor and threshold sweep")
        texts = sorted({a.text for a in asks} | {r["question"] for r in near} | {r["near"] for r in near})
        with RagEngine.open(settings, config) as engine:
            matrix = engine.embedder.encode(texts)
            vectors = dict(zip(texts, matrix, strict=True))
            singles = list(qa.values())[:120]
            for q in singles[:10]:
                engine.embedder.encode([q])
            embed_s = []
            for q in singles:
                started = time.perf_counter()
                engine.embedder.encode([q])
                embed_s.append(time.perf_counter() - started)
            paraphrase_s = []  # measured after the floor, so the floor's own measurement is as it always was
            for p in paraphrases[:120]:
                started = time.perf_counter()
                engine.embedder.encode([p["question"]])
                paraphrase_s.append(time.perf_counter() - started)
        out["embed_p50_ms"] = round(percentile(embed_s, 50) * 1000, 2)
        out["embed_p50_ms_paraphrases"] = round(percentile(paraphrase_s, 50) * 1000, 2)
        para_cos = pair_cosines([(qa[p["of"]], p["question"]) for p in paraphrases], vectors)
        near_cos = pair_cosines([(r["question"], r["near"]) for r in near], vectors)
        out["paraphrase_cosine"] = {q: round(float(np.percentile(para_cos, q)), 4) for q in (5, 25, 50)}
        out["near_miss_cosine"] = {q: round(float(np.percentile(near_cos, q)), 4) for q in (50, 95, 100)}
        out["paraphrase_pairs_above_threshold"] = round(float(np.mean(np.asarray(para_cos) >= args.threshold)), 4)
        out["near_miss_pairs_above_threshold"] = round(float(np.mean(np.asarray(near_cos) >= args.threshold)), 4)
        sweep = [
            simulate(asks, vectors, t)
            | {
                "paraphrase_pairs_above": round(float(np.mean(np.asarray(para_cos) >= t)), 4),
                "near_miss_pairs_above": round(float(np.mean(np.asarray(near_cos) >= t)), 4),
            }
            for t in SWEEP
        ]
        out["sweep"] = sweep
        fit = [s for s in sweep if s["precision"] >= 0.97]
        out["sweep_best_threshold"] = max(fit, key=lambda s: s["saved_share"])["threshold"] if fit else None

        gate = Gate(settings)
        keys = {
            name: gate.keys.create(role="reader", name=name, tenant=tenant, groups=groups, created_by="bench").secret
            for name, tenant, groups in (("acme", "acme", ()), ("beta", "beta", ()), ("acme-hr", "acme", ("hr",)))
        }
        gate.close()

        port = free_port()
        extra = {
            "RAGOPS_HOME": str(settings.home),
            "RAGOPS_SERVICE__RELOAD_INTERVAL_S": "1",
            "RAGOPS_ANSWER_CACHE__ENABLED": "true",
            "RAGOPS_ANSWER_CACHE__THRESHOLD": str(args.threshold),
        }
        if args.redis:
            extra["RAGOPS_ANSWER_CACHE__URL"] = args.redis
            out["backend"] = "redis"
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=child_env(settings, extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, server)
        responses: dict[str, dict[str, Any]] = {}  # request_id -> usage, for the ledger check

        def ask(client: httpx.Client, key: str, question: str) -> tuple[dict[str, Any], float]:
            started = time.perf_counter()
            r = client.post("/v1/query", json={"question": question}, headers={"Authorization": f"Bearer {keys[key]}"})
            elapsed = (time.perf_counter() - started) * 1000
            r.raise_for_status()
            body = r.json()
            responses[body["request_id"]] = body["usage"]
            return body, elapsed

        with httpx.Client(base_url=url, timeout=60) as client:
            for q in ["warm-up question one", "warm-up question two"]:
                ask(client, "beta", q)
            started_at = time.time()
            replay = Replay()
            logger.info("replay: %d requests", len(asks))
            for item in asks:
                body, ms = ask(client, "acme", item.text)
                replay.requests += 1
                if body["cached"] is None and body["blocked"]:
                    continue  # refused by the input screen: never stored, never a hit
                if body["cached"] is None:
                    replay.miss_ms.append(ms)
                    replay.answers.setdefault(item.of, set()).add(body["answer"])
                    replay.stored.append(item.text)
                    continue
                replay.hits += 1
                if body["cached"] == "semantic":
                    replay.semantic_ms.append(ms)
                    for stage, stage_ms in body["timings"].items():
                        replay.semantic_stages.setdefault(stage, []).append(stage_ms)
                if body["answer"] in replay.answers.get(item.of, ()):
                    replay.correct += 1
                elif len(replay.wrong) < 20:
                    replay.wrong.append({"question": item.text, "of": item.of, "answer": body["answer"][:120]})
            logger.info("exact repeats")
            exact_ms = []
            exact_misses = 0
            for q in replay.stored:
                body, ms = ask(client, "acme", q)
                if body["cached"] == "exact":
                    exact_ms.append(ms)
                else:
                    exact_misses += 1
            logger.info("isolation")
            probe = replay.stored[: args.checks]
            cross = sum(ask(client, key, q)[0]["cached"] is not None for key in ("beta", "acme-hr") for q in probe)
            logger.info("promotion")
            before = ask(client, "acme", probe[0])[0]["stack_version"]
            promoted = registry.register(config, description="bench/cache.py: the same stack, promoted again")
            registry.promote(promoted, actor="bench", reason="benchmark: stale hits after a promotion")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                body = ask(client, "beta", "Which version serves?")[0]
                if body["stack_version"] != before:
                    break
                time.sleep(0.5)
            stale = 0
            for q in probe:
                body = ask(client, "acme", q)[0]
                stale += body["cached"] is not None or body["stack_version"] == before
            finished_at = time.time() + 1
        server.terminate()
        server.wait(timeout=30)
        server = None

        store = RequestStore(settings.store.resolve_url(settings.home))
        try:
            mismatch = 0
            stored = {r.request_id: r for r in store.rows(started_at - 60, finished_at)}
            for request_id, usage in responses.items():
                row = stored.get(request_id)
                if row is None:  # every benchmark request must be in the ledger
                    mismatch += 1
                    continue
                same = (row.prompt_tokens, row.completion_tokens) == (
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                )
                mismatch += not (same and abs(row.cost_usd - usage["cost_usd"]) < 1e-9)
            by_key = store.spend("key", started_at - 60, finished_at)
        finally:
            store.close()
        ledger_tokens = sum(r.total_tokens for r in by_key)
        response_tokens = sum(u["total_tokens"] for u in responses.values())
        out.update(
            {
                "exact_hit_p50_ms": round(percentile(exact_ms, 50), 2),
                "exact_repeats_not_hit": exact_misses,
                "semantic_hit_p50_ms": round(percentile(replay.semantic_ms, 50), 2),
                "semantic_hits": len(replay.semantic_ms),
                "semantic_hit_stage_p50_ms": {
                    stage: round(percentile(values, 50), 2) for stage, values in replay.semantic_stages.items()
                },
                "miss_p50_ms": round(percentile(replay.miss_ms, 50), 2),
                "llm_calls_saved_share": round(replay.hits / replay.requests, 4),
                "cache_hit_precision": round(replay.correct / replay.hits, 4) if replay.hits else None,
                "wrong_hits": replay.wrong,
                "cross_tenant_hits": cross,
                "cross_checks": 2 * len(probe),
                "stale_hits_after_promote": stale,
                "stale_checks": len(probe),
                "ledger_mismatch": mismatch + abs(ledger_tokens - response_tokens),
                "ledger_requests": sum(r.requests for r in by_key),
                "responses": len(responses),
                "load_average": os.getloadavg(),
            }
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
    out["targets"] = {
        "llm_calls_saved_share >= 0.40": out["llm_calls_saved_share"] >= 0.40,
        "cache_hit_precision >= 0.97": (out["cache_hit_precision"] or 0) >= 0.97,
        "exact_hit_p50_ms <= 2": out["exact_hit_p50_ms"] <= 2,
        "semantic_hit_p50_ms <= embed_p50_ms + 3": out["semantic_hit_p50_ms"] <= out["embed_p50_ms"] + 3,
        "cross_tenant_hits == 0": out["cross_tenant_hits"] == 0,
        "stale_hits_after_promote == 0": out["stale_hits_after_promote"] == 0,
        "ledger_mismatch == 0": out["ledger_mismatch"] == 0,
    }
    text = json.dumps(out)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
