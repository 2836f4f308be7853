"""The route stage and the tiered answer stage: the stack's :mod:`rag.routing` on the request path.

``route`` computes the extractive answer (2 ms) and the router's features and picks a tier; ``answer`` (this
module's :class:`TieredAnswerStage`, in place of :class:`rag.stages.answer.AnswerStage` for a stack with
``routing``) runs the chosen tier, checks its output and escalates to the next tier while the check fails. A
streamed request gets the answer that passed, sentence by sentence: text that fails the check must not reach the
reader before the escalation replaces it, so a routed stack's first token comes after the check. A caller whose
budget is used up gets the route stage's extractive answer with a notice and no tier is called (``llm_over_budget``,
as in :mod:`rag.stages.answer`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio

from rag.answer import ExtractiveAnswerer
from rag.errors import AnswerError
from rag.routing import Attempt, RoutePlan, RoutingTrace, call_tier, check_answer, decide, features
from rag.stages.answer import AnswerStage
from rag.stages.chain import StreamEvent, sentence_deltas
from rag.stages.context import RequestContext, Usage

if TYPE_CHECKING:
    from rag.routing import Tier
    from rag.types import Answer, RoutingConfig


class RouteStage:
    """Pick the cheapest tier likely to pass its output check; sets ``ctx.route_plan``."""

    name = "route"
    always = False

    async def run(self, ctx: RequestContext) -> None:
        """Decide from the question, the retrieval and the extractive answer."""
        routing = ctx.engine.config.routing
        assert routing is not None  # build_chain adds this stage only for a routed stack
        extractive = ctx.engine.extractive.answer(ctx.text, ctx.chunks)
        feats = features(ctx.text, ctx.chunks, extractive)
        ctx.route_plan = RoutePlan(decide(routing, feats), feats, extractive)


class TieredAnswerStage:
    """Answer with the routed tier, escalating on a failed output check; sets ``ctx.answer``, ``ctx.usage`` (every
    attempt's tokens and cost: escalation pays for both) and ``ctx.routing``."""

    name = "answer"
    always = False

    async def run(self, ctx: RequestContext) -> None:
        """Try tiers from the routed one up until one passes (or the escalations run out: the last answer stands,
        else the extractive answer with a notice)."""
        plan = ctx.route_plan
        routing = ctx.engine.config.routing
        assert plan is not None and routing is not None
        if ctx.over_budget is not None:  # no tier is called: nothing is spent, nothing charged
            from rag.llm import noticed

            stand_in = noticed(plan.extractive, ctx.over_budget.notice)
            AnswerStage.check_citations(ctx, stand_in)
            ctx.answer, ctx.notice, ctx.usage = stand_in, ctx.over_budget.notice, Usage()
            ctx.degrade("llm_over_budget")
            ctx.routing = self._trace(plan, routing, "extractive-over-budget", ())
            return
        tiers = ctx.engine.tiers
        attempts: list[Attempt] = []
        answers: list[tuple[Tier, Answer]] = []
        prompt = completion = 0
        cost = 0.0
        last = min(len(tiers) - 1, plan.decision.tier + routing.max_escalations)
        for tier in tiers[plan.decision.tier : last + 1]:
            started = time.perf_counter()
            got = await self._call(ctx, tier, plan)
            ms = (time.perf_counter() - started) * 1000
            if isinstance(got, AnswerError):
                attempts.append(Attempt(tier.config.name, False, "error", 0, 0, 0.0, ms))
                continue
            p, c = self._tokens(ctx, got)
            spent = tier.cost_usd(p, c) if got.tokens is not None else 0.0
            prompt, completion, cost = prompt + p, completion + c, cost + spent
            check = await anyio.to_thread.run_sync(
                check_answer, routing, got, ctx.chunks, plan.features, ctx.engine.embedder.encode
            )
            ms = (time.perf_counter() - started) * 1000
            name = tier.config.name
            attempts.append(Attempt(name, check.passed, check.reason, p, c, spent, ms, check.grounded_share))
            answers.append((tier, got))
            if check.passed:
                break
        if answers:
            tier, answer = answers[-1]
            answered_by = tier.config.name
        else:  # every tier failed to answer at all
            answer, answered_by = plan.extractive, "extractive-fallback"
            ctx.notice = "every answering tier failed; the extractive answer is shown"
            ctx.degrade("llm_fallback")
        AnswerStage.check_citations(ctx, answer)
        ctx.answer = answer
        ctx.usage = Usage(prompt_tokens=prompt, completion_tokens=completion, cost_usd=round(cost, 8))
        ctx.routing = self._trace(plan, routing, answered_by, tuple(attempts))

    @staticmethod
    def _trace(
        plan: RoutePlan, routing: RoutingConfig, answered_by: str, attempts: tuple[Attempt, ...]
    ) -> RoutingTrace:
        return RoutingTrace(
            chosen=plan.decision.name,
            answered_by=answered_by,
            probabilities={t.name: p for t, p in zip(routing.tiers, plan.decision.probabilities, strict=True)},
            features=dict(zip(plan.features.__dataclass_fields__, plan.features.vector(), strict=True)),
            attempts=attempts,
        )

    async def stream(self, ctx: RequestContext) -> AsyncIterator[StreamEvent]:
        """The checked answer as sentence deltas, then ``done`` (see the module docstring)."""
        await self.run(ctx)
        ctx.first_token_ms = ctx.total_ms()
        assert ctx.answer is not None
        if ctx.over_budget is not None:
            yield StreamEvent("notice", ctx.over_budget.notice)
        for delta in sentence_deltas(ctx.answer):
            yield delta
        yield StreamEvent("done", answer=ctx.answer)

    @staticmethod
    async def _call(ctx: RequestContext, tier: Tier, plan: RoutePlan) -> Answer | AnswerError:
        if isinstance(tier.answerer, ExtractiveAnswerer):
            return plan.extractive  # computed by the route stage over the same chunks
        return await anyio.to_thread.run_sync(call_tier, tier, ctx.text, ctx.chunks)

    @staticmethod
    def _tokens(ctx: RequestContext, answer: Answer) -> tuple[int, int]:
        if answer.tokens is not None:
            return answer.tokens.prompt, answer.tokens.completion
        return ctx.engine.token_usage(ctx.text, ctx.chunks, answer)
