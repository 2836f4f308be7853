"""The guardrail stages: the input guard in two phases around the one embedding, and the output guard.

Phase one (``check_input``: normalisation and PII) runs before the question is embedded, so the redacted text is
what gets embedded, retrieved with, sent to an LLM, logged and rated. Phase two (``screen_input``: injection rules
and classifier, topic and scope, moderation) reuses the embed stage's vector. A block ends the request with a plain
refusal and no retrieved text. The output guard checks the answer (grounding, format, PII leak, safety, business
rules); on a stream it checks whole sentences as they complete and withholds what fails.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from rag.answer import ExtractiveAnswerer
from rag.stages.chain import StreamEvent, sentence_deltas
from rag.stages.context import Refusal, RequestContext

if TYPE_CHECKING:
    from rag.guardrails.chain import InputGuard, OutputGuard
    from rag.guardrails.types import Verdict


def _refuse(ctx: RequestContext, check: str, verdicts: tuple[Verdict, ...]) -> None:
    reason = next((v.reason for v in verdicts if v.name == check and v.verdict == "block"), "refused by a guardrail")
    ctx.refusal = Refusal(check=check, reason=reason)
    ctx.chunks, ctx.ranking = [], []


class InputPrepareStage:
    """Normalise the question and redact (or block on) PII before anything else sees it."""

    name = "check_input"
    always = False

    def __init__(self, guard: InputGuard) -> None:
        self.guard = guard

    async def run(self, ctx: RequestContext) -> None:
        """Set ``ctx.text`` to the redacted question; a blocked PII type ends the request."""
        prepared = self.guard.prepare(ctx.text)
        ctx.prepared = prepared
        ctx.text = prepared.text
        if prepared.blocked_by:
            ctx.verdicts.extend(prepared.verdicts)
            _refuse(ctx, prepared.blocked_by, prepared.verdicts)


class InputScreenStage:
    """Injection, topic and moderation checks over the prepared question and its vector."""

    name = "screen_input"
    always = False

    def __init__(self, guard: InputGuard) -> None:
        self.guard = guard

    async def run(self, ctx: RequestContext) -> None:
        """Record every input verdict; a block ends the request."""
        prepared = ctx.prepared
        result = self.guard.check(prepared if prepared is not None else ctx.text, ctx.vector)
        ctx.verdicts.extend(result.verdicts)
        if result.blocked_by:
            _refuse(ctx, result.blocked_by, result.verdicts)


class OutputGuardStage:
    """Check the answer; unsupported sentences are dropped, a block replaces the answer with a refusal."""

    name = "check_output"
    always = False

    def __init__(self, guard: OutputGuard) -> None:
        self.guard = guard

    async def run(self, ctx: RequestContext) -> None:
        """Replace ``ctx.answer`` with the checked one."""
        if ctx.answer is None:
            return
        llm = not isinstance(ctx.engine.answerer, ExtractiveAnswerer)
        result = self.guard.check(ctx.text, ctx.answer, ctx.chunks, llm=llm)
        ctx.verdicts.extend(result.verdicts)
        if result.blocked_by:
            _refuse(ctx, result.blocked_by, result.verdicts)
            return
        ctx.answer = result.answer

    async def wrap(self, ctx: RequestContext, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
        """An LLM stream passes sentence by sentence through the checks; an extractive answer (computed whole
        before its first sentence is sent) is checked whole, then sent. Notices (no answer text) pass at once."""
        if isinstance(ctx.engine.answerer, ExtractiveAnswerer):
            async for event in events:
                if event.kind == "notice":
                    yield event
                elif event.kind == "done":
                    started = time.perf_counter()
                    await self.run(ctx)
                    _add_ms(ctx, self.name, started)
                    if ctx.refusal is not None:
                        return
                    answer = ctx.answer
                    if answer is not None:
                        for delta in sentence_deltas(answer):
                            yield delta
                    yield event
            return
        guard = self.guard.stream(ctx.text, ctx.chunks)
        async for event in events:
            if event.kind == "delta":
                started = time.perf_counter()
                step = guard.feed(event.text)
            elif event.kind == "done":
                started = time.perf_counter()
                step = guard.finish()
            else:
                yield event
                continue
            ctx.verdicts.extend(step.verdicts)
            _add_ms(ctx, self.name, started)
            if step.blocked_by:
                _refuse(ctx, step.blocked_by, step.verdicts)
                return
            if step.release:
                yield StreamEvent("delta", step.release)
            if event.kind == "done":
                yield event


def _add_ms(ctx: RequestContext, stage: str, started: float) -> None:
    ctx.timings[stage] = round(ctx.timings.get(stage, 0.0) + (time.perf_counter() - started) * 1000, 3)
