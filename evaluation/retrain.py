"""The retraining cycle: train the embedder, build a shadow index, gate the candidate, promote or keep the champion.

1. **Assemble** the training set from labelled pairs, feedback and (when labels are scarce) synthetic pairs, mined
   against the champion's own index, with the gate's test questions excluded; validate it with great-expectations.
2. **Fine-tune** (:func:`evaluation.finetune.finetune`) in an MLflow run of the experiment ``finetune`` (parameters,
   loss curve, training-set validation) and register the model as a version of ``embedder``.
3. **Shadow index**: the champion's collection re-embedded into ``<collection>-ft<N>`` while the champion keeps
   serving from its own (:func:`pipelines.reembed.build_shadow_index`).
4. **Candidate**: the champion's stack with the new embedder and collection, registered as a ``rag-stack`` version
   holding the alias ``challenger``, evaluated through the deployment gate against the champion.
5. **Decide**: promote when the gate passes (no metric regressed beyond tolerance) and the primary metric improved by
   at least the margin, significantly (paired permutation test at the gate's alpha); otherwise keep the champion,
   keep the candidate for inspection and record why on it.
6. **Garbage-collect** fine-tuned embedders, shadow collections and their stack versions beyond the newest ``keep``,
   never those of the champion or the previous champion (so a rollback always finds its model and index).
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.deploy import current_testset, evaluate_stack, promote_gated
from evaluation.errors import BadTrainingSet, RetrainError
from evaluation.trainset import (
    Exclusions,
    PairMiner,
    TrainingSet,
    TrainingSetReport,
    TrainPair,
    deduplicate,
    default_training_data,
    exclude,
    load_labelled,
    validate_training_set,
)
from pipelines.ingest import NoProgress, Progress

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from evaluation.deploy import EvalOutcome
    from evaluation.finetune import FinetunedModel
    from evaluation.settings import EvaluationSettings, FinetuneSettings
    from evaluation.synthetic import SyntheticReport
    from pipelines.reembed import StoredChunk
    from rag.embedders import EmbedderVersion
    from rag.stack import StackRegistry
    from rag.types import StackConfig

logger = logging.getLogger(__name__)

_FT_SUFFIX = re.compile(r"-ft\d+$")
EMBEDDER_VERSION_TAG = "retrain.embedder_version"
DECISION_TAG = "retrain.decision"
REASON_TAG = "retrain.reason"


@dataclass(frozen=True)
class RetrainRequest:
    """What one cycle should do beyond the settings.

    Attributes:
        train: Labelled data (BEIR folder or JSONL) instead of ``RAGOPS_FINETUNE__TRAIN``.
        epochs: Instead of ``RAGOPS_FINETUNE__EPOCHS``.
        shuffle_labels: Train on deliberately wrong pairs (positives permuted): a drill that the gate refuses it.
        no_labels: Ignore labelled data (as a team with none would run): feedback and synthetic pairs only.
        promote: False registers and evaluates the candidate but never promotes it.
        actor: Recorded as who promoted.
    """

    train: str | None = None
    epochs: int | None = None
    shuffle_labels: bool = False
    no_labels: bool = False
    promote: bool = True
    actor: str = "retrain"


@dataclass(frozen=True)
class RetrainOutcome:
    """What a cycle did and decided, with its timings (the ``ragops finetune --json`` output)."""

    champion_before: int
    champion_after: int
    candidate: int
    embedder_version: int
    collection: str
    finetune_run_id: str
    eval_run_id: str
    training: dict[str, Any]
    primary_metric: str
    champion_score: float | None
    candidate_score: float | None
    improvement: float | None
    p_value: float | None
    gate_passed: bool
    gate_summary: str
    promoted: bool
    reason: str
    seconds: dict[str, float]
    garbage_collected: dict[str, list[Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        from dataclasses import asdict

        return asdict(self)


def family(collection: str) -> str:
    """The collection a shadow index derives from: ``docs-ft3`` -> ``docs``."""
    return _FT_SUFFIX.sub("", collection)


def assemble(
    settings: EvaluationSettings,
    champion: StackConfig,
    request: RetrainRequest,
    *,
    progress: Progress,
) -> tuple[TrainingSet, Exclusions]:
    """The training set of one cycle, with the test questions it must not contain (module docstring, step 1).

    Raises:
        BadTrainingSet: Nothing to train on.
    """
    from pipelines.chunk import Chunker
    from pipelines.reembed import iter_chunks
    from pipelines.settings import ChunkingSettings
    from rag.engine import RagEngine
    from rag.feedback import FeedbackStore

    ft = settings.finetune
    exclusions = Exclusions.from_testset(current_testset(settings))
    dropped: Counter[str] = Counter()
    pairs: list[TrainPair] = []
    with RagEngine.open(settings, champion) as engine:
        chunks = list(iter_chunks(engine.reader, with_sparse=False))
        params = engine.reader.version.chunking
        chunker = Chunker(
            ChunkingSettings(chunk_size=params.chunk_size, chunk_overlap=params.chunk_overlap), engine.embedder
        )

        def embed_text(chunk: Any) -> str:
            return chunker.embed_text_of(chunk.title, chunk.text)

        miner = PairMiner(
            engine,
            chunks,
            embed_text=embed_text,
            negatives=ft.hard_negatives,
            depth=ft.mine_depth,
            skip=ft.mine_skip,
        )
        source = (
            None
            if request.no_labels
            else default_training_data(request.train or ft.train, settings.eval.testset, ft.train_split)
        )
        if source:
            labelled = []
            for query in load_labelled(source, split=ft.train_split):
                why = exclusions.reason(query.query_id, query.query)
                if why:
                    dropped[f"labelled: {why}"] += 1
                else:
                    labelled.append(query)
            progress.start("mine", len(labelled))
            found, lost = miner.labelled(labelled, progress=lambda n: progress.advance("mine", n))
            pairs += found
            dropped.update(lost)
        if ft.feedback:
            found, lost = miner.feedback(FeedbackStore(settings).training_pairs())
            pairs += found
            dropped.update(lost)
        report = None
        if len(pairs) < ft.synthetic_min_pairs and ft.synthetic_max_pairs:
            found, report = synthetic_source(
                settings, miner, chunks, embed_text=embed_text, dropped=dropped, progress=progress
            )
            pairs += found
    pairs = deduplicate(exclude(pairs, exclusions, dropped), dropped)
    training = TrainingSet(pairs=tuple(pairs), dropped={k: v for k, v in dropped.items() if v}, synthetic=report)
    if request.shuffle_labels:
        training = training.shuffled_labels(ft.seed)
    if len(training.pairs) < 2:
        raise BadTrainingSet(
            "nothing to train on: no labelled pairs (RAGOPS_FINETUNE__TRAIN or --train), no feedback and no "
            "synthetic pairs from the index"
        )
    return training, exclusions


def synthetic_source(
    settings: EvaluationSettings,
    miner: PairMiner,
    chunks: Sequence[StoredChunk],
    *,
    embed_text: Callable[[StoredChunk], str],
    dropped: Counter[str],
    progress: Progress,
) -> tuple[list[TrainPair], SyntheticReport]:
    """Synthetic pairs from the corpus (:mod:`evaluation.synthetic`): generated, filtered, mined, capped."""
    from evaluation import synthetic as syn

    ft = settings.finetune
    spec = ft.synthetic
    llm = syn.question_llm(spec, settings.local_llm, settings.cache_dir)
    if llm is not None:
        progress.start("questions", min(spec.llm_chunks, len(chunks)))
    candidates, generation = syn.synthetic_candidates(
        chunks,
        spec,
        llm=llm,
        embed_text=embed_text,
        limit=ft.synthetic_max_pairs,
        seed=ft.seed,
        progress=(lambda n: progress.advance("questions", n)) if llm is not None else None,
    )
    generated = syn.counts(candidates)
    kept, rankings, vectors = syn.filtered(
        candidates,
        miner,
        spec,
        dropped,
        on_total=lambda n: progress.start("round-trip", n),
        progress=lambda n: progress.advance("round-trip", n),
    )
    cap = ft.synthetic_max_pairs  # capped before mining: negatives are not mined for pairs that are cut
    mined, refused = syn.with_negatives(
        kept[:cap],
        rankings[:cap],
        vectors[:cap],
        miner,
        negatives=ft.hard_negatives,
        skip=ft.mine_skip,
        margin=spec.negative_margin,
    )
    if refused:
        dropped["synthetic negative: scored like the positive (likely false negative)"] += refused
    pairs = [
        TrainPair(
            m.candidate.query,
            m.candidate.passage,
            m.negatives,
            "synthetic",
            m.candidate.query_id,
            m.candidate.chunk.chunk_id,
        )
        for m in mined
    ]
    report = syn.SyntheticReport(
        generated=generated,
        kept=syn.counts(m.candidate for m in mined),
        model=generation.model if generation else None,
        llm_seconds=generation.seconds if generation else 0.0,
        shots=generation.shots if generation else (),
        examples=syn.examples([m.candidate for m in mined]),
        false_negatives=refused,
    )
    logger.info("synthetic pairs: generated %s, kept %s", report.generated, report.kept)
    return pairs, report


def _log_training(mlflow: Any, training: TrainingSet, report: Any, model: FinetunedModel) -> None:
    mlflow.log_params(model.params)
    mlflow.log_params(
        {"training_sha256": training.sha256, **{f"pairs_{k}": str(v) for k, v in training.counts().items()}}
    )
    for step, loss in model.losses:
        mlflow.log_metric("loss", loss, step=step)
    mlflow.log_metrics({"train_seconds": model.seconds, "steps": float(model.steps), "pairs": float(model.pairs)})
    mlflow.log_dict(report.to_json(), "training_validation.json")
    mlflow.log_dict({"dropped": dict(training.dropped), "counts": training.counts()}, "training_set.json")
    if training.synthetic is not None:
        report_json = training.synthetic.to_json()
        mlflow.log_dict(report_json, "synthetic.json")
        mlflow.log_metrics(
            {f"synthetic_generated_{k}": float(v) for k, v in training.synthetic.generated.items()}
            | {f"synthetic_kept_{k}": float(v) for k, v in training.synthetic.kept.items()}
            | {"synthetic_llm_seconds": training.synthetic.llm_seconds}
        )
        for reason, n in training.dropped.items():
            if reason.startswith("synthetic"):
                key = re.sub(r"[^A-Za-z0-9_]+", "_", reason).strip("_")[:200]
                mlflow.log_metric(f"dropped_{key}", float(n))
    if model.losses:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in model.losses], [v for _, v in model.losses], marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel("MultipleNegativesRankingLoss")
        ax.set_title(f"fine-tuning loss ({model.pairs} pairs, {model.epochs} epochs)")
        fig.tight_layout()
        mlflow.log_figure(fig, "loss_curve.png")
        plt.close(fig)


def training_settings(ft: FinetuneSettings, training: TrainingSet) -> FinetuneSettings:
    """``ft``, with the conservative epochs and learning rate of the synthetic settings when most pairs are
    synthetic: generated pairs are noisier than labels, and a gentler run forgets less of what the base model knew."""
    synthetic = training.counts().get("synthetic", 0)
    if synthetic * 2 <= len(training.pairs):
        return ft
    return ft.model_copy(update={"epochs": ft.synthetic.epochs, "learning_rate": ft.synthetic.learning_rate})


def validated(training: TrainingSet, exclusions: Exclusions) -> TrainingSetReport:
    """The great-expectations report of a training set that passed it.

    Raises:
        BadTrainingSet: The suite rejected the set (nothing is trained); the message names the failed checks.
    """
    report = validate_training_set(training, exclusions)
    if not report.success:
        raise BadTrainingSet("the training set failed validation: " + "; ".join(report.failures()))
    return report


def train_embedder(
    settings: EvaluationSettings,
    champion: StackConfig,
    training: TrainingSet,
    report: TrainingSetReport,
    request: RetrainRequest,
    *,
    progress: Progress,
) -> tuple[EmbedderVersion, str, FinetunedModel]:
    """Fine-tune, log and register; returns (the registered embedder, the MLflow run id, the model)."""
    from evaluation.finetune import finetune
    from pipelines.embed import weights_hash
    from pipelines.tracking import configure_mlflow, ensure_experiment
    from rag.embedders import EXPERIMENT, EmbedderRegistry, model_folder

    ft = training_settings(settings.finetune, training)
    if request.epochs:
        ft = ft.model_copy(update={"epochs": request.epochs})
    if ft.base == "champion":
        base = model_folder(settings, champion.embedder)
    else:
        from pipelines.embed import default_model_path

        base = settings.embedder.model_path or default_model_path()
    mlflow = configure_mlflow(settings)
    experiment = ensure_experiment(settings, EXPERIMENT)
    work = settings.models_dir / "training"
    work.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="run-", dir=work) as scratch,
        mlflow.start_run(experiment_id=experiment, run_name="finetune-embedder") as run,
    ):
        mlflow.set_tags({"ragops.kind": "finetune", "ragops.shuffled_labels": str(request.shuffle_labels).lower()})
        done = {"steps": -1}

        def step(now: int, total: int) -> None:
            if done["steps"] < 0:  # the trainer knows the number of steps (samplers may drop a ragged batch)
                progress.start("train", total)
                done["steps"] = 0
            progress.advance("train", now - done["steps"])
            done["steps"] = now

        model = finetune(training.pairs, base=Path(base), output=Path(scratch) / "model", settings=ft, progress=step)
        _log_training(mlflow, training, report, model)
        sha = weights_hash(model.path)
        version = EmbedderRegistry(settings).log_and_register(
            model.path,
            weights_sha256=sha,
            tags={"training_sha256": training.sha256, "pairs": str(len(training.pairs)), "base": str(base)},
        )
        mlflow.set_tag("ragops.embedder_version", str(version.version))
    return version, run.info.run_id, model


def _decide(
    settings: EvaluationSettings, outcome: EvalOutcome, request: RetrainRequest
) -> tuple[bool, str, float | None, float | None, float | None, float | None]:
    """(promote?, why, champion score, candidate score, improvement, p-value) for the primary metric."""
    ft = settings.finetune
    metric = ft.primary_metric
    gate = outcome.gate
    candidate = outcome.result.metrics.get(metric)
    champion = outcome.baseline.metrics.get(metric) if outcome.baseline else None
    comparison = next((c for c in (gate.comparisons if gate else ()) if c.metric == metric), None)
    p_value = comparison.p_value if comparison else None
    if candidate is None or champion is None:
        return False, f"{metric} was not measured on both stacks", champion, candidate, None, p_value
    improvement = candidate - champion
    numbers = f"{metric} {candidate:.4f} vs champion {champion:.4f} ({improvement:+.4f}"
    numbers += f", p={p_value:.3g})" if p_value is not None else ")"
    if gate is None or not gate.passed:
        why = "; ".join(f"{c.metric}: {c.reason}" for c in (gate.failures if gate else ()))
        return False, f"gate failed: {why}", champion, candidate, improvement, p_value
    if improvement < ft.margin:
        return False, f"not better by the margin {ft.margin}: {numbers}", champion, candidate, improvement, p_value
    alpha = settings.eval.alpha
    if ft.require_significance and (p_value is None or p_value >= alpha):
        return (
            False,
            f"improvement not significant at alpha {alpha}: {numbers}",
            champion,
            candidate,
            improvement,
            p_value,
        )
    if not request.promote:
        return False, f"better, but promotion was not asked for: {numbers}", champion, candidate, improvement, p_value
    return True, f"better: {numbers}", champion, candidate, improvement, p_value


def collect_garbage(settings: EvaluationSettings, registry: StackRegistry) -> dict[str, list[Any]]:
    """Keep the newest ``keep`` fine-tuned embedders, and always the champion's and previous champion's.

    Deletes older embedder versions, their shadow collections and the stack versions that read them.
    """
    from pipelines.index import VectorIndex
    from rag.embedders import EmbedderRegistry

    keep = settings.finetune.keep
    protected_versions = [v for v in (registry.champion_version(), registry.previous_champion_version()) if v]
    protected = [registry.get(v).config for v in protected_versions]
    shas = {c.embedder.weights_sha256 for c in protected}
    embedders = EmbedderRegistry(settings)
    removed = embedders.gc(keep=keep, protect=shas)
    uris = {f"models:/embedder/{n}" for n in removed}
    dropped_stacks: list[int] = []
    dropped_collections: set[str] = set()
    for stack in registry.list():
        if stack.config.embedder.model_uri in uris and stack.version not in protected_versions:
            registry.delete(stack.version)
            dropped_stacks.append(stack.version)
            dropped_collections.add(stack.config.collection)
    in_use = {c.collection for c in protected}
    for name in sorted(dropped_collections - in_use):
        if _FT_SUFFIX.search(name):
            VectorIndex(settings, collection=name).drop()
    return {
        "embedder_versions": removed,
        "stack_versions": dropped_stacks,
        "collections": sorted(dropped_collections - in_use),
    }


def retrain(
    settings: EvaluationSettings, request: RetrainRequest | None = None, *, progress: Progress | None = None
) -> RetrainOutcome:
    """Run one retraining cycle (module docstring) and return what it did.

    Raises:
        RetrainError: No champion to improve on.
        BadTrainingSet: No usable training data, or it failed validation.
    """
    from pipelines.reembed import build_shadow_index
    from rag.embedders import open_embedder
    from rag.stack import StackRegistry

    request = request or RetrainRequest()
    progress = progress or NoProgress()
    started = time.perf_counter()
    registry = StackRegistry(settings)
    champion_version = registry.champion_version()
    if champion_version is None:
        raise RetrainError("no stack holds the champion alias: ingest and promote a stack before retraining")
    champion = registry.get(champion_version).config
    seconds: dict[str, float] = {}

    mark = time.perf_counter()
    training, exclusions = assemble(settings, champion, request, progress=progress)
    report = validated(training, exclusions)
    seconds["assemble"] = time.perf_counter() - mark
    logger.info("training set: %s pairs %s, dropped %s", len(training.pairs), training.counts(), dict(training.dropped))

    mark = time.perf_counter()
    registered, run_id, model = train_embedder(settings, champion, training, report, request, progress=progress)
    embedder_version = registered.version
    seconds["train"] = time.perf_counter() - mark

    mark = time.perf_counter()
    ref = champion.embedder.model_copy(
        update={
            "name": f"{family(champion.embedder.name)}-ft{embedder_version}",
            "model_uri": registered.model_uri,
            "weights_sha256": registered.weights_sha256,
        }
    )
    embedder = open_embedder(settings, ref)
    target = f"{family(champion.collection)}-ft{embedder_version}"
    build = build_shadow_index(
        settings,
        source=champion.collection,
        target=target,
        embedder=embedder,
        run_id=run_id,
        on_total=lambda n: progress.start("shadow", n),
        progress=lambda n: progress.advance("shadow", n),
    )
    seconds["shadow_index"] = time.perf_counter() - mark

    candidate_config = champion.model_copy(
        update={"collection": build.target.collection, "index_version": None, "embedder": ref}
    )
    candidate = registry.register(
        candidate_config,
        description=f"retrained embedder v{embedder_version} over {target}",
        actor=request.actor,
        tags={EMBEDDER_VERSION_TAG: str(embedder_version), "retrain.finetune_run": run_id},
    )
    registry.set_challenger(candidate)

    mark = time.perf_counter()
    testset = current_testset(settings)
    outcome = evaluate_stack(settings, registry, candidate, testset=testset, gate=True, embedder=embedder)
    seconds["evaluate"] = time.perf_counter() - mark

    promote, reason, champ_score, cand_score, improvement, p_value = _decide(settings, outcome, request)
    if promote:
        promote_gated(settings, registry, candidate, actor=request.actor, reason=f"retrain: {reason}")
    decision = "promoted" if promote else "kept champion"
    for key, value in ((DECISION_TAG, decision), (REASON_TAG, reason[:4000])):
        registry.client.set_model_version_tag(registry.model_name, str(candidate), key, value)
    logger.info("retrain: candidate v%s %s: %s", candidate, decision, reason)
    collected = collect_garbage(settings, registry)
    seconds["cycle"] = time.perf_counter() - started
    return RetrainOutcome(
        champion_before=champion_version,
        champion_after=registry.champion_version() or champion_version,
        candidate=candidate,
        embedder_version=embedder_version,
        collection=target,
        finetune_run_id=run_id,
        eval_run_id=outcome.run_id,
        training={
            "pairs": len(training.pairs),
            "by_origin": training.counts(),
            "dropped": dict(training.dropped),
            "sha256": training.sha256,
            "steps": model.steps,
            "final_loss": model.final_loss,
            "epochs": model.epochs,
            "learning_rate": float(model.params.get("learning_rate", "nan")),
            "synthetic": training.synthetic.to_json() if training.synthetic else None,
        },
        primary_metric=settings.finetune.primary_metric,
        champion_score=champ_score,
        candidate_score=cand_score,
        improvement=improvement,
        p_value=p_value,
        gate_passed=bool(outcome.gate and outcome.gate.passed),
        gate_summary=outcome.gate.summary() if outcome.gate else "",
        promoted=promote,
        reason=reason,
        seconds={k: round(v, 2) for k, v in seconds.items()},
        garbage_collected=collected,
    )
