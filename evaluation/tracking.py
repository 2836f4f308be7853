"""Evaluations as MLflow runs in the experiment ``evaluation``, and finding them again.

Each run carries tags that make it findable by what was evaluated on what (``ragops.stack_version``,
``ragops.testset_sha256``, ``ragops.gate``), the aggregate metrics, the stack's parameters, a per-example table
(``examples.json``, browsable in the MLflow UI), the per-example scores the paired tests need (``per_query.json``),
the gate report (``gate.json``) and two plots: the latency histogram and the metric comparison with the champion.

Each question is also a trace of the run (question in, answer and cited documents out) with its scores as feedback
assessments: the layout ``mlflow.genai.evaluate`` gives its own runs, so MLflow 3's evaluation view of the run lists
the questions with a column per score, and a failed gate can be read question by question where MLflow users look.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.gate import Baseline, GateReport, lower_is_better
from evaluation.metrics import PerQuery

if TYPE_CHECKING:
    from mlflow.entities import Run

    from evaluation.runner import EvalResult
    from evaluation.settings import EvaluationSettings

logger = logging.getLogger(__name__)

EXPERIMENT = "evaluation"
PER_QUERY_FILE = "per_query.json"
TAG_VERSION = "ragops.stack_version"
TAG_SHA = "ragops.testset_sha256"
TAG_GATE = "ragops.gate"  # "passed" | "failed" | "not-run"
TAG_EXAMPLE = "ragops.example_id"
SCORE_SOURCE = "ragops.evaluation"
"""The assessments' source id: scores computed by :mod:`evaluation.metrics` (code, not a judge or a human)."""
_METRIC_NAME = re.compile(r"[^0-9A-Za-z_\-. /]")


def mlflow_metric_name(metric: str) -> str:
    """MLflow metric keys allow ``[A-Za-z0-9_-. /]``: ``ndcg@10`` is logged as ``ndcg_at_10``."""
    return _METRIC_NAME.sub("_", metric.replace("@", "_at_"))


@dataclass(frozen=True)
class EvaluationRun:
    """A logged evaluation, as found again in MLflow."""

    run_id: str
    stack_version: int | None
    testset_sha256: str
    gate: str
    metrics: dict[str, float]
    champion_version: int | None


def _plots(result: EvalResult, baseline: Baseline | None, folder: Path) -> list[Path]:
    """Latency histogram and a metric comparison bar chart (headless matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    fig, ax = plt.subplots(figsize=(7, 4))
    totals = [e.timings_ms["total"] for e in result.examples]
    ax.hist(totals, bins=min(40, max(5, len(totals) // 5)), color="#3b6ea8")
    for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        value = result.metrics.get(f"latency_total_{q}_ms")
        if value is not None:
            ax.axvline(value, color="#b03a2e", linestyle=style, label=f"{q} {value:.1f} ms")
    ax.set_xlabel("request latency (ms): embed + search + answer")
    ax.set_ylabel("questions")
    ax.set_title(f"{result.stack_name} on {result.testset_name}")
    ax.legend()
    fig.tight_layout()
    paths.append(folder / "latency_histogram.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    quality = sorted(m for m in result.metrics if not lower_is_better(m))
    if quality:
        fig, ax = plt.subplots(figsize=(8, max(3, 0.35 * len(quality))))
        ys = range(len(quality))
        ax.barh([y + 0.2 for y in ys], [result.metrics[m] for m in quality], height=0.4, label="this stack")
        if baseline is not None:
            ax.barh(
                [y - 0.2 for y in ys],
                [baseline.metrics.get(m, 0.0) for m in quality],
                height=0.4,
                label=f"champion v{baseline.version}",
            )
        ax.set_yticks(list(ys), quality)
        ax.set_xlim(0, 1.05)
        ax.legend(loc="lower right")
        ax.set_title("metrics (higher is better)")
        fig.tight_layout()
        paths.append(folder / "metric_comparison.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def log_evaluation(
    settings: EvaluationSettings,
    result: EvalResult,
    *,
    gate: GateReport | None = None,
    baseline: Baseline | None = None,
    stack_params: dict[str, str] | None = None,
    champion_version: int | None = None,
) -> str:
    """Log ``result`` (and the gate, if one ran) as a run in ``evaluation``; returns the run id."""
    import pandas as pd

    from pipelines.tracking import configure_mlflow, ensure_experiment

    mlflow = configure_mlflow(settings)
    experiment_id = ensure_experiment(settings, EXPERIMENT)
    version = "adhoc" if result.stack_version is None else str(result.stack_version)
    tags = {
        "ragops.kind": "evaluation",
        TAG_VERSION: version,
        TAG_SHA: result.testset_sha256,
        "ragops.testset": result.testset_name,
        "ragops.stack_name": result.stack_name,
        "ragops.stack_fingerprint": result.stack_fingerprint,
        "ragops.index_version": str(result.index_version),
        TAG_GATE: "not-run" if gate is None else ("passed" if gate.passed else "failed"),
        "ragops.champion_version": "none" if champion_version is None else str(champion_version),
    }
    nested = mlflow.active_run() is not None
    with (
        tempfile.TemporaryDirectory(prefix="ragops-eval-") as tmp,
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"eval {result.stack_name} v{version} on {result.testset_name}",
            nested=nested,
        ) as run,
    ):
        folder = Path(tmp)
        mlflow.set_tags(tags)
        params = {"testset.name": result.testset_name, "testset.kind": result.testset_kind}
        params["testset.examples"] = str(len(result.examples))
        params.update(stack_params or {})
        mlflow.log_params(params)
        mlflow.log_metrics({mlflow_metric_name(k): float(v) for k, v in result.metrics.items()})
        if gate is not None:
            mlflow.log_metric("gate_passed", 1.0 if gate.passed else 0.0)
            mlflow.log_dict(gate.to_json(), "gate.json")
        mlflow.log_dict({"skipped": dict(result.skipped), **result.to_json()}, "summary.json")
        mlflow.log_dict({m: dict(v) for m, v in result.per_query.values.items()}, PER_QUERY_FILE)
        mlflow.log_table(pd.DataFrame([e.row() for e in result.examples]), artifact_file="examples.json")
        if settings.eval.example_traces:
            log_example_traces(result, experiment_id, str(run.info.run_id))
        for path in _plots(result, baseline, folder):
            mlflow.log_artifact(str(path), artifact_path="plots")
        return str(run.info.run_id)


def log_example_traces(result: EvalResult, experiment_id: str, run_id: str) -> int:
    """Each example of ``result`` as a trace of the active run ``run_id``, its finite scores as ``CODE`` feedback
    assessments (see the module docstring); returns how many traces were written."""
    import math

    import mlflow
    from mlflow.entities import AssessmentSource
    from mlflow.tracing.constant import AssessmentMetadataKey

    traced: list[tuple[str, dict[str, float]]] = []
    now_ns = time.time_ns()
    for example in result.examples:
        span = mlflow.start_span_no_context(
            "example",
            span_type="CHAIN",
            inputs={"question": example.question},
            attributes={"example_id": example.id, "tags": ",".join(example.tags)},
            tags={TAG_EXAMPLE: example.id},
            experiment_id=experiment_id,
            start_time_ns=now_ns - int(example.timings_ms.get("total", 0.0) * 1e6),
        )
        span.end(
            outputs={
                "answer": example.answer,
                "abstained": example.abstained,
                "cited_doc_ids": list(example.cited_doc_ids),
                "problems": list(example.problems),
            },
            end_time_ns=now_ns,
        )
        scores = {name: float(value) for name, value in example.scores.items() if math.isfinite(value)}
        traced.append((span.trace_id, scores))
    mlflow.flush_trace_async_logging()  # the assessments need their traces written
    source = AssessmentSource(source_type="CODE", source_id=SCORE_SOURCE)
    for trace_id, scores in traced:
        for name, value in scores.items():
            mlflow.log_feedback(
                trace_id=trace_id,
                name=name,
                value=value,
                source=source,
                metadata={AssessmentMetadataKey.SOURCE_RUN_ID: run_id},
            )
    return len(traced)


def _to_run(run: Run) -> EvaluationRun:
    tags = run.data.tags
    version = tags.get(TAG_VERSION, "adhoc")
    champion = tags.get("ragops.champion_version", "none")
    return EvaluationRun(
        run_id=run.info.run_id,
        stack_version=int(version) if version.isdigit() else None,
        testset_sha256=tags.get(TAG_SHA, ""),
        gate=tags.get(TAG_GATE, "not-run"),
        metrics=dict(run.data.metrics),
        champion_version=int(champion) if champion.isdigit() else None,
    )


def find_evaluations(
    settings: EvaluationSettings,
    *,
    stack_version: int,
    testset_sha256: str,
    gate: str | None = None,
    newest_first: bool = True,
) -> list[EvaluationRun]:
    """Logged evaluations of one stack version on one test set hash (optionally only passed/failed gates)."""
    from pipelines.tracking import configure_mlflow

    mlflow = configure_mlflow(settings)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        return []
    query = f"tags.`{TAG_VERSION}` = '{stack_version}' and tags.`{TAG_SHA}` = '{testset_sha256}'"
    if gate is not None:
        query += f" and tags.`{TAG_GATE}` = '{gate}'"
    order = "DESC" if newest_first else "ASC"
    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string=query,
        order_by=[f"attributes.start_time {order}"],
        output_format="list",
    )
    return [_to_run(r) for r in runs]


def load_run_scores(settings: EvaluationSettings, run_id: str) -> tuple[dict[str, float], PerQuery]:
    """Aggregate metrics (our names, from ``summary.json``) and per-example scores of a logged evaluation."""
    from pipelines.tracking import configure_mlflow

    mlflow = configure_mlflow(settings)
    per_query: Any = mlflow.artifacts.load_dict(f"runs:/{run_id}/{PER_QUERY_FILE}")
    summary: Any = mlflow.artifacts.load_dict(f"runs:/{run_id}/summary.json")
    metrics = {str(k): float(v) for k, v in summary.get("metrics", {}).items()}
    values = {str(m): {str(q): float(s) for q, s in scores.items()} for m, scores in per_query.items()}
    return metrics, PerQuery(values=values)


def load_baseline(settings: EvaluationSettings, run: EvaluationRun) -> Baseline:
    """A logged evaluation as the gate's baseline."""
    metrics, per_query = load_run_scores(settings, run.run_id)
    assert run.stack_version is not None
    return Baseline(version=run.stack_version, run_id=run.run_id, metrics=metrics, per_query=per_query)
