"""Assembling the chain a stack serves with, from its configuration.

One function builds the chain for the service and for evaluation; they differ only in the ports they pass (how
vectors are computed, where requests are recorded), never in which checks run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rag.stages.answer import AnswerStage
from rag.stages.cache import CacheStoreStage, ExactCacheStage, SemanticCacheStage
from rag.stages.chain import Chain, Stage
from rag.stages.embed import EmbedStage
from rag.stages.fit import FitContextStage
from rag.stages.guard import InputPrepareStage, InputScreenStage, OutputGuardStage
from rag.stages.limit import BudgetChargeStage, BudgetStage, LimitStage, TokenChargeStage
from rag.stages.record import Recorder, RecordStage
from rag.stages.retrieve import RetrieveStage
from rag.stages.route import RouteStage, TieredAnswerStage
from rag.stages.validate import RequestLimits, ValidateStage

if TYPE_CHECKING:
    from rag.cache import CacheBackend
    from rag.engine import RagEngine
    from rag.limits.breaker import CircuitBreaker
    from rag.limits.budget import BudgetLedger
    from rag.limits.rate import RateLimiter
    from rag.stages.ports import VectorPort


def build_chain(
    engine: RagEngine,
    *,
    vectors: VectorPort,
    limits: RequestLimits | None = None,
    recorder: Recorder | None = None,
    limiter: RateLimiter | None = None,
    cache: CacheBackend | None = None,
    on_cache_lookup: Callable[[bool], None] | None = None,
    budgets: BudgetLedger | None = None,
    breaker: CircuitBreaker | None = None,
) -> Chain:
    """The stages for ``engine``'s stack, in order: limit, budget, validate, check_input, cache_exact, embed,
    screen_input, cache, retrieve, fit_context, route, answer, check_output, cache_store, charge_tokens,
    charge_budget, record (the guardrail stages only when the stack has guardrails; fit_context only for an LLM
    stack with ``llm.max_input_tokens``; route, with the tiered answer stage, only for a stack with ``routing``; the
    limit stages only with a ``limiter`` with quotas, the budget stages only with ``budgets`` configured and the
    cache stages only with a ``cache``: the service's, never evaluation's; ``on_cache_lookup(hit)`` is told each
    lookup's outcome; ``breaker`` guards the index searches)."""
    guards = engine.guards
    quotas = limiter is not None and limiter.enabled
    stages: list[Stage] = []
    if quotas:
        assert limiter is not None
        stages.append(LimitStage(limiter))
    spend = budgets is not None and budgets.enabled
    if spend:
        assert budgets is not None
        stages.append(BudgetStage(budgets))
    stages.append(ValidateStage(limits or RequestLimits()))
    if guards is not None:
        stages.append(InputPrepareStage(guards.input))
    if cache is not None:
        stages.append(ExactCacheStage(cache, on_cache_lookup))
    stages.append(EmbedStage(vectors))
    if guards is not None:
        stages.append(InputScreenStage(guards.input))
    if cache is not None:
        stages.append(SemanticCacheStage(cache, on_cache_lookup))
    stages.append(RetrieveStage(vectors, breaker))
    budget = engine.config.llm.max_input_tokens
    if engine.config.answerer.kind == "llm" and budget is not None:
        stages.append(FitContextStage(budget))
    if engine.config.routing is not None:  # a tiered stack: route, then answer with escalation
        stages += [RouteStage(), TieredAnswerStage()]
    else:
        stages.append(AnswerStage())
    if guards is not None:
        stages.append(OutputGuardStage(guards.output))
    if cache is not None:
        stages.append(CacheStoreStage(cache))
    if quotas:
        assert limiter is not None
        stages.append(TokenChargeStage(limiter))
    if spend:
        assert budgets is not None
        stages.append(BudgetChargeStage(budgets))
    if recorder is not None:
        stages.append(RecordStage(recorder))
    return Chain(stages)
