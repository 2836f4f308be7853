"""The monitor: one window of served traffic turned into figures, rules and query drift.

Every run reads the request store's aggregate for the window (latency p50/p95/p99, error rate, cost per request,
guardrail trigger rate, abstention rate, thumbs-down share), tests whether the window's questions come from the
same distribution as the reference (the evaluation set's questions), applies the thresholds of
``RAGOPS_MONITOR__*`` and reports the breaches. :mod:`flows.monitor` logs each report to MLflow, posts breaches to
an Alertmanager-compatible webhook and fails the run.

Query drift is a two-sample test on question embeddings: the squared maximum mean discrepancy (MMD², Gretton et
al. 2012) with a Gaussian kernel whose bandwidth is the median pairwise distance of the pooled sample, and a
permutation p-value (the share of label shuffles whose MMD² reaches the observed one). It is a well-studied test
rather than a hand-made score, needs only numpy, and its p-value has the same meaning whatever the embedder.

Usage example::

    report = run_window(settings, store, embed=embedder.encode, reference=questions, until=time.time())
    report.breaches          # (Breach(rule="error_rate", value=0.08, threshold=0.02, ...),)
    report.figures()         # {"p99_ms": 812.0, "error_rate": 0.08, ..., "drift_p_value": 0.41}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from evaluation.settings import EvaluationSettings, MonitorSettings
    from rag.store import RequestStore, WindowStats

EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Drift:
    """The drift test of one window: MMD² of recent vs reference questions and its permutation p-value."""

    mmd2: float
    p_value: float
    recent: int
    reference: int
    drifted: bool


@dataclass(frozen=True)
class Breach:
    """One rule the window broke."""

    rule: str
    value: float
    threshold: float
    message: str
    severity: str = "warning"


@dataclass(frozen=True)
class MonitorReport:
    """What one monitor run found."""

    since: float
    until: float
    stats: WindowStats
    drift: Drift | None
    breaches: tuple[Breach, ...] = ()
    checked: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """No rule broke."""
        return not self.breaches

    def figures(self) -> dict[str, float]:
        """The window's numbers (what MLflow plots over time); latency percentiles only when there were any."""
        s = self.stats
        out = {
            "requests": float(s.requests),
            "error_rate": s.error_share,
            "cost_per_request_usd": s.cost_per_request,
            "guardrail_trigger_rate": s.guardrail_trigger_share,
            "abstention_rate": s.abstention_share,
            "thumbs_down_share": s.thumbs_down_share,
            "ratings": float(s.feedback_up + s.feedback_down),
        }
        for name, value in (("p50_ms", s.p50_ms), ("p95_ms", s.p95_ms), ("p99_ms", s.p99_ms)):
            if value is not None:
                out[name] = value
        if self.drift is not None:
            out["drift_mmd2"] = self.drift.mmd2
            out["drift_p_value"] = self.drift.p_value
        return out

    def message(self) -> str:
        """One line per breach (what the failed flow run says)."""
        return "; ".join(b.message for b in self.breaches) or "no breach"

    def to_json(self) -> dict[str, Any]:
        """The report as JSON (``ragops monitor run --json`` and the status file)."""
        return {
            "since": self.since,
            "until": self.until,
            "ok": self.ok,
            "figures": self.figures(),
            "drift": asdict(self.drift) if self.drift is not None else None,
            "breaches": [asdict(b) for b in self.breaches],
            "checked": list(self.checked),
        }


# ------------------------------------------------------------------------------------------------ query drift
def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(sq, 0.0)


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, *, permutations: int = 500, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD² between samples ``x`` and ``y`` (rows are vectors) with a Gaussian kernel, and its
    permutation p-value ``(1 + #{MMD²_perm >= MMD²}) / (1 + permutations)``.

    The bandwidth is the median heuristic on the pooled sample (fixed across permutations, as the test requires).
    """
    if len(x) < 2 or len(y) < 2:
        raise ValueError("the MMD test needs at least two vectors in each sample")
    pooled = np.vstack([x, y]).astype(np.float64)
    sq = _sq_distances(pooled, pooled)
    upper = sq[np.triu_indices(len(pooled), k=1)]
    bandwidth = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-sq / bandwidth)
    n, m = len(x), len(y)

    def mmd2(first: np.ndarray) -> float:
        mask = np.zeros(n + m, dtype=bool)
        mask[first] = True
        kxx = kernel[np.ix_(mask, mask)]
        kyy = kernel[np.ix_(~mask, ~mask)]
        kxy = kernel[np.ix_(mask, ~mask)]
        return float(
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        )

    observed = mmd2(np.arange(n))
    rng = np.random.default_rng(seed)
    reached = sum(mmd2(rng.permutation(n + m)[:n]) >= observed for _ in range(permutations))
    return observed, (1 + reached) / (1 + permutations)


def query_drift(
    recent: Sequence[str], reference: Sequence[str], embed: EmbedFn, config: MonitorSettings, *, seed: int = 0
) -> Drift | None:
    """Whether ``recent`` questions drifted from ``reference`` (None when the window has too few questions)."""
    if len(recent) < config.drift_min_questions or len(reference) < 2:
        return None
    rng = np.random.default_rng(seed)
    recent = _sample(recent, config.drift_max_questions, rng)
    reference = _sample(reference, config.drift_reference_size, rng)
    vectors = embed([*recent, *reference])
    mmd2, p_value = mmd_permutation_test(
        vectors[: len(recent)], vectors[len(recent) :], permutations=config.drift_permutations, seed=seed
    )
    return Drift(
        mmd2=round(mmd2, 6),
        p_value=round(p_value, 6),
        recent=len(recent),
        reference=len(reference),
        drifted=p_value < config.drift_alpha,
    )


def _sample(texts: Sequence[str], limit: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    return [texts[i] for i in sorted(rng.choice(len(texts), size=limit, replace=False))]


# ------------------------------------------------------------------------------------------------------ rules
def apply_rules(stats: WindowStats, drift: Drift | None, config: MonitorSettings) -> tuple[list[Breach], list[str]]:
    """The breaches of one window, and the names of the rules that had enough data to be checked."""
    breaches: list[Breach] = []
    checked: list[str] = []

    def rule(name: str, value: float | None, threshold: float, what: str, severity: str = "warning") -> None:
        if value is None:
            return
        checked.append(name)
        if value > threshold:
            breaches.append(Breach(name, round(value, 6), threshold, f"{what} {value:.4g} > {threshold:.4g}", severity))

    if stats.requests >= config.min_requests:
        rule("latency_p99_ms", stats.p99_ms, config.p99_ms_max, "latency p99 (ms)", "critical")
        rule("latency_p95_ms", stats.p95_ms, config.p95_ms_max, "latency p95 (ms)")
        rule("error_rate", stats.error_share, config.error_rate_max, "error rate", "critical")
        rule("cost_per_request_usd", stats.cost_per_request, config.cost_per_request_max_usd, "cost per request")
        rule(
            "guardrail_trigger_rate",
            stats.guardrail_trigger_share,
            config.guardrail_trigger_rate_max,
            "guardrail trigger rate",
        )
        rule("abstention_rate", stats.abstention_share, config.abstention_rate_max, "abstention rate")
    if stats.feedback_up + stats.feedback_down >= config.min_ratings:
        rule("thumbs_down_share", stats.thumbs_down_share, config.thumbs_down_share_max, "thumbs-down share")
    if drift is not None:
        checked.append("query_drift")
        if drift.drifted:
            breaches.append(
                Breach(
                    "query_drift",
                    drift.p_value,
                    config.drift_alpha,
                    f"query drift: recent questions differ from the reference (MMD² {drift.mmd2:.4g}, "
                    f"p = {drift.p_value:.4g} < {config.drift_alpha})",
                )
            )
    return breaches, checked


def run_window(
    settings: EvaluationSettings,
    store: RequestStore,
    *,
    embed: EmbedFn | None,
    reference: Sequence[str],
    until: float | None = None,
    window_minutes: float | None = None,
) -> MonitorReport:
    """Evaluate the window ending at ``until`` (now): figures, drift (skipped when ``embed`` is None), rules."""
    config = settings.monitor
    end = time.time() if until is None else until
    since = end - 60.0 * (window_minutes or config.window_minutes)
    store.flush()
    stats = store.window(since, end)
    drift = None
    if embed is not None and stats.requests >= config.drift_min_questions:
        questions = [r.question for r in store.rows(since, end) if r.question and r.status < 400]
        drift = query_drift(questions, reference, embed, config)
    breaches, checked = apply_rules(stats, drift, config)
    return MonitorReport(since, end, stats, drift, tuple(breaches), tuple(checked))


# ------------------------------------------------------------------------------------------- alerts and status
def alertmanager_alerts(report: MonitorReport, *, generator_url: str = "") -> list[dict[str, Any]]:
    """The breaches as Alertmanager's ``POST /api/v2/alerts`` body (a JSON list), also what its webhook receivers
    understand: ``labels`` (``alertname``, ``severity``, ``rule``), ``annotations`` (summary, value, threshold),
    ``startsAt``."""
    from datetime import UTC, datetime

    starts = datetime.fromtimestamp(report.until, tz=UTC).isoformat()
    return [
        {
            "labels": {
                "alertname": "Ragops" + "".join(p.capitalize() for p in b.rule.split("_")),
                "severity": b.severity,
                "rule": b.rule,
                "service": "ragops",
            },
            "annotations": {
                "summary": b.message,
                "value": str(b.value),
                "threshold": str(b.threshold),
                "window": f"{report.since:.0f}-{report.until:.0f}",
            },
            "startsAt": starts,
            "generatorURL": generator_url,
        }
        for b in report.breaches
    ]


def status_path(settings: EvaluationSettings) -> Path:
    """Where the last report is kept for ``ragops monitor status``."""
    return settings.home / "monitor" / "status.json"


def save_status(settings: EvaluationSettings, report: MonitorReport, *, run_id: str | None = None) -> Path:
    """Keep ``report`` as the last one (written whole, then renamed: a reader never sees half a file)."""
    path = status_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**report.to_json(), "mlflow_run_id": run_id}, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def load_status(settings: EvaluationSettings) -> dict[str, Any] | None:
    """The last saved report (None before the first run)."""
    path = status_path(settings)
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def log_window(settings: EvaluationSettings, report: MonitorReport) -> str:
    """Log ``report`` as one run of the monitoring experiment (figures as metrics, breaches as tags); its id."""
    from pipelines.tracking import configure_mlflow, ensure_experiment

    mlflow = configure_mlflow(settings)
    experiment_id = ensure_experiment(settings, settings.monitor.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"window ending {report.until:.0f}") as run:
        mlflow.set_tags(
            {
                "ragops.kind": "monitor",
                "ragops.monitor.ok": str(report.ok).lower(),
                "ragops.monitor.breaches": ",".join(b.rule for b in report.breaches) or "none",
            }
        )
        mlflow.log_params({"window_s": round(report.until - report.since, 3)})
        mlflow.log_metrics(report.figures(), timestamp=int(report.until * 1000))
        mlflow.log_dict(report.to_json(), "monitor_report.json")
        return str(run.info.run_id)


def post_alerts(url: str, alerts: list[dict[str, Any]], *, timeout_s: float = 10.0) -> None:
    """POST ``alerts`` (Alertmanager's JSON list) once; raises :class:`EvaluationError` on a transport error or a
    non-2xx answer (the caller retries)."""
    import httpx

    from evaluation.errors import EvaluationError

    try:
        response = httpx.post(url, json=alerts, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EvaluationError(f"alert webhook {url} unreachable: {exc}") from exc
    if response.status_code >= 300:
        raise EvaluationError(f"alert webhook {url} answered HTTP {response.status_code}: {response.text[:200]}")


def post_alerts_retried(url: str, alerts: list[dict[str, Any]], *, delays_s: Sequence[float] = (1, 5, 15)) -> None:
    """:func:`post_alerts`, tried again after each of ``delays_s`` (a receiver may be briefly down)."""
    from evaluation.errors import EvaluationError

    for delay in (*delays_s, None):
        try:
            post_alerts(url, alerts)
            return
        except EvaluationError:
            if delay is None:
                raise
            time.sleep(delay)


def reference_questions(settings: EvaluationSettings) -> list[str]:
    """The drift test's reference: the questions of the gate's test set (``RAGOPS_EVAL__TESTSET``)."""
    from evaluation.testsets import load_testset

    return [item.question for item in load_testset(settings.eval.testset, split=settings.eval.split).items]


def default_embed(settings: EvaluationSettings) -> EmbedFn:
    """The configured embedder's ``encode`` (the same model on both samples is all the drift test needs)."""
    from pipelines.embed import Embedder

    embedder = Embedder(settings.embedder, cache_dir=settings.cache_dir)
    return embedder.encode


def open_store(settings: EvaluationSettings) -> RequestStore:
    """The request store the service writes (``RAGOPS_STORE__*``); the monitor only reads and never purges."""
    from rag.store import RequestStore

    return RequestStore(settings.store.resolve_url(settings.home), retention_days=None, purge_interval_s=None)
