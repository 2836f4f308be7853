"""The A/B half of ``bench/review.py``: online experiments through the real service, with simulated users.

1. The demo corpus is ingested into a temporary ``RAGOPS_HOME``; the champion is the dense extractive stack
   (top 5), the "worse" challenger the same stack with top-k 1, the "identical" challenger the champion's
   configuration registered again. ``callers`` reader keys are created (the experiment is sticky per key).
2. ``ragops serve`` runs on loopback. Each simulated request: a random caller asks a random answerable demo_qa
   question; the answer is correct when it contains one of the item's reference answers (the containment metric of
   the gate); with probability ``rate_share`` the caller rates it, up with probability ``p_agree`` when correct and
   down with probability ``p_agree`` when not (feedback that follows correctness, with noise).
3. Worse challenger (share ``share``): every ``look_every`` requests the monitor's analysis
   (:func:`evaluation.ab.analyse`, on the request store the service writes) looks at the experiment;
   ``ab_detected_worse_arm`` is whether the verdict became ``challenger_worse`` within ``requests`` requests and
   ``ab_detected_at_requests`` when.
4. Identical arms: ``repeats`` experiments, each a new experiment id (a new split of the callers) of ``requests``
   requests with the same looks; ``ab_false_alarm`` counts experiments whose verdict was anything but
   ``no_difference``/``collecting`` at any look (a difference flagged on any metric, guard metrics included).
5. ``ab_sticky_violations``: callers answered by more than one stack version within an experiment, counted both
   from the responses and from the request store.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.ab")


@dataclass(frozen=True)
class AbParams:
    """The experiment design (see the module docstring)."""

    requests: int = 2_000
    repeats: int = 20
    share: float = 0.5
    callers: int = 200
    rate_share: float = 0.5
    p_agree: float = 0.9
    look_every: int = 100
    alpha: float = 0.05
    seed: int = 0


@dataclass
class Run:
    """One experiment's outcome."""

    experiment: str
    requests: int = 0
    detected_at: int | None = None
    verdicts: tuple[str, ...] = ()
    sticky_violations_responses: int = 0
    sticky_violations_store: int = 0
    correct: dict[int, list[int]] | None = None
    seconds: float = 0.0


def _questions() -> list[tuple[str, tuple[str, ...]]]:
    from evaluation.testsets import load_testset

    return [(i.question, i.answers) for i in load_testset("demo_qa").items if i.answers and not i.unanswerable]


def _experiment_run(
    *,
    url: str,
    keys: dict[str, str],
    settings: Any,
    registry: Any,
    challenger: int,
    params: AbParams,
    rng: random.Random,
    stop_on_detection: bool,
) -> Run:
    import httpx

    from evaluation.ab import analyse, settle_seconds
    from evaluation.metrics import containment
    from evaluation.monitor import open_store

    questions = _questions()
    experiment = registry.start_experiment(
        challenger, share=params.share, alpha=params.alpha, actor="bench", at=time.time()
    )
    run = Run(experiment=experiment.id, correct={experiment.champion: [], experiment.challenger: []})
    names = list(keys)
    with httpx.Client(base_url=url, timeout=60) as client:
        _wait_for_arms(client, keys, experiment)
        begun = time.perf_counter()
        seen: dict[str, set[int]] = defaultdict(set)
        verdicts: list[str] = []
        with open_store(settings) as store:
            for n in range(1, params.requests + 1):
                name = rng.choice(names)
                question, answers = rng.choice(questions)
                auth = {"Authorization": f"Bearer {keys[name]}"}
                body = client.post("/v1/query", json={"question": question}, headers=auth).raise_for_status().json()
                version = int(body["stack_version"])
                seen[name].add(version)
                good = containment(body["answer"], answers) >= 1.0 and not body["blocked"]
                assert run.correct is not None
                run.correct.setdefault(version, []).append(int(good))
                if rng.random() < params.rate_share and not body["blocked"]:  # a refusal cannot be rated
                    agree = rng.random() < params.p_agree
                    rating = "up" if good == agree else "down"
                    rated = client.post(
                        "/v1/feedback", json={"request_id": body["request_id"], "rating": rating}, headers=auth
                    )
                    if rated.status_code != 200:
                        raise RuntimeError(f"feedback on {body['request_id']} refused: {rated.text}")
                if n % params.look_every == 0:
                    time.sleep(0.3)  # the service's store writer batches; let it land
                    report = analyse(store, experiment, now=time.time() + 1, settle_s=settle_seconds(settings))
                    verdicts.append(report.verdict)
                    run.sticky_violations_store = report.sticky_violations
                    if report.verdict == "challenger_worse" and run.detected_at is None:
                        run.detected_at = n
                        if stop_on_detection:
                            run.requests = n
                            break
                run.requests = n
        run.verdicts = tuple(verdicts)
        run.sticky_violations_responses = sum(len(v) > 1 for v in seen.values())
        run.seconds = time.perf_counter() - begun
        registry.stop_experiment(actor="bench")
        _wait_for_arms(client, keys, experiment, serving=False)
    return run


def _wait_for_arms(
    client: Any, keys: dict[str, str], experiment: Any, *, serving: bool = True, timeout_s: float = 60
) -> None:
    """Until the service answers a caller of the challenger's arm with the challenger (``serving``) or, after the
    experiment stopped, with the champion again: the service picks changes up at its next registry poll, and the
    next experiment (with the same challenger version) must not start while this one is still served."""
    name = next(n for n in keys if experiment.arm(n) == "challenger")
    want = experiment.challenger if serving else experiment.champion
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.post(
            "/v1/query", json={"question": "Which stack answers?"}, headers={"Authorization": f"Bearer {keys[name]}"}
        ).json()
        if body.get("stack_version") == want:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the service did not {'start' if serving else 'stop'} serving {experiment.id} in {timeout_s} s")


def measure_ab(params: AbParams, *, home: Path, repo: Path) -> dict[str, Any]:
    """Run both experiments against a real service and return the ``ab_*`` figures."""
    from bench._common import demo_platform
    from bench.query import free_port, wait_ready
    from pipelines.env import child_env
    from rag.security.gate import Gate

    settings, registry, champion, v_champion = demo_platform(home, name="bench-ab", reload_interval_s=1.0)
    worse = champion.model_copy(
        update={"name": "bench-ab-top1", "retrieval": champion.retrieval.model_copy(update={"top_k": 1})}
    )
    v_worse = registry.register(worse, description="bench/review.py: top-k 1 challenger")
    v_same = registry.register(champion, description="bench/review.py: the champion again")
    gate = Gate(settings)
    keys = {
        f"caller-{i}": str(gate.keys.create(role="reader", name=f"caller-{i}", created_by="bench").secret)
        for i in range(params.callers)
    }
    gate.close()
    port = free_port()
    env = child_env(settings, {"RAGOPS_HOME": str(home), "RAGOPS_SERVICE__RELOAD_INTERVAL_S": "1"})
    log = (home.parent / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(port)],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(params.seed)
    try:
        wait_ready(url, server)
        logger.info("worse challenger v%s against v%s", v_worse, v_champion)
        worse_run = _experiment_run(
            url=url,
            keys=keys,
            settings=settings,
            registry=registry,
            challenger=v_worse,
            params=params,
            rng=rng,
            stop_on_detection=False,
        )
        same_runs: list[Run] = []
        for i in range(params.repeats):
            logger.info("identical arms %d/%d", i + 1, params.repeats)
            same_runs.append(
                _experiment_run(
                    url=url,
                    keys=keys,
                    settings=settings,
                    registry=registry,
                    challenger=v_same,
                    params=params,
                    rng=rng,
                    stop_on_detection=False,
                )
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert worse_run.correct is not None
    accuracy = {str(v): round(sum(c) / len(c), 4) for v, c in worse_run.correct.items() if c}
    flagged = [r for r in same_runs if any(v not in ("no_difference", "collecting") for v in r.verdicts)]
    all_runs = [worse_run, *same_runs]
    requests = sum(r.requests for r in all_runs)
    return {
        "ab_requests": requests,
        "ab_detected_worse_arm": worse_run.detected_at is not None,
        "ab_detected_at_requests": worse_run.detected_at,
        "ab_worse_verdicts": list(worse_run.verdicts),
        "ab_accuracy_by_version": accuracy,
        "ab_false_alarm": len(flagged),
        "ab_false_alarm_verdicts": [list(r.verdicts) for r in flagged],
        "ab_identical_runs": len(same_runs),
        "ab_sticky_violations": sum(r.sticky_violations_responses + r.sticky_violations_store for r in all_runs),
        "ab_sticky_violations_by_run": [[r.sticky_violations_responses, r.sticky_violations_store] for r in all_runs],
        "ab_requests_per_s": round(requests / sum(r.seconds for r in all_runs), 1),
        "ab_params": {
            "requests": params.requests,
            "share": params.share,
            "callers": params.callers,
            "rate_share": params.rate_share,
            "p_agree": params.p_agree,
            "look_every": params.look_every,
            "alpha": params.alpha,
        },
    }
