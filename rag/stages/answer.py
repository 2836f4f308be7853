"""The answer stage: the stack's answerer over the retrieved chunks, whole or as a stream of tokens.

An extractive answer costs about 2 ms of CPU and is computed in the event loop (a thread hop would cost as much);
an LLM answer blocks for up to ``llm.timeout_s`` and runs on a worker thread, its stream pulled token by token
from the thread so the event loop never waits on the network. Token usage is counted here, once the answer is
known: an LLM's own reported usage (what it bills, priced by the stack's ``llm`` prices into ``cost_usd``), else
the embedder's word pieces of the question, the chunks and the answer (an extractive answer costs nothing).

A caller whose budget is used up (``ctx.over_budget``, set by :class:`rag.stages.limit.BudgetStage`) gets what a
failed LLM gets: the extractive answer with a notice (a ``notice`` event first on a stream), announced as
``llm_over_budget``; the answerer is not called, and the usage is zero, so nothing is charged to any budget or quota.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import anyio

from rag.answer import ExtractiveAnswerer
from rag.errors import AnswerError
from rag.stages.chain import StreamEvent, sentence_deltas
from rag.stages.context import RequestContext, Usage

if TYPE_CHECKING:
    from rag.stages.context import OverBudget
    from rag.types import Answer

_END = object()


def over_budget_answer(ctx: RequestContext, over: OverBudget) -> Answer:
    """The extractive answer over ``ctx.chunks`` with the notice that ``over`` is used up (the LLM fallback's shape)."""
    from rag.llm import noticed  # the LLM client's module: imported when first needed, as rag.engine does

    return noticed(ctx.engine.extractive.answer(ctx.text, ctx.chunks), over.notice)


def notice_of(answer: Answer | None) -> str | None:
    """What the caller should be told about how the answer was made (an LLM failed: extractive fallback)."""
    notice = getattr(answer, "notice", None)  # set by rag.llm.FallbackAnswerer (NoticedAnswer)
    return notice if isinstance(notice, str) else None


class AnswerStage:
    """Answer ``ctx.text`` from ``ctx.chunks``; sets ``ctx.answer``, ``ctx.usage`` and ``ctx.notice``."""

    name = "answer"
    always = False

    async def run(self, ctx: RequestContext) -> None:
        """The whole answer."""
        answerer = ctx.engine.answerer
        if ctx.over_budget is not None:
            answer = over_budget_answer(ctx, ctx.over_budget)
        elif isinstance(answerer, ExtractiveAnswerer):
            answer = answerer.answer(ctx.text, ctx.chunks)
        else:
            answer = await anyio.to_thread.run_sync(answerer.answer, ctx.text, ctx.chunks)
        self._finish(ctx, answer)

    async def stream(self, ctx: RequestContext) -> AsyncIterator[StreamEvent]:
        """Token deltas (LLM) or sentences (extractive) as they are produced, then ``done``."""
        started = time.perf_counter()
        answerer = ctx.engine.answerer
        events = getattr(answerer, "stream_events", None)
        try:
            if ctx.over_budget is not None:
                answer = over_budget_answer(ctx, ctx.over_budget)
                ctx.first_token_ms = ctx.total_ms()
                yield StreamEvent("notice", ctx.over_budget.notice)
                for delta in sentence_deltas(answer):
                    yield delta
            elif events is None:
                answer = answerer.answer(ctx.text, ctx.chunks)
                ctx.first_token_ms = ctx.total_ms()
                for delta in sentence_deltas(answer):
                    yield delta
            else:
                final: Answer | None = None
                source: Iterator[object] = events(ctx.text, ctx.chunks)
                while (event := await anyio.to_thread.run_sync(next, source, _END)) is not _END:
                    kind, text = getattr(event, "kind", None), getattr(event, "text", "")
                    if kind == "delta" and text:
                        if ctx.first_token_ms is None:
                            ctx.first_token_ms = ctx.total_ms()
                        yield StreamEvent("delta", text)
                    elif kind == "notice":
                        yield StreamEvent("notice", text)
                    elif kind == "done":
                        final = getattr(event, "answer", None)
                if final is None:
                    raise AnswerError("the answerer's stream ended without an answer")
                answer = final
            self._finish(ctx, answer)
        finally:
            ctx.timings[self.name] = round((time.perf_counter() - started) * 1000, 3)
        yield StreamEvent("done", answer=answer)

    @staticmethod
    def check_citations(ctx: RequestContext, answer: Answer) -> None:
        """Refuse an answer citing a chunk that was not retrieved (an answerer bug, never shown to a reader)."""
        retrieved = {c.chunk_id for c in ctx.chunks}
        if any(c.chunk_id not in retrieved for c in answer.citations):
            raise AnswerError("the answer cited a chunk that was not retrieved")

    @staticmethod
    def _finish(ctx: RequestContext, answer: Answer) -> None:
        AnswerStage.check_citations(ctx, answer)
        ctx.answer = answer
        ctx.notice = notice_of(answer)
        if ctx.over_budget is not None:
            ctx.degrade("llm_over_budget")
            ctx.usage = Usage()  # no model was called: nothing billed, nothing charged to budgets or token quotas
            return
        if ctx.notice is not None:
            ctx.degrade("llm_fallback")
        if answer.tokens is not None:  # the model's own count: what it bills
            prompt, completion = answer.tokens.prompt, answer.tokens.completion
        else:
            prompt, completion = ctx.engine.token_usage(ctx.text, ctx.chunks, answer)
        llm = ctx.engine.config.llm
        cost = llm.cost_usd(prompt, completion) if answer.tokens is not None else 0.0
        ctx.usage = Usage(prompt_tokens=prompt, completion_tokens=completion, cost_usd=round(cost, 8))
