"""Retrieval with the vector the embed stage computed; the answerer gets the first ``top_k`` chunks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.access import scope_of
from rag.errors import RetrievalError
from rag.stages.context import RequestContext
from rag.stages.ports import VectorPort

if TYPE_CHECKING:
    from rag.limits.breaker import CircuitBreaker


class RetrieveStage:
    """Search the stack's index (dense or hybrid, with the request's filters) for ``ctx.vector``.

    What the search may return is bounded by ``ctx.principal`` (its tenant and groups, :mod:`rag.access`), inside
    the engine's search; the request's filters can only narrow it.

    ``ctx.depth`` asks for a deeper ranking than the answerer needs (evaluation's ranking metrics); the answerer
    still gets the first ``top_k`` chunks of that same ranking.

    ``breaker`` (the service's): after consecutive index failures, requests fail at once with
    :class:`rag.errors.CircuitOpen` (503 with ``Retry-After``) instead of each waiting for the index to time out.
    """

    name = "retrieve"
    always = False

    def __init__(self, vectors: VectorPort, breaker: CircuitBreaker | None = None) -> None:
        self.vectors = vectors
        self.breaker = breaker

    async def run(self, ctx: RequestContext) -> None:
        """Set ``ctx.ranking`` and ``ctx.chunks``."""
        if ctx.vector is None:
            raise RuntimeError("the retrieve stage needs the embed stage before it")
        k = ctx.k
        breaker = self.breaker
        if breaker is not None:
            breaker.before_call()
        try:
            ctx.ranking = await self.vectors.search(
                ctx.engine,
                ctx.text,
                ctx.vector,
                filters=ctx.filters,
                top_k=max(k, ctx.depth or k),
                scope=scope_of(ctx.principal),
            )
        except RetrievalError:  # the index failed (a bad request is not the index's fault and is not counted)
            if breaker is not None:
                breaker.record_failure()
            raise
        if breaker is not None:
            breaker.record_success()
        ctx.chunks = ctx.ranking[:k]
