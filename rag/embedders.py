"""Embedder versions in the MLflow model registry, and loading the one a stack names.

A fine-tuned embedder is logged with MLflow's ``sentence_transformers`` flavour in a run of the experiment
``finetune`` and registered as a version of the registered model ``embedder``, tagged with the SHA-256 of its
weights. A stack refers to it through :attr:`rag.types.EmbedderRef.model_uri` (``models:/embedder/3``); the bundled
MiniLM has no URI. Any process that serves or evaluates a stack materialises the model once into
``<home>/models/embedder/<hash>/`` (download, verify the hash, atomic rename) and loads it from there, so a rollback
or a restart needs no training and no network beyond the tracking server.

Garbage collection keeps the newest ``keep`` versions plus every version a protected stack uses (the champion and
the previous champion), and removes the materialised folders of deleted versions.
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rag.errors import StackError, StackMismatch
from rag.types import EmbedderRef

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.embed import Embedder
    from rag.settings import RagSettings

SettingsT = TypeVar("SettingsT", bound="RagSettings")
"""Whatever settings object the caller holds (the entry point's ``Settings``) comes back as the same type."""

logger = logging.getLogger(__name__)

EMBEDDER_MODEL = "embedder"
EXPERIMENT = "finetune"
SHA_TAG = "weights_sha256"
DATA_DIR = "model.sentence_transformer"  # where MLflow's sentence_transformers flavour keeps the model folder


@dataclass(frozen=True)
class EmbedderVersion:
    """One registered embedder."""

    version: int
    weights_sha256: str
    run_id: str | None
    created_at: str
    tags: dict[str, str]

    @property
    def model_uri(self) -> str:
        """What a stack's ``embedder.model_uri`` holds."""
        return f"models:/{EMBEDDER_MODEL}/{self.version}"


def _materialised(settings: RagSettings, sha: str) -> Path:
    return settings.models_dir / EMBEDDER_MODEL / sha[:16]


def model_folder(settings: RagSettings, ref: EmbedderRef) -> Path:
    """The local sentence-transformers folder of ``ref`` (downloaded from the registry on first use).

    Raises:
        StackMismatch: The weights found do not have the hash the stack was registered with.
        StackError: The registry does not hold the model any more.
    """
    from pipelines.embed import default_model_path, weights_hash

    if ref.model_uri is None:
        path = settings.embedder.model_path or default_model_path()
        return Path(path)
    target = _materialised(settings, ref.weights_sha256)
    if (target / "modules.json").is_file():
        return target
    from mlflow.exceptions import MlflowException

    from pipelines.tracking import configure_mlflow

    mlflow = configure_mlflow(settings)
    scratch = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.partial")
    scratch.mkdir(parents=True)
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.model_uri, dst_path=str(scratch)))
        except MlflowException as exc:
            raise StackError(f"cannot fetch embedder {ref.model_uri} from the registry: {exc.message}") from exc
        folder = local / DATA_DIR if (local / DATA_DIR).is_dir() else local
        found = weights_hash(folder)
        if found != ref.weights_sha256:
            raise StackMismatch(
                f"{ref.model_uri} has weights {found[:12]}, the stack expects {ref.weights_sha256[:12]}"
            )
        try:
            os.replace(folder, target)
        except OSError:
            if not (target / "modules.json").is_file():  # another process won the race: use its copy
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def open_embedder(settings: RagSettings, ref: EmbedderRef) -> Embedder:
    """Load the embedder a stack names and check it is that model.

    Raises:
        StackMismatch: The model found is not the one ``ref`` names (e.g. ``RAGOPS_EMBEDDER__MODEL_PATH`` points
            at another model for a stack of the bundled one).
    """
    from pipelines.embed import Embedder

    path = model_folder(settings, ref)
    embedder_settings = settings.embedder.model_copy(update={"model_path": path, "model_name": ref.name})
    embedder = Embedder(embedder_settings, cache_dir=settings.cache_dir)
    embedder.warm_up()
    if not ref.matches(embedder.identity):
        raise StackMismatch(
            f"the stack needs embedder {ref.name} (weights {ref.weights_sha256[:12]}) but {path} holds weights "
            f"{embedder.identity.weights_sha256[:12]}"
        )
    return embedder


def model_uri_for(settings: RagSettings, weights_sha256: str) -> str | None:
    """The registry URI of the fine-tuned embedder with these weights, or None (the bundled or configured model)."""
    for version in EmbedderRegistry(settings).list():
        if version.weights_sha256 == weights_sha256:
            return version.model_uri
    return None


def ingest_target(settings: SettingsT, collection: str | None) -> tuple[SettingsT, str]:
    """Where an ingestion writes and with which embedder: what a fine-tuned champion keeps serving fresh.

    Without ``collection``: the champion's collection when it is a shadow index derived from the configured one
    (``docs-ft3`` for ``docs``), else the configured collection. The embedder is the one the collection was built
    with (a registered fine-tuned model is materialised and used), so new documents land in the vector space the
    served stack queries. Falls back to the configured collection and model when the registry cannot be read.
    """
    from mlflow.exceptions import MlflowException

    from pipelines.index import VectorIndex

    target = collection
    if target is None:
        target = settings.qdrant.collection
        try:
            from rag.stack import StackRegistry

            registry = StackRegistry(settings)
            champion = registry.champion_version()
            config = registry.get(champion).config if champion else None
        except (MlflowException, StackError):
            config = None
        if config is not None and config.collection.startswith(f"{settings.qdrant.collection}-ft"):
            target = config.collection
    current = VectorIndex(settings, collection=target).current()
    if current is None:
        return settings, target
    uri = model_uri_for(settings, current.embedder.weights_sha256)
    if uri is None:
        return settings, target
    ref = EmbedderRef.from_identity(current.embedder, model_uri=uri)
    embedder = settings.embedder.model_copy(update={"model_path": model_folder(settings, ref), "model_name": ref.name})
    return settings.model_copy(update={"embedder": embedder}), target


class EmbedderRegistry:
    """Versions of the registered model ``embedder``.

    Usage example::

        registry = EmbedderRegistry(settings)
        version = registry.register(model_folder, run_id=run.info.run_id, tags={"train_pairs": "900"})
        ref = EmbedderRef(..., model_uri=version.model_uri)
    """

    def __init__(self, settings: RagSettings) -> None:
        self.settings = settings

    @cached_property
    def client(self) -> MlflowClient:
        """An MLflow client bound to the configured store."""
        from pipelines.tracking import mlflow_client

        return mlflow_client(self.settings)

    def log_and_register(
        self, folder: Path, *, weights_sha256: str, tags: dict[str, str] | None = None
    ) -> EmbedderVersion:
        """Log ``folder`` with the sentence_transformers flavour in the active run and register it.

        The registered copy is materialised locally right away (it is the folder just trained), so the shadow index
        and the evaluation load it without a download.
        """
        import mlflow
        from sentence_transformers import SentenceTransformer

        from pipelines.tracking import ensure_registered_model

        run = mlflow.active_run()
        if run is None:
            raise StackError("log_and_register needs an active MLflow run (the fine-tuning run)")
        model = SentenceTransformer(str(folder), device="cpu")
        info = mlflow.sentence_transformers.log_model(
            model,
            name="embedder",
            pip_requirements=[f"sentence-transformers=={_version('sentence-transformers')}", "torch"],
        )
        ensure_registered_model(
            self.client, EMBEDDER_MODEL, "Fine-tuned sentence embedders; stacks name a version by models:/ URI."
        )
        created = self.client.create_model_version(
            EMBEDDER_MODEL,
            source=info.model_uri,
            run_id=run.info.run_id,
            tags={SHA_TAG: weights_sha256, **(tags or {})},
            model_id=info.model_id,
        )
        target = _materialised(self.settings, weights_sha256)
        if not (target / "modules.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.partial")
            shutil.copytree(folder, staging)
            os.replace(staging, target)
        return self._to_version(created)

    def get(self, version: int) -> EmbedderVersion:
        """One version.

        Raises:
            StackError: No such version.
        """
        from mlflow.exceptions import MlflowException

        try:
            return self._to_version(self.client.get_model_version(EMBEDDER_MODEL, str(version)))
        except MlflowException as exc:
            raise StackError(f"the registry has no {EMBEDDER_MODEL!r} version {version}") from exc

    def list(self) -> builtins.list[EmbedderVersion]:
        """Every version, oldest first (empty before the first fine-tune)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{EMBEDDER_MODEL}'")
        except MlflowException:
            return []
        return sorted((self._to_version(mv) for mv in found), key=lambda v: v.version)

    def gc(self, *, keep: int, protect: Iterable[str]) -> builtins.list[int]:
        """Delete all but the newest ``keep`` versions, never one whose weights hash is in ``protect``."""
        protected = set(protect)
        versions = self.list()
        newest = {v.version for v in versions[-keep:]} if keep > 0 else set()
        removed: builtins.list[int] = []
        for version in versions:
            if version.version in newest or version.weights_sha256 in protected:
                continue
            self.client.delete_model_version(EMBEDDER_MODEL, str(version.version))
            shutil.rmtree(_materialised(self.settings, version.weights_sha256), ignore_errors=True)
            removed.append(version.version)
        if removed:
            logger.info("deleted embedder versions %s (keep-last-%d policy)", removed, keep)
        return removed

    @staticmethod
    def _to_version(mv: Any) -> EmbedderVersion:
        tags = dict(mv.tags or {})
        created = datetime.fromtimestamp(int(mv.creation_timestamp or 0) / 1000, UTC).isoformat(timespec="seconds")
        return EmbedderVersion(
            version=int(mv.version),
            weights_sha256=tags.get(SHA_TAG, ""),
            run_id=mv.run_id,
            created_at=created,
            tags=tags,
        )


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
