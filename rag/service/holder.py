"""Which stack the service serves, and the switch to a new one.

The holder follows the ``champion`` alias of ``rag-stack`` and, for stacks that follow the current index, the
published index pointer. When either moves it opens the new engine *beside* the old one and then swaps a single
reference under a lock: a request holds the engine it started with until it finishes (reference counted), so no
request fails or mixes two stacks during a switch, and the old engine is closed when its last request ends. If
MLflow cannot be reached the holder keeps serving what it has and reports the failure in ``/readyz``.
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
    """

    def __init__(self, settings: RagSettings, *, champion: ChampionFn | None = None) -> None:
        self._settings = settings
        self._champion = champion
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
            current = self._current
            keep = {ref.weights_sha256} | ({current.config.embedder.weights_sha256} if current else set())
            self._embedders = {k: v for k, v in self._embedders.items() if k in keep}
            self._embedders[ref.weights_sha256] = embedder
        return embedder

    @property
    def current(self) -> Served | None:
        """The stack new requests get (None before the first successful load)."""
        return self._current

    def check(self) -> bool:
        """Look at the champion alias and the published index once; switch if either moved. Returns True on switch.

        Never raises: failures are recorded in :attr:`status` and the current stack keeps serving.
        """
        with self._reload_lock:
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

    def _registry_ok(self) -> None:
        self.status.registry_ok = True
        self.status.registry_error = None
        self.status.registry_error_since = None

    def _index_version(self, config: StackConfig) -> int | None:
        if config.index_version is not None:
            return config.index_version
        from pipelines.index import VectorIndex

        return VectorIndex(self._settings, collection=config.collection).current_version()

    def _open(self, version: int, config: StackConfig) -> Served:
        from rag.engine import RagEngine

        engine = RagEngine.open(self._settings, config, embedder=self.embedder_for(config.embedder))
        return Served(
            version=version,
            config=config,
            engine=engine,
            index_version=engine.reader.version.version,
            loaded_at=time.time(),
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
            close_now = old is not None and old.inflight == 0
            if old is not None:
                old.retired = True
        logger.info("serving stack v%s over index v%s", served.version, served.index_version)
        if close_now and old is not None:
            old.engine.close()

    @contextmanager
    def acquire(self) -> Iterator[Served]:
        """The current stack, kept alive until the block ends even if a switch happens meanwhile.

        Raises:
            StackNotFound: Nothing is loaded yet.
        """
        with self._lock:
            served = self._current
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
        """Release the current engine."""
        with self._lock:
            served, self._current = self._current, None
        if served is not None:
            served.engine.close()
