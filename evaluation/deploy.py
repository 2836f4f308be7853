"""Evaluate a registered stack, gate it against the champion, and promote only through the gate.

This is the one place that ties the evaluation to the registry, used by ``ragops eval``, ``ragops stack promote``,
the scheduled ``evaluate`` flow and (later) retraining:

* :func:`evaluate_stack` runs a stack over the test set, gates it (thresholds, and regression against the champion's
  *reference* evaluation: the run that let the champion through, recorded as the version tag ``gate_run_id``) and
  logs the run to MLflow.
* :func:`promote_gated` promotes a version only when it has a passing gate on the configured test set's current hash,
  run against the current champion. An override is explicit: it needs a reason and is recorded on the version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from evaluation.errors import EvaluationError, PromotionRefused
from evaluation.gate import Baseline, GateReport, lower_is_better, run_gate
from evaluation.metrics import PerQuery
from evaluation.significance import PairedComparison, compare
from evaluation.testsets import TestSet, load_testset
from evaluation.tracking import EvaluationRun, find_evaluations, load_baseline, load_run_scores, log_evaluation

if TYPE_CHECKING:
    from evaluation.judge import Judge
    from evaluation.runner import EvalResult
    from evaluation.settings import EvaluationSettings
    from pipelines.embed import Embedder
    from rag.stack import Promotion, StackRegistry

logger = logging.getLogger(__name__)

GATE_RUN_TAG = "gate_run_id"
GATE_SHA_TAG = "gate_testset_sha256"
OVERRIDE_TAG = "gate_override"


@dataclass(frozen=True)
class EvalOutcome:
    """A logged evaluation with its gate (None when the gate was not asked for)."""

    result: EvalResult
    run_id: str
    gate: GateReport | None
    baseline: Baseline | None

    def to_json(self) -> dict[str, object]:
        """What ``ragops eval --json`` prints."""
        out = self.result.to_json()
        out["run_id"] = self.run_id
        out["gate"] = self.gate.to_json() if self.gate is not None else None
        return out


def current_testset(settings: EvaluationSettings) -> TestSet:
    """The test set the gate uses (``RAGOPS_EVAL__TESTSET``)."""
    return load_testset(settings.eval.testset, split=settings.eval.split)


def build_judge(settings: EvaluationSettings) -> Judge | None:
    """The configured LLM judge, or None (its metrics are then reported as skipped)."""
    judge = settings.eval.judge
    if not (judge.base_url and judge.model):
        return None
    from evaluation.judge import Judge

    return Judge(judge)


def _reference_run(
    settings: EvaluationSettings, registry: StackRegistry, version: int, sha: str
) -> EvaluationRun | None:
    """The champion's reference evaluation on ``sha``: its gate run if recorded, else its oldest passing run."""
    runs = find_evaluations(settings, stack_version=version, testset_sha256=sha, newest_first=False)
    if not runs:
        return None
    tagged = registry.get(version).tags.get(GATE_RUN_TAG)
    for run in runs:
        if run.run_id == tagged:
            return run
    passed = [r for r in runs if r.gate == "passed"]
    return (passed or runs)[0]


def champion_baseline(
    settings: EvaluationSettings,
    registry: StackRegistry,
    testset: TestSet,
    *,
    embedder: Embedder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Baseline | None:
    """The champion's reference evaluation on ``testset``; evaluated (and logged) now if it has none."""
    champion = registry.champion_version()
    if champion is None:
        return None
    run = _reference_run(settings, registry, champion, testset.sha256)
    if run is None:
        logger.info("champion v%s has no evaluation on %s: evaluating it first", champion, testset.short_hash)
        result = run_stack(settings, registry, champion, testset, embedder=embedder, progress=progress)
        run_id = log_evaluation(
            settings, result, stack_params=registry.get(champion).config.flat_params(), champion_version=champion
        )
        return Baseline(version=champion, run_id=run_id, metrics=dict(result.metrics), per_query=result.per_query)
    return load_baseline(settings, run)


def run_stack(
    settings: EvaluationSettings,
    registry: StackRegistry,
    version: int,
    testset: TestSet,
    *,
    embedder: Embedder | None = None,
    judge: Judge | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Open a registered stack and evaluate it (nothing logged); ``embedder`` is reused only if it is the stack's."""
    from evaluation.runner import evaluate
    from rag.engine import RagEngine

    config = registry.get(version).config
    if embedder is not None and not config.embedder.matches(embedder.identity):
        embedder = None  # another model (a retrained candidate vs. its champion): the engine loads the stack's own
    with RagEngine.open(settings, config, embedder=embedder) as engine:
        return evaluate(engine, testset, settings.eval, stack_version=version, judge=judge, progress=progress)


def resolve_version(registry: StackRegistry, ref: str | int) -> int:
    """``champion`` or a version number."""
    if str(ref) == "champion":
        champion = registry.champion_version()
        if champion is None:
            raise EvaluationError("no stack holds the champion alias yet: name a version (ragops stack list)")
        return champion
    try:
        return int(str(ref))
    except ValueError:
        raise EvaluationError(f"--stack must be 'champion' or a version number, got {ref!r}") from None


def evaluate_stack(
    settings: EvaluationSettings,
    registry: StackRegistry,
    ref: str | int,
    *,
    testset: TestSet | None = None,
    gate: bool = True,
    embedder: Embedder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalOutcome:
    """Evaluate a registered stack on the gate's test set (or ``testset``), gate it, and log the run."""
    version = resolve_version(registry, ref)
    testset = testset or current_testset(settings)
    champion = registry.champion_version()
    baseline = None
    if gate:
        baseline = champion_baseline(settings, registry, testset, embedder=embedder, progress=progress)
    result = run_stack(
        settings, registry, version, testset, embedder=embedder, judge=build_judge(settings), progress=progress
    )
    report = run_gate(result, settings.eval, baseline=baseline) if gate else None
    run_id = log_evaluation(
        settings,
        result,
        gate=report,
        baseline=baseline,
        stack_params=registry.get(version).config.flat_params(),
        champion_version=champion,
    )
    if report is not None:
        logger.info("evaluation %s of stack v%s: %s", run_id, version, report.summary())
    return EvalOutcome(result=result, run_id=run_id, gate=report, baseline=baseline)


def promote_gated(
    settings: EvaluationSettings,
    registry: StackRegistry,
    version: int | str,
    *,
    actor: str,
    reason: str,
    override: str | None = None,
) -> Promotion:
    """Promote ``version`` if it passed the gate on the current test set against the current champion.

    Args:
        override: Promote without a passing gate; the text is the recorded justification.

    Raises:
        PromotionRefused: No passing gate (the message says what to run).
    """
    number = resolve_version(registry, version)
    registry.get(number)  # StackNotFound for an unknown version
    testset = current_testset(settings)
    champion = registry.champion_version()
    if champion == number:
        return registry.promote(number, actor=actor, reason=reason)
    passed = find_evaluations(settings, stack_version=number, testset_sha256=testset.sha256, gate="passed")
    valid = [r for r in passed if r.champion_version == champion]
    if valid:
        tags = {GATE_RUN_TAG: valid[0].run_id, GATE_SHA_TAG: testset.sha256}
        return registry.promote(number, actor=actor, reason=reason, tags=tags)
    if override is not None:
        if not override.strip():
            raise PromotionRefused("an override needs a reason (--override-reason)")
        logger.warning("stack v%s promoted WITHOUT a passing gate by %s: %s", number, actor, override)
        tags = {OVERRIDE_TAG: override.strip(), "gate_override_by": actor, GATE_SHA_TAG: testset.sha256}
        return registry.promote(number, actor=actor, reason=reason, tags=tags)
    stale = (
        f" (it passed against champion v{passed[0].champion_version}, but v{champion} is champion now)"
        if passed
        else ""
    )
    raise PromotionRefused(
        f"stack v{number} has no passing gate on test set {testset.name} ({testset.short_hash}) against the current "
        f"champion{stale}. Run `ragops eval --stack {number} --gate`, or promote anyway with "
        "`--force --override-reason TEXT` (recorded on the version)."
    )


@dataclass(frozen=True)
class VersionComparison:
    """Two versions' newest evaluations on the same test set, metric by metric, with paired tests."""

    testset: str
    sha: str
    baseline_version: int
    candidate_version: int
    baseline_run_id: str
    candidate_run_id: str
    comparisons: tuple[PairedComparison, ...]

    def to_json(self) -> dict[str, object]:
        """Plain JSON for ``ragops stack compare --json``."""
        return {
            "testset": self.testset,
            "testset_sha256": self.sha,
            "baseline": {"version": self.baseline_version, "run_id": self.baseline_run_id},
            "candidate": {"version": self.candidate_version, "run_id": self.candidate_run_id},
            "comparisons": [asdict(c) for c in self.comparisons],
        }


def compare_versions(
    settings: EvaluationSettings,
    registry: StackRegistry,
    baseline: str | int,
    candidate: str | int,
    *,
    testset: str | None = None,
) -> VersionComparison:
    """Compare the newest evaluations of two versions on the same test set hash (paired tests per metric)."""
    chosen = load_testset(testset, split=settings.eval.split) if testset else current_testset(settings)
    numbers = (resolve_version(registry, baseline), resolve_version(registry, candidate))
    runs: list[EvaluationRun] = []
    for number in numbers:
        found = find_evaluations(settings, stack_version=number, testset_sha256=chosen.sha256)
        if not found:
            raise EvaluationError(
                f"stack v{number} has no evaluation on {chosen.name} ({chosen.short_hash}); run "
                f"`ragops eval --stack {number}` first"
            )
        runs.append(found[0])
    (_, base), (_, cand) = (load_run_scores(settings, r.run_id) for r in runs)
    operational = [m for m in base.values if lower_is_better(m)]
    keep = {m: v for m, v in base.values.items() if m not in operational}
    return VersionComparison(
        testset=chosen.name,
        sha=chosen.sha256,
        baseline_version=numbers[0],
        candidate_version=numbers[1],
        baseline_run_id=runs[0].run_id,
        candidate_run_id=runs[1].run_id,
        comparisons=tuple(compare(PerQuery(values=keep), cand, n_resamples=settings.eval.resamples)),
    )
