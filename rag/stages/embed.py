"""The question is embedded once, early: the same vector serves the input guard, the cache and retrieval."""

from __future__ import annotations

from rag.stages.context import RequestContext
from rag.stages.ports import VectorPort


class EmbedStage:
    """Embed ``ctx.text`` (the normalised, redacted question) with the stack's embedder."""

    name = "embed"
    always = False

    def __init__(self, vectors: VectorPort) -> None:
        self.vectors = vectors

    async def run(self, ctx: RequestContext) -> None:
        """Set ``ctx.vector``."""
        ctx.vector = await self.vectors.embed(ctx.engine, ctx.text)
