"""The limit stage: per-key and per-tenant quotas, checked before any work is done for the request.

It runs right after the caller is known (the principal names the key and the tenant) and before the question is
checked, embedded or answered, so a caller over quota costs the service almost nothing: the request ends with
:class:`rag.errors.RateLimited` (HTTP 429 with ``Retry-After``). Tokens are counted once the answer is known, by
:class:`TokenChargeStage` at the end of the chain, so an expensive answer uses up the minute's token budget and the
next request waits. Admission control (a bounded queue of concurrent requests) is not a stage: it has to hold a
slot for the whole request, streams included, so the service takes it around the chain (``QueryService.request``).
Daily and monthly budgets work over the request store's database: :class:`BudgetChargeStage` adds each answer's
tokens and dollars, and :class:`BudgetStage` acts on a caller whose budget is used up as ``limits.over_budget``
says: ``"extractive"`` (the default) lets the request on and marks it (``ctx.over_budget``), so the answer stage
answers it extractively, without the LLM, charging nothing and announcing ``llm_over_budget``: a used-up budget stops
the spending, not the service. ``"refuse"`` ends it with :class:`rag.errors.BudgetExceeded` (HTTP 429 naming the
budget and its reset, ``Retry-After`` until then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from rag.errors import BudgetExceeded, RateLimited
from rag.stages.context import OverBudget, RequestContext

if TYPE_CHECKING:
    from rag.limits.budget import BudgetLedger
    from rag.limits.rate import RateLimiter


class LimitStage:
    """Refuse a request whose key or tenant is over quota; count it otherwise."""

    name = "limit"
    always = False

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def run(self, ctx: RequestContext) -> None:
        """Raise :class:`RateLimited` naming the quota that is used up."""
        principal = ctx.principal
        # tokens=1 asks "is there any room left in the token budget"; the real count follows the answer
        decision = self.limiter.check(api_key=principal.identity, tenant=principal.tenant, tokens=1)
        if decision.degraded:
            ctx.degrade("limits_per_worker")
        if not decision.allowed:
            raise RateLimited(decision.limit or "quota", decision.retry_after_s)


class TokenChargeStage:
    """Count the tokens the request used against the caller's token quotas (refused requests used none)."""

    name = "charge_tokens"
    always = True

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def run(self, ctx: RequestContext) -> None:
        """Charge ``ctx.usage.total_tokens``."""
        principal = ctx.principal
        self.limiter.charge_tokens(api_key=principal.identity, tenant=principal.tenant, tokens=ctx.usage.total_tokens)


class BudgetStage:
    """Answer extractively, or refuse, a request whose key or tenant has used up a daily or monthly budget
    (:mod:`rag.limits.budget`; which of the two: ``ledger.over_budget``, see the module docstring)."""

    name = "budget"
    always = False

    def __init__(self, ledger: BudgetLedger) -> None:
        self.ledger = ledger

    async def run(self, ctx: RequestContext) -> None:
        """Check the caller's budgets (a database read, off the event loop); past one, set ``ctx.over_budget``, or
        raise :class:`rag.errors.BudgetExceeded` naming the budget and its reset when the ledger refuses."""
        principal = ctx.principal
        try:
            await anyio.to_thread.run_sync(
                lambda: self.ledger.check(api_key=principal.identity, tenant=principal.tenant)
            )
        except BudgetExceeded as exc:
            if self.ledger.over_budget == "refuse":
                raise
            ctx.over_budget = OverBudget(budget=exc.limit, reset_at=exc.reset_at)


class BudgetChargeStage:
    """Add the request's tokens and cost to its key's and tenant's budgets (refused requests spent nothing)."""

    name = "charge_budget"
    always = True

    def __init__(self, ledger: BudgetLedger) -> None:
        self.ledger = ledger

    async def run(self, ctx: RequestContext) -> None:
        """Charge ``ctx.usage``."""
        principal, usage = ctx.principal, ctx.usage
        await anyio.to_thread.run_sync(
            lambda: self.ledger.charge(
                api_key=principal.identity, tenant=principal.tenant, tokens=usage.total_tokens, cost_usd=usage.cost_usd
            )
        )
