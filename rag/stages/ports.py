"""How the embed and retrieve stages reach the stack's model and index.

The service batches concurrent requests into one forward pass (:class:`rag.service.batcher.BatchedVectors`);
evaluation and the CLI ask one question at a time (:class:`DirectVectors`). The stages do not know which: they
await the port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from rag.access import AccessScope
    from rag.engine import RagEngine
    from rag.types import RetrievedChunk


class VectorPort(Protocol):
    """Embedding and searching for one request."""

    async def embed(self, engine: RagEngine, text: str) -> np.ndarray:
        """The question's unit vector in the stack's embedding space."""
        ...

    async def search(
        self,
        engine: RagEngine,
        text: str,
        vector: np.ndarray,
        *,
        filters: dict[str, list[str]] | None,
        top_k: int,
        scope: AccessScope,
    ) -> list[RetrievedChunk]:
        """The best ``top_k`` chunks the principal's ``scope`` permits (inside the search), best first."""
        ...


class DirectVectors:
    """Calls the engine in the caller's thread: no batching, each call timed on its own (evaluation, CLI)."""

    async def embed(self, engine: RagEngine, text: str) -> np.ndarray:
        """One forward pass for one question."""
        vector: np.ndarray = engine.embedder.encode([text])[0]
        return vector

    async def search(
        self,
        engine: RagEngine,
        text: str,
        vector: np.ndarray,
        *,
        filters: dict[str, list[str]] | None,
        top_k: int,
        scope: AccessScope,
    ) -> list[RetrievedChunk]:
        """One search with the vector given."""
        return engine.retriever.search(text, vector, top_k=top_k, filters=filters, scope=scope)
