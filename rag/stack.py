"""Stacks in the MLflow model registry: register, list, promote to ``champion``, roll back.

A stack is a version of the registered model ``rag-stack``. Registering one logs an MLflow run in the experiment
``stacks`` (the configuration as params and as the artifact ``stack.json``), logs a pyfunc model whose only
artifact is that ``stack.json`` (models-from-code: :mod:`rag.stack_model` names :class:`rag.pyfunc.RagStackModel`),
and creates a model version from it with descriptive tags.

Serving follows the alias ``champion`` (aliases only; the deprecated stages are never used). :meth:`promote` moves
it and records who, when and why as tags on the version; the registered model keeps the champion lineage (tag
``champion_history``), an event log (``champion_log``), the tag ``previous_champion`` and the alias
``previous-champion``. :meth:`rollback` pops the lineage: the champion goes back to the version before it, and a
second rollback goes back one further (it is an undo stack, not a toggle).

Concurrency: MLflow has no compare-and-set on aliases, so two promotions racing each other can interleave; run
promotions through one place (the promote flow), as the design intends.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rag.errors import BadQuery, StackError, StackNotFound
from rag.experiment import EXPERIMENT_TAG, RESULT_TAG, STATUS_TAG, Experiment
from rag.types import StackConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from rag.settings import RagSettings

logger = logging.getLogger(__name__)

MODEL_NAME = "rag-stack"
EXPERIMENT = "stacks"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
CHALLENGER = "challenger"
STACK_FILE = "stack.json"
CONFIG_TAG = "stack.config"  # the same JSON as stack.json, so reading a version needs no artifact download
HISTORY_TAG = "champion_history"
LOG_TAG = "champion_log"
_LOG_KEEP = 50
_ENTRY_POINT = Path(__file__).with_name("stack_model.py")


@dataclass(frozen=True)
class StackVersion:
    """One registered stack version."""

    version: int
    config: StackConfig
    description: str
    aliases: tuple[str, ...]
    tags: Mapping[str, str]
    run_id: str | None
    source: str
    created_at: str

    @property
    def model_uri(self) -> str:
        """URI for ``mlflow.pyfunc.load_model``."""
        return f"models:/{MODEL_NAME}/{self.version}"

    @property
    def is_champion(self) -> bool:
        """True when this version holds the ``champion`` alias."""
        return CHAMPION in self.aliases


@dataclass(frozen=True)
class Promotion:
    """What a promote or rollback did."""

    action: Literal["promote", "rollback"]
    version: int
    previous: int | None
    actor: str
    reason: str
    at: str
    changed: bool = True
    lineage: tuple[int, ...] = field(default_factory=tuple)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadQuery(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise BadQuery(f"{what} is longer than {limit} characters")
    return value.strip()


def _version_number(version: object) -> int:
    try:
        number = int(str(version))
    except ValueError:
        raise BadQuery(f"stack version must be a positive integer, got {version!r}") from None
    if number < 1:
        raise BadQuery(f"stack version must be a positive integer, got {version!r}")
    return number


class StackRegistry:
    """Stack versions of ``rag-stack`` in the MLflow registry configured by ``settings``.

    Usage example::

        registry = StackRegistry(settings)
        version = registry.register(config, description="hybrid, top 5")
        registry.promote(version, actor="alice", reason="passed the demo_qa gate")
        number, config = registry.champion()
        registry.rollback(actor="bob", reason="answers regressed on tenant acme")
    """

    def __init__(self, settings: RagSettings, *, model_name: str = MODEL_NAME) -> None:
        self.settings = settings
        self.model_name = model_name
        self._configs: dict[int, StackConfig] = {}

    @cached_property
    def client(self) -> MlflowClient:
        """An MLflow client bound to the configured tracking and registry store."""
        from pipelines.tracking import mlflow_client

        return mlflow_client(self.settings)

    # ------------------------------------------------------------------------------------------------ register
    def register(
        self,
        config: StackConfig,
        *,
        description: str = "",
        actor: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> int:
        """Log the stack as a run plus a pyfunc model and register it as a new version; returns the version number.

        The new version is not served until :meth:`promote` moves ``champion`` to it.
        """
        from pipelines.tracking import configure_mlflow, ensure_experiment, ensure_registered_model

        mlflow = configure_mlflow(self.settings)
        client = self.client
        prompts = None
        if config.prompt is not None:  # the registered text is what the stack answers with
            from rag.prompts import PromptRegistry

            prompts = PromptRegistry(self.settings)
            ref, template = prompts.resolve(config.prompt.name, config.prompt.version)
            config = config.model_copy(update={"prompt": ref, "prompt_template": template})
        experiment_id = ensure_experiment(self.settings, EXPERIMENT)
        version_tags = {**self._describe(config), **dict(tags or {})}
        version_tags[CONFIG_TAG] = json.dumps(config.to_json(), sort_keys=True, separators=(",", ":"))
        if actor:
            version_tags["registered_by"] = _check_text(actor, "actor", 200)
        with tempfile.TemporaryDirectory(prefix="ragops-stack-") as tmp:
            path = Path(tmp) / STACK_FILE
            path.write_text(json.dumps(config.to_json(), indent=2, sort_keys=True), encoding="utf-8")
            nested = mlflow.active_run() is not None
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"stack-{config.name}", nested=nested) as run:
                mlflow.log_params(config.flat_params())
                mlflow.set_tags({"ragops.kind": "stack", **{k: v for k, v in version_tags.items() if k != CONFIG_TAG}})
                mlflow.log_artifact(str(path))
                info = mlflow.pyfunc.log_model(
                    name="stack",
                    python_model=str(_ENTRY_POINT),
                    artifacts={"stack": str(path)},
                    pip_requirements=[f"mlflow=={mlflow.__version__}", "ragops"],
                )
        ensure_registered_model(
            client,
            self.model_name,
            "RAG stacks: embedder, index, retrieval, prompt and answerer. Serve the champion alias.",
        )
        created = client.create_model_version(
            self.model_name,
            source=info.model_uri,
            run_id=run.info.run_id,
            tags=version_tags,
            description=description or None,
            model_id=info.model_id,
        )
        number = int(created.version)
        if prompts is not None and config.prompt is not None and info.model_id:
            prompts.link(config.prompt, info.model_id)
        self._configs[number] = config
        logger.info("registered stack", extra={"stack": config.name, "version": number, "run_id": run.info.run_id})
        return number

    @staticmethod
    def _describe(config: StackConfig) -> dict[str, str]:
        return {
            "stack.name": config.name,
            "stack.fingerprint": config.fingerprint(),
            "stack.collection": config.collection,
            "stack.index_version": "current" if config.index_version is None else str(config.index_version),
            "stack.retrieval": config.retrieval.mode,
            "stack.top_k": str(config.retrieval.top_k),
            "stack.answerer": config.answerer.kind,
            "stack.embedder": config.embedder.name,
            "stack.embedder_sha256": config.embedder.weights_sha256,
        }

    # --------------------------------------------------------------------------------------------------- read
    def get(self, version: int | str) -> StackVersion:
        """One version with its configuration, aliases and tags."""
        return self._to_stack_version(self._model_version(_version_number(version)))

    def list(self) -> builtins.list[StackVersion]:
        """Every version, oldest first."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{self.model_name}'")
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        # search results may omit aliases in some stores; re-read each version for the full record
        return [self.get(int(mv.version)) for mv in sorted(found, key=lambda mv: int(mv.version))]

    def champion(self) -> tuple[int, StackConfig]:
        """The served version and its configuration.

        Raises:
            StackNotFound: No version holds ``champion`` (nothing promoted yet).
        """
        mv = self._by_alias(CHAMPION)
        if mv is None:
            raise StackNotFound(f"no version of {self.model_name!r} holds the alias {CHAMPION!r}; promote one first")
        number = int(mv.version)
        return number, self._config(mv)

    def champion_version(self) -> int | None:
        """The version number holding ``champion``, or None."""
        mv = self._by_alias(CHAMPION)
        return int(mv.version) if mv is not None else None

    def history(self) -> builtins.list[dict[str, Any]]:
        """Promotion and rollback events, oldest first (the last 50)."""
        return list(self._model_tag_json(LOG_TAG, []))

    # ------------------------------------------------------------------------------------------------ promote
    def promote(
        self, version: int | str, *, actor: str, reason: str, tags: Mapping[str, str] | None = None
    ) -> Promotion:
        """Move ``champion`` to ``version`` and record who, when and why; promoting the champion again is a no-op.

        ``tags`` are recorded on the version too (the evaluation gate's run id, or an explicit override). This
        method does not check any gate: :func:`evaluation.deploy.promote_gated` is the gated entry point.
        """
        number = _version_number(version)
        actor = _check_text(actor, "actor", 200)
        reason = _check_text(reason, "reason", 2000)
        self._model_version(number)  # raises StackNotFound
        current = self.champion_version()
        lineage = self._lineage(current)
        at = _now()
        if current == number:
            return Promotion("promote", number, current, actor, reason, at, changed=False, lineage=tuple(lineage))
        lineage.append(number)
        client = self.client
        client.set_registered_model_alias(self.model_name, CHAMPION, str(number))
        extra = tuple((str(k), str(v)) for k, v in (tags or {}).items())
        for key, value in (("promoted_by", actor), ("promoted_at", at), ("promotion_reason", reason), *extra):
            client.set_model_version_tag(self.model_name, str(number), key, value)
        if current is not None:
            client.set_model_version_tag(self.model_name, str(number), "promoted_over", str(current))
        self._write_lineage(lineage)
        self._log_event(
            {"action": "promote", "version": number, "previous": current, "actor": actor, "reason": reason, "at": at}
        )
        logger.info("promoted stack", extra={"version": number, "previous": current, "actor": actor})
        return Promotion("promote", number, current, actor, reason, at, lineage=tuple(lineage))

    def rollback(self, *, actor: str, reason: str) -> Promotion:
        """Move ``champion`` back to the version that held it before the current one.

        Raises:
            StackNotFound: There is no champion.
            StackError: The champion has no predecessor to return to.
        """
        actor = _check_text(actor, "actor", 200)
        reason = _check_text(reason, "reason", 2000)
        current = self.champion_version()
        if current is None:
            raise StackNotFound(f"no version of {self.model_name!r} holds {CHAMPION!r}; nothing to roll back")
        lineage = self._lineage(current)
        lineage.pop()
        while lineage and not self._exists(lineage[-1]):
            lineage.pop()  # a deleted version cannot be served again
        if not lineage:
            raise StackError(f"version {current} is the first champion of {self.model_name!r}; nothing to roll back to")
        target = lineage[-1]
        at = _now()
        client = self.client
        client.set_registered_model_alias(self.model_name, CHAMPION, str(target))
        for key, value in (("rolled_back_by", actor), ("rolled_back_at", at), ("rollback_reason", reason)):
            client.set_model_version_tag(self.model_name, str(current), key, value)
        for key, value in (("restored_by", actor), ("restored_at", at), ("restore_reason", reason)):
            client.set_model_version_tag(self.model_name, str(target), key, value)
        self._write_lineage(lineage)
        self._log_event(
            {"action": "rollback", "version": target, "previous": current, "actor": actor, "reason": reason, "at": at}
        )
        logger.warning("rolled back stack", extra={"version": target, "from": current, "actor": actor})
        return Promotion("rollback", target, current, actor, reason, at, lineage=tuple(lineage))

    def set_challenger(self, version: int | str) -> None:
        """Point the alias ``challenger`` at ``version``: the candidate under evaluation (retraining sets it)."""
        number = _version_number(version)
        self._model_version(number)
        self.client.set_registered_model_alias(self.model_name, CHALLENGER, str(number))

    # ------------------------------------------------------------------------------------------ experiments
    def experiment(self) -> Experiment | None:
        """The running A/B experiment (:mod:`rag.experiment`), or None (also before any stack is registered)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return None
            raise
        raw = (model.tags or {}).get(EXPERIMENT_TAG)
        if not raw:
            return None
        try:
            return Experiment.from_json(raw)
        except (ValueError, KeyError, TypeError):
            logger.warning("unreadable experiment tag; treating it as no experiment", extra={"tag": EXPERIMENT_TAG})
            return None

    def start_experiment(
        self, version: int | str | None, *, share: float, alpha: float, actor: str, at: float
    ) -> Experiment:
        """Send ``share`` of the callers to ``version`` (default: the ``challenger`` alias) beside the champion.

        Raises:
            StackNotFound: No champion, no such version, or no challenger alias when ``version`` is None.
            StackError: An experiment is already running (stop it first).
        """
        actor = _check_text(actor, "actor", 200)
        running = self.experiment()
        if running is not None:
            raise StackError(
                f"experiment {running.id} (v{running.challenger} against v{running.champion}) is running; "
                "stop it first with `ragops stack experiment stop`"
            )
        champion = self.champion_version()
        if champion is None:
            raise StackNotFound(f"no version of {self.model_name!r} holds {CHAMPION!r}; promote one first")
        if version is None:
            mv = self._by_alias(CHALLENGER)
            if mv is None:
                raise StackNotFound(f"no version holds the alias {CHALLENGER!r}; name the version to try")
            number = int(mv.version)
        else:
            number = _version_number(version)
            self._model_version(number)  # raises StackNotFound
        experiment = Experiment(
            id=f"ab-{int(at)}-v{number}",
            champion=champion,
            challenger=number,
            share=share,
            alpha=alpha,
            started_at=at,
            started_by=actor,
        )
        self.client.set_registered_model_tag(self.model_name, EXPERIMENT_TAG, experiment.to_json())
        self.client.set_model_version_tag(self.model_name, str(number), "ab_experiment_id", experiment.id)
        self._log_event({"action": "experiment_start", "version": number, "previous": champion, "actor": actor})
        logger.info(
            "started experiment", extra={"experiment": experiment.id, "challenger": number, "champion": champion}
        )
        return experiment

    def record_experiment(self, experiment: Experiment, *, status: str, result: str) -> None:
        """Write an experiment's verdict and result JSON on its challenger version (the candidate)."""
        client = self.client
        client.set_model_version_tag(self.model_name, str(experiment.challenger), STATUS_TAG, status)
        client.set_model_version_tag(self.model_name, str(experiment.challenger), RESULT_TAG, result)

    def stop_experiment(self, *, actor: str) -> Experiment:
        """End the running experiment: every caller goes back to the champion.

        Raises:
            StackNotFound: No experiment is running.
        """
        actor = _check_text(actor, "actor", 200)
        running = self.experiment()
        if running is None:
            raise StackNotFound("no experiment is running")
        self.client.set_registered_model_tag(self.model_name, EXPERIMENT_TAG, "")
        self._log_event(
            {"action": "experiment_stop", "version": running.challenger, "previous": running.champion, "actor": actor}
        )
        logger.info("stopped experiment", extra={"experiment": running.id, "actor": actor})
        return running

    def previous_champion_version(self) -> int | None:
        """The version ``rollback`` would restore, or None."""
        current = self.champion_version()
        lineage = self._lineage(current)
        return lineage[-2] if len(lineage) >= 2 else None

    def delete(self, version: int | str) -> None:
        """Delete a version (garbage collection); the champion and previous champion are refused.

        Raises:
            StackError: ``version`` is the champion or the previous champion.
        """
        number = _version_number(version)
        if number in (self.champion_version(), self.previous_champion_version()):
            raise StackError(f"version {number} is the champion or the previous champion; it is never deleted")
        self.client.delete_model_version(self.model_name, str(number))
        self._configs.pop(number, None)

    # ---------------------------------------------------------------------------------------------- internals
    def _model_version(self, number: int) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.model_name, str(number))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise StackNotFound(f"{self.model_name!r} has no version {number}") from exc
            raise

    def _exists(self, number: int) -> bool:
        try:
            self._model_version(number)
        except StackNotFound:
            return False
        return True

    def _by_alias(self, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    def _config(self, mv: ModelVersion) -> StackConfig:
        number = int(mv.version)
        if number in self._configs:
            return self._configs[number]
        raw = (mv.tags or {}).get(CONFIG_TAG)
        if raw:
            config = StackConfig.model_validate_json(raw)
            self._configs[number] = config
            return config
        if not mv.run_id:
            raise StackError(f"version {number} of {self.model_name!r} has no run holding {STACK_FILE}")
        with tempfile.TemporaryDirectory(prefix="ragops-stack-") as tmp:
            local = self.client.download_artifacts(mv.run_id, STACK_FILE, tmp)
            config = StackConfig.model_validate_json(Path(local).read_text(encoding="utf-8"))
        self._configs[number] = config  # versions are immutable
        return config

    def _to_stack_version(self, mv: ModelVersion) -> StackVersion:
        created = datetime.fromtimestamp(int(mv.creation_timestamp or 0) / 1000, UTC).isoformat(timespec="seconds")
        return StackVersion(
            version=int(mv.version),
            config=self._config(mv),
            description=mv.description or "",
            aliases=tuple(getattr(mv, "aliases", []) or ()),
            tags=dict(mv.tags or {}),
            run_id=mv.run_id,
            source=str(mv.source),
            created_at=created,
        )

    def _model_tag_json(self, key: str, default: Any) -> Any:
        tags = self.client.get_registered_model(self.model_name).tags or {}
        raw = tags.get(key)
        if not raw:
            return default
        try:
            return json.loads(raw)
        except ValueError:
            logger.warning("unreadable registry tag; starting it afresh", extra={"tag": key})
            return default

    def _lineage(self, current: int | None) -> builtins.list[int]:
        """Champion lineage, oldest first, ending with the current champion (repaired if the alias moved by hand)."""
        lineage = [int(v) for v in self._model_tag_json(HISTORY_TAG, [])] if current is not None else []
        if current is not None and (not lineage or lineage[-1] != current):
            lineage.append(current)
        return lineage

    def _write_lineage(self, lineage: builtins.list[int]) -> None:
        client = self.client
        lineage = lineage[-_LOG_KEEP:]
        client.set_registered_model_tag(self.model_name, HISTORY_TAG, json.dumps(lineage))
        if len(lineage) >= 2:
            previous = str(lineage[-2])
            client.set_registered_model_alias(self.model_name, PREVIOUS_CHAMPION, previous)
            client.set_registered_model_tag(self.model_name, "previous_champion", previous)
        else:
            from mlflow.exceptions import MlflowException

            with contextlib.suppress(MlflowException):  # no such alias
                client.delete_registered_model_alias(self.model_name, PREVIOUS_CHAMPION)
            client.set_registered_model_tag(self.model_name, "previous_champion", "")

    def _log_event(self, event: dict[str, Any]) -> None:
        log = list(self._model_tag_json(LOG_TAG, []))
        log.append(event)
        self.client.set_registered_model_tag(self.model_name, LOG_TAG, json.dumps(log[-_LOG_KEEP:]))
