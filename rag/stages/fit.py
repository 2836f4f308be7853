"""The fit_context stage: the retrieved chunks cut to the stack's input token budget before an LLM reads them.

Only stacks that call an LLM and set ``llm.max_input_tokens`` get it (an extractive answer costs nothing to read).
What was saved is reported with the request's usage (``context_tokens_saved``).
"""

from __future__ import annotations

import anyio

from rag.context_fit import fit_context
from rag.stages.context import RequestContext


class FitContextStage:
    """Drop the lowest-ranked chunks, then trim to the best sentences, until the context fits ``budget``."""

    name = "fit_context"
    always = False

    def __init__(self, budget: int) -> None:
        self.budget = budget

    async def run(self, ctx: RequestContext) -> None:
        """Replace ``ctx.chunks`` with the fitted ones; ``ctx.ranking`` (what evaluation scores) is unchanged."""
        if not ctx.chunks:
            return
        fitted = await anyio.to_thread.run_sync(
            lambda: fit_context(ctx.text, ctx.chunks, budget=self.budget, count_tokens=ctx.engine.embedder.count_tokens)
        )
        ctx.chunks = list(fitted.chunks)
        ctx.context_tokens_saved = fitted.saved
