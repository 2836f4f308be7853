"""Which stack the service serves, and the switch to a new one.

The holder follows the ``champion`` alias of ``rag-stack`` and, for stacks that follow the current index, the
published index pointer. When either moves it opens the new engine *beside* the old one and then swaps a single
reference under a lock: a request holds the engine it started with until it finishes (reference counted), so no
request fails or mixes two stacks during a switch, and the old engine is closed when its last request ends. If
MLflow cannot be reached the holder keeps serving what it has and reports the failure in ``/readyz``.

During an A/B experiment (:mod:`rag.experiment`) the holder also serves the experiment's challenger, loaded and
switched the same way, and :meth:`StackHolder.acquire` gives each caller the stack of its arm. The challenger is
served only while the experiment's champion is the one being served: a promotion or rollback during an experiment
sends everyone back to the champion until the experiment is stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rag.errors import StackError, StackNotFound
from rag.experiment import Arm, Experiment
from rag.types import EmbedderRef, StackConfig

if TYPE_CHECKING:
    from pipelines.embed import Embedder
    from rag.engine import RagEngine
    from rag.settings import RagSettings

logger = logging.getLogger(__name__)


@dataclass
class Served:
    """One loaded stack version and its engine."""

    version: int
    config: StackConfig
    engine: RagEngine
    index_version: int
    loaded_at: float
    inflight: int = 0
    retired: bool = False
    arm: Arm = "champion"


@dataclass
class HolderStatus:
    """What ``/readyz`` reports."""

    registry_ok: bool = False
    registry_error: str | None = None
    registry_error_since: float | None = None
    last_check: float | None = None
    load_error: str | None = None
    switches: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


ChampionFn = Callable[[], tuple[int, StackConfig]]
ExperimentFn = Callable[[], tuple[Experiment, StackConfig] | None]
"""The running experiment and its challenger's configuration, or None."""
HOW_TO_SERVE = (
    "Register a stack over the published index with `ragops stack register` and promote it with "
    "`ragops stack promote VERSION`"
)


class StackHolder:
    """Loads the champion stack and swaps to a new one atomically.

    Args:
        settings: Platform settings (index location, embedder).
        champion: Returns (version, config) of the current champion; raises StackNotFound when there is none.
            Defaults to the MLflow registry's ``champion`` alias.
        experiment: Returns the running experiment; defaults to the registry's when ``champion`` is not given
            either, and to "never" when only ``champion`` is.
    """

    def __init__(
        self, settings: RagSettings, *, champion: ChampionFn | None = None, experiment: ExperimentFn | None = None
    ) -> None:
        self._settings = settings
        self._champion = champion
        self._experiment_fn: ExperimentFn | None = experiment
        self._follow_experiments = experiment is not None or champion is None
        self._experiment: Experiment | None = None
        self._challenger: Served | None = None
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._current: Served | None = None
        self._embedders: dict[str, Embedder] = {}
        self._embedders_lock = threading.Lock()
        self.status = HolderStatus()

    def _champion_fn(self) -> ChampionFn:
        if self._champion is None:
            from rag.stack import StackRegistry

            registry = StackRegistry(self._settings)
            self._champion = registry.champion
            if self._experiment_fn is None and self._follow_experiments:
                self._experiment_fn = _registry_experiment(registry)
        return self._champion

    def embedder_for(self, ref: EmbedderRef) -> Embedder:
        """The stack's query embedder, loaded once per weights version and shared by engines that use it.

        A switch to a stack with another embedder (a fine-tuned one, or a rollback from it) loads that model; only
        the embedders of the current stack and the one being loaded are kept.
        """
        with self._embedders_lock:
            cached = self._embedders.get(ref.weights_sha256)
        if cached is not None:
            return cached
        from rag.embedders import open_embedder

        embedder = open_embedder(self._settings, ref)
        with self._embedders_lock:
            keep = {ref.weights_sha256} | {
                s.config.embedder.weights_sha256 for s in (self._current, self._challenger) if s
            }
            self._embedders = {k: v for k, v in self._embedders.items() if k in keep}
            self._embedders[ref.weights_sha256] = embedder
        return embedder

    @property
    def current(self) -> Served | None:
        """The stack new requests get (None before the first successful load)."""
        return self._current

    @property
    def experiment(self) -> tuple[Experiment, Served] | None:
        """The experiment being served and its challenger, or None."""
        with self._lock:
            if self._experiment is None or self._challenger is None:
                return None
            return self._experiment, self._challenger

    def check(self) -> bool:
        """Look at the champion alias and the published index once; switch if either moved. Returns True on switch.

        Never raises: failures are recorded in :attr:`status` and the current stack keeps serving.
        """
        with self._reload_lock:
            switched = self._check_champion()
            if self._follow_experiments:
                self._check_experiment()
            return switched

    def _check_champion(self) -> bool:
        """The champion part of :meth:`check` (under the reload lock)."""
        now = time.time()
        self.status.last_check = now
        try:
            version, config = self._champion_fn()()
        except StackNotFound as exc:
            self._registry_ok()
            self.status.load_error = f"{exc}. {HOW_TO_SERVE}"
            return False
        except Exception as exc:  # the registry is another service: any failure means keep serving
            if self.status.registry_ok or self.status.registry_error_since is None:
                self.status.registry_error_since = now
            self.status.registry_ok = False
            self.status.registry_error = f"{type(exc).__name__}: {exc}"
            logger.warning("stack registry unreachable; serving the last loaded stack", exc_info=False)
            return False
        self._registry_ok()
        try:
            index_version = self._index_version(config)
        except Exception as exc:  # an unreadable pointer must not end hot reload; keep serving
            self.status.load_error = f"cannot read the index pointer of {config.collection!r}: {exc}"
            logger.error("cannot read the index pointer: %s", exc)
            return False
        current = self._current
        if current and current.version == version and current.index_version == index_version:
            return False
        try:
            served = self._open(version, config)
        except (StackError, OSError, ValueError) as exc:
            self.status.load_error = f"stack v{version}: {exc}"
            logger.error("cannot load stack %s: %s", version, exc)
            return False
        self._swap(served)
        return True

    def _check_experiment(self) -> None:
        """Serve the running experiment's challenger beside the champion, or stop serving it."""
        fn = self._experiment_fn
        try:
            found = fn() if fn is not None else None
        except Exception as exc:  # the registry is another service: keep the experiment as it is
            logger.warning("cannot read the running experiment: %s; keeping the current arms", exc)
            return
        current = self._current
        if found is None or current is None or found[0].champion != current.version:
            if found is not None and self._experiment is None and current is not None:
                logger.warning(
                    "experiment %s was started against v%s but v%s is the champion; not serving its challenger",
                    found[0].id,
                    found[0].champion,
                    current.version,
                )
            self._end_experiment()
            return
        experiment, config = found
        challenger = self._challenger
        try:
            index_version = self._index_version(config)
            if (
                challenger is None
                or challenger.version != experiment.challenger
                or challenger.index_version != index_version
            ):
                challenger = self._open(experiment.challenger, config, arm="challenger")
        except (StackError, OSError, ValueError) as exc:
            self.status.load_error = f"challenger v{experiment.challenger}: {exc}"
            logger.error("cannot load the challenger v%s of %s: %s", experiment.challenger, experiment.id, exc)
            self._end_experiment()
            return
        with self._lock:
            old = self._challenger if self._challenger is not challenger else None
            started = self._experiment is None or self._experiment.id != experiment.id
            self._experiment, self._challenger = experiment, challenger
            close_now = self._retire(old)
        if close_now and old is not None:
            old.engine.close()
        if started:
            logger.info(
                "serving experiment %s: v%s to %.0f%% of callers beside champion v%s",
                experiment.id,
                experiment.challenger,
                experiment.share * 100,
                experiment.champion,
            )

    def _end_experiment(self) -> None:
        with self._lock:
            old, self._challenger = self._challenger, None
            ended = self._experiment
            self._experiment = None
            close_now = self._retire(old)
        if ended is not None:
            logger.info("experiment %s no longer served; every caller gets the champion", ended.id)
        if close_now and old is not None:
            old.engine.close()

    @staticmethod
    def _retire(old: Served | None) -> bool:
        """Mark ``old`` retired (under the lock); True when nothing holds it, so the caller closes it now."""
        if old is None:
            return False
        old.retired = True
        return old.inflight == 0

    def _registry_ok(self) -> None:
        self.status.registry_ok = True
        self.status.registry_error = None
        self.status.registry_error_since = None

    def _index_version(self, config: StackConfig) -> int | None:
        if config.index_version is not None:
            return config.index_version
        from pipelines.index import VectorIndex

        return VectorIndex(self._settings, collection=config.collection).current_version()

    def _open(self, version: int, config: StackConfig, *, arm: Arm = "champion") -> Served:
        from rag.engine import RagEngine

        engine = RagEngine.open(self._settings, config, embedder=self.embedder_for(config.embedder))
        return Served(
            version=version,
            config=config,
            engine=engine,
            index_version=engine.reader.version.version,
            loaded_at=time.time(),
            arm=arm,
        )

    def _swap(self, served: Served) -> None:
        with self._lock:
            old = self._current
            self._current = served
            self.status.load_error = None
            self.status.switches += 1
            self.status.history.append(
                {"stack_version": served.version, "index_version": served.index_version, "at": served.loaded_at}
            )
            del self.status.history[:-20]
            close_now = self._retire(old)
        logger.info("serving stack v%s over index v%s", served.version, served.index_version)
        if close_now and old is not None:
            old.engine.close()

    @contextmanager
    def acquire(self, identity: str | None = None) -> Iterator[Served]:
        """The stack for the caller ``identity`` (its experiment arm's; the champion when None or when no
        experiment runs), kept alive until the block ends even if a switch happens meanwhile.

        Raises:
            StackNotFound: Nothing is loaded yet.
        """
        with self._lock:
            served = self._current
            experiment, challenger = self._experiment, self._challenger
            if (
                served is not None
                and identity is not None
                and experiment is not None
                and challenger is not None
                and experiment.arm(identity) == "challenger"
            ):
                served = challenger
            if served is None:
                if not self.status.registry_ok and self.status.registry_error:
                    raise StackNotFound(f"the stack registry (MLflow) is unreachable: {self.status.registry_error}")
                raise StackNotFound(self.status.load_error or f"no stack is being served yet. {HOW_TO_SERVE}")
            served.inflight += 1
        try:
            yield served
        finally:
            with self._lock:
                served.inflight -= 1
                close = served.retired and served.inflight == 0
            if close:
                served.engine.close()

    def close(self) -> None:
        """Release the current engines."""
        with self._lock:
            served, self._current = self._current, None
            challenger, self._challenger = self._challenger, None
            self._experiment = None
        for item in (served, challenger):
            if item is not None:
                item.engine.close()


def _registry_experiment(registry: Any) -> ExperimentFn:
    """The registry's running experiment with its challenger's configuration."""

    def read() -> tuple[Experiment, StackConfig] | None:
        experiment = registry.experiment()
        if experiment is None:
            return None
        return experiment, registry.get(experiment.challenger).config

    return read
