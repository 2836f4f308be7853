"""Fine-tune the sentence-transformers embedder on training pairs, on CPU, and save it as a model folder.

Training is sentence-transformers' own ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss``: for each
query, its positive passage must outscore every other passage of the batch (in-batch negatives) and the query's
mined hard negatives. The ``NO_DUPLICATES`` batch sampler keeps a text from appearing twice in a batch, where it would
be a false negative. Pairs with and without hard negatives have different columns, so they are two datasets of one
run (the trainer samples batches from each in proportion to its size).

Why the defaults (3 epochs, batch 32, lr 5e-5, one hard negative from the champion's ranks 3-30, texts cut at 128
word pieces, embeddings and the lowest 3 of MiniLM's 6 layers frozen): on SciFact's 809 training claims they lift
MiniLM's test nDCG@10 from 0.663 to 0.721 dense and the hybrid stack from 0.725 to 0.750, in about 450 s of a
2-core CPU, which leaves the whole retraining cycle (727 s) inside 15 minutes (``bench/finetune.py``, figures in
``bench/README.md``). The cut applies to training only: the saved model keeps the base model's window.
Freezing the lower layers stops back-propagation halfway (about 1.4x faster steps) and cutting at 128 word pieces
halves the cost of every passage; with them, a mined hard negative fits the budget.
The run is deterministic for a seed on one machine (``full_determinism`` is not used: it slows CPU kernels).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.errors import BadTrainingSet
from evaluation.settings import FinetuneSettings
from evaluation.trainset import TrainPair

logger = logging.getLogger(__name__)

StepProgress = Callable[[int, int], None]
"""Called with (steps done, total steps)."""


@dataclass(frozen=True)
class FinetunedModel:
    """A trained model folder and how it was made."""

    path: Path
    steps: int
    epochs: int
    seconds: float
    pairs: int
    losses: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def final_loss(self) -> float | None:
        """The last logged training loss."""
        return self.losses[-1][1] if self.losses else None


def training_params(settings: FinetuneSettings, *, base: str, pairs: int) -> dict[str, str]:
    """What decides the trained weights, as MLflow params."""
    return {
        "base_model": base,
        "loss": "MultipleNegativesRankingLoss",
        "epochs": str(settings.epochs),
        "batch_size": str(settings.batch_size),
        "learning_rate": str(settings.learning_rate),
        "warmup_ratio": str(settings.warmup_ratio),
        "max_seq_length": str(settings.max_seq_length),
        "freeze_layers": str(settings.freeze_layers),
        "hard_negatives": str(settings.hard_negatives),
        "mine_depth": str(settings.mine_depth),
        "mine_skip": str(settings.mine_skip),
        "seed": str(settings.seed),
        "pairs": str(pairs),
    }


def _datasets(pairs: Sequence[TrainPair], negatives: int) -> dict[str, Any]:
    """Columns (anchor, positive[, negative_1..n]) split by whether a pair has ``negatives`` hard negatives."""
    from datasets import Dataset

    full = [p for p in pairs if negatives and len(p.negatives) >= negatives]
    plain = [p for p in pairs if not (negatives and len(p.negatives) >= negatives)]
    out: dict[str, Any] = {}
    if full:
        columns: dict[str, list[str]] = {"anchor": [p.query for p in full], "positive": [p.positive for p in full]}
        for i in range(negatives):
            columns[f"negative_{i + 1}"] = [p.negatives[i] for p in full]
        out["with_negatives"] = Dataset.from_dict(columns)
    if plain:
        out["pairs"] = Dataset.from_dict({"anchor": [p.query for p in plain], "positive": [p.positive for p in plain]})
    return out


def _freeze(model: Any, layers: int) -> None:
    """Freeze the word embeddings and the lowest ``layers`` transformer layers (backward stops above them)."""
    inner = getattr(model[0], "auto_model", None)
    embeddings = getattr(inner, "embeddings", None)
    blocks = getattr(getattr(inner, "encoder", None), "layer", None)
    if embeddings is None or blocks is None:
        logger.warning("cannot freeze layers of %s; training all of them", type(inner).__name__)
        return
    for module in (embeddings, *list(blocks)[:layers]):
        for parameter in module.parameters():
            parameter.requires_grad = False


def finetune(
    pairs: Sequence[TrainPair],
    *,
    base: Path,
    output: Path,
    settings: FinetuneSettings,
    progress: StepProgress | None = None,
    threads: int | None = None,
) -> FinetunedModel:
    """Train from the model folder ``base`` and save the result to ``output`` (a sentence-transformers folder).

    Args:
        pairs: Training pairs (validated beforehand).
        base: Model folder to start from.
        output: Where the trained model is saved (created; must not exist).
        settings: Epochs, batch size, learning rate, negatives, sequence length, seed.
        progress: Called after every optimiser step with (done, total).
        threads: torch intra-op threads (default: all cores).

    Raises:
        BadTrainingSet: Fewer than two pairs (in-batch negatives need a batch).
    """
    if len(pairs) < 2:
        raise BadTrainingSet(f"fine-tuning needs at least 2 training pairs, got {len(pairs)}")
    if output.exists():
        raise FileExistsError(f"{output} exists; fine-tuning writes a new folder")
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers, MultiDatasetBatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import PrinterCallback, TrainerCallback
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our progress callback reports; stdout stays clean for --json
    torch.set_num_threads(threads or os.cpu_count() or 1)
    started = time.perf_counter()
    model = SentenceTransformer(str(base), device="cpu")
    window = model.max_seq_length
    model.max_seq_length = min(settings.max_seq_length, window or settings.max_seq_length)
    if settings.freeze_layers:
        _freeze(model, settings.freeze_layers)
    data = _datasets(pairs, settings.hard_negatives)
    loss = MultipleNegativesRankingLoss(model)
    losses: list[tuple[int, float]] = []

    class _Report(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if progress:
                progress(int(state.global_step), int(state.max_steps))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            if logs and "loss" in logs:
                losses.append((int(state.global_step), float(logs["loss"])))

    with tempfile.TemporaryDirectory(prefix="ragops-finetune-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            warmup_steps=settings.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL,
            logging_steps=max(1, min(10, len(pairs) // settings.batch_size // 4 or 1)),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=settings.seed,
            data_seed=settings.seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=data if len(data) > 1 else next(iter(data.values())),
            loss=loss,
            callbacks=[_Report()],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
        trainer.train()
        steps = int(trainer.state.global_step)
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    # Texts were cut for training only: the saved model keeps the base model's window, or every chunk longer than
    # the training cut would be silently truncated when the shadow index is embedded.
    model.max_seq_length = window
    model.save(str(staging), create_model_card=False)
    os.replace(staging, output)
    seconds = time.perf_counter() - started
    logger.info("fine-tuned %d pairs: %d steps in %.0f s", len(pairs), steps, seconds)
    return FinetunedModel(
        path=output,
        steps=steps,
        epochs=settings.epochs,
        seconds=seconds,
        pairs=len(pairs),
        losses=tuple(losses),
        params=training_params(settings, base=str(base), pairs=len(pairs)),
    )
