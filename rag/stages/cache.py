"""The cache stages: a repeat or a paraphrase of an answered question gets the stored answer, with no retrieval and
no generation (see :mod:`rag.cache` for the keys and why stale or cross-scope answers cannot be served).

``cache_exact`` runs before the embedding (a repeat costs no forward pass), ``cache`` after the input screen (the
question's vector, computed once, is the semantic key; an injection is refused before the cache is consulted), and
``cache_store`` after the output checks (only an answer that passed them is stored). A hit ends the request like a
refusal does, except that it is an answer: the response says ``cached: exact|semantic``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rag.access import scope_of
from rag.cache import CacheBackend, CachedAnswer, scope_key
from rag.stages.context import RequestContext


def _scope(ctx: RequestContext) -> str:
    """The request's cache scope, computed once: the exact lookup, the semantic lookup and the store all use it."""
    if ctx.cache_scope is None:
        ctx.cache_scope = scope_key(scope_of(ctx.principal), ctx.filters, ctx.k)
    return ctx.cache_scope


def _check_backend(cache: CacheBackend, ctx: RequestContext) -> None:
    """Announce a cache whose store is down (every lookup misses, nothing is stored) after using it."""
    if cache.degraded:
        ctx.degrade("cache_unavailable")


def _hit(ctx: RequestContext, entry: CachedAnswer, kind: str) -> None:
    ctx.answer = entry.answer
    ctx.chunks = list(entry.chunks)
    ctx.ranking = list(entry.chunks)
    ctx.cache_hit = kind


class ExactCacheStage:
    """Answer a repeat of the same normalised question from the cache (a hit is counted; a miss is the semantic
    stage's to count, since the request goes on to it)."""

    name = "cache_exact"
    always = False

    def __init__(self, cache: CacheBackend, on_lookup: Callable[[bool], None] | None = None) -> None:
        self.cache = cache
        self.on_lookup = on_lookup

    async def run(self, ctx: RequestContext) -> None:
        """On a hit, set the answer and end the request."""
        entry = self.cache.exact(_scope(ctx), ctx.text)
        _check_backend(self.cache, ctx)
        if entry is not None:
            _hit(ctx, entry, "exact")
            if self.on_lookup is not None:
                self.on_lookup(True)


class SemanticCacheStage:
    """Answer a question whose embedding is close enough to a stored one's."""

    name = "cache"
    always = False

    def __init__(self, cache: CacheBackend, on_lookup: Callable[[bool], None] | None = None) -> None:
        self.cache = cache
        self.on_lookup = on_lookup

    async def run(self, ctx: RequestContext) -> None:
        """On a hit, set the answer and end the request."""
        if ctx.vector is None:
            return
        found = self.cache.similar(_scope(ctx), ctx.vector)
        _check_backend(self.cache, ctx)
        if found is not None:
            _hit(ctx, found[0], "semantic")
        if self.on_lookup is not None:
            self.on_lookup(found is not None)


class CacheStoreStage:
    """Store the checked answer (skipped for refusals and for answers that came from the cache)."""

    name = "cache_store"
    always = False

    def __init__(self, cache: CacheBackend) -> None:
        self.cache = cache

    async def run(self, ctx: RequestContext) -> None:
        """Put the answer under the question's text and vector."""
        if ctx.answer is None or getattr(ctx.answer, "notice", None):
            return  # a fallback answer (the LLM failed) is not what the stack normally says: do not keep it
        entry = CachedAnswer(ctx.text, ctx.answer, tuple(ctx.chunks), time.monotonic())
        self.cache.put(_scope(ctx), ctx.text, ctx.vector, entry)
        _check_backend(self.cache, ctx)
