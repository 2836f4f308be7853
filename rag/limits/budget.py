"""Daily and monthly token and money budgets per API key and per tenant, kept in the request store's database.

Why the request store: every worker of every replica already writes to it and it outlives restarts, so a budget
used up by one worker stops the next request on any other, and a restart does not hand out a fresh budget. A
charge is one atomic ``UPDATE ... SET tokens = tokens + :n`` per window (an ``INSERT`` the first time), so workers
racing each other never lose a charge. A check is one indexed read of at most four rows.

Semantics: the request that crosses a hard limit is answered (its cost is known only afterwards) and charged; for
the next one :meth:`BudgetLedger.check` raises :class:`rag.errors.BudgetExceeded` naming the budget and its reset
(the next UTC midnight, or the first of the next month). What the service does then is ``over_budget``'s choice
(:class:`rag.stages.limit.BudgetStage`): answer extractively at no charge (the default), or refuse with 429.
Crossing ``budget_soft_fraction`` of a budget logs a warning and calls the ``on_soft`` hook (the service counts it
in Prometheus, where the monitoring rules alert), once per window and process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from rag.errors import BudgetExceeded
from rag.limits.settings import LimitsSettings

if TYPE_CHECKING:
    from sqlalchemy import Engine

logger = logging.getLogger(__name__)

Scope = Literal["key", "tenant"]
Period = Literal["daily", "monthly"]
Unit = Literal["tokens", "usd"]


@dataclass(frozen=True)
class Budget:
    """One configured budget: ``key:daily_usd`` is ``Budget("key", "daily", "usd", limit)``."""

    scope: Scope
    period: Period
    unit: Unit
    limit: float

    @property
    def name(self) -> str:
        """What the 429 and the alert call it."""
        return f"{self.scope}:{self.period}_{self.unit}"


def budgets_of(settings: LimitsSettings) -> tuple[Budget, ...]:
    """Every budget ``settings`` configures."""
    out: list[Budget] = []
    for scope in ("key", "tenant"):
        for period in ("daily", "monthly"):
            for unit in ("tokens", "usd"):
                limit = getattr(settings, f"{scope}_{period}_{unit}")
                if limit is not None:
                    out.append(Budget(scope, period, unit, float(limit)))
    return tuple(out)


def window(period: Period, now: datetime) -> tuple[str, datetime]:
    """The window ``now`` falls in (its stored name) and when it ends (UTC)."""
    if period == "daily":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"day:{start.date().isoformat()}", start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return f"month:{start.strftime('%Y-%m')}", end


@dataclass(frozen=True)
class Spend:
    """What one key or tenant spent in one window."""

    tokens: int
    cost_usd: float


class BudgetLedger:
    """Checks and charges budgets in the request store's database (``url``), migrated on open.

    Usage example::

        ledger = BudgetLedger("sqlite:////srv/ragops/requests.db", LimitsSettings(key_daily_usd=5.0))
        ledger.check(api_key="alice", tenant="acme")              # raises BudgetExceeded when used up
        ledger.charge(api_key="alice", tenant="acme", tokens=812, cost_usd=0.0031)
    """

    def __init__(
        self,
        url: str,
        settings: LimitsSettings,
        *,
        on_soft: Callable[[Budget, str], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.budgets = budgets_of(settings)
        self.soft_fraction = settings.budget_soft_fraction
        self.over_budget = settings.over_budget
        self._url = url
        self._engine: Engine | None = None
        self._on_soft = on_soft
        self._clock = clock or (lambda: datetime.now(UTC))
        self._alerted: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any budget is configured (otherwise no database call is made)."""
        return bool(self.budgets)

    def engine(self) -> Engine:
        """The database engine, opened (and the schema migrated) on first use."""
        with self._lock:
            if self._engine is None:
                from rag.store.migrate import upgrade
                from rag.store.store import store_engine

                engine = store_engine(self._url)
                upgrade(engine)
                self._engine = engine
            return self._engine

    def close(self) -> None:
        """Release the database connections."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def spend(self, scope: Scope, identity: str, period: Period) -> Spend:
        """What ``identity`` spent in the current ``period`` window."""
        from sqlalchemy import select

        from rag.store.tables import budget_spend as t

        name, _ = window(period, self._clock())
        with self.engine().connect() as conn:
            row = conn.execute(
                select(t.c.tokens, t.c.cost_usd).where(t.c.scope == scope, t.c.identity == identity, t.c.window == name)
            ).first()
        return Spend(int(row[0]), float(row[1])) if row is not None else Spend(0, 0.0)

    def check(self, *, api_key: str | None, tenant: str | None) -> None:
        """Refuse the request when a hard limit is reached; raise the soft-limit alert past its fraction.

        Raises:
            BudgetExceeded: Naming the first used-up budget and when it resets.
        """
        now = self._clock()
        ids: dict[str, str | None] = {"key": api_key, "tenant": tenant}
        for budget in self.budgets:
            identity = ids[budget.scope]
            if identity is None:
                continue
            spent = self.spend(budget.scope, identity, budget.period)
            used = spent.tokens if budget.unit == "tokens" else spent.cost_usd
            name, ends = window(budget.period, now)
            if used >= budget.limit:
                reset = ends.isoformat(timespec="seconds").replace("+00:00", "Z")
                raise BudgetExceeded(budget.name, reset, max(1.0, (ends - now).total_seconds()))
            if used >= self.soft_fraction * budget.limit:
                self._soft(budget, identity, name, used)

    def charge(self, *, api_key: str | None, tenant: str | None, tokens: int, cost_usd: float) -> None:
        """Add a finished request's tokens and cost to every window of its key and tenant."""
        if not self.enabled or (tokens <= 0 and cost_usd <= 0):
            return
        from sqlalchemy import insert, update
        from sqlalchemy.exc import IntegrityError

        from rag.store.tables import budget_spend as t

        now = self._clock()
        scopes = {b.scope for b in self.budgets}
        periods = {b.period for b in self.budgets}
        targets = [
            (scope, identity, window(period, now)[0])
            for scope, identity in (("key", api_key), ("tenant", tenant))
            if identity is not None and scope in scopes
            for period in sorted(periods)
        ]
        with self.engine().begin() as conn:
            for scope, identity, name in targets:
                where = (t.c.scope == scope, t.c.identity == identity, t.c.window == name)
                added = update(t).where(*where).values(tokens=t.c.tokens + tokens, cost_usd=t.c.cost_usd + cost_usd)
                if conn.execute(added).rowcount:
                    continue
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(t).values(
                                scope=scope, identity=identity, window=name, tokens=tokens, cost_usd=cost_usd
                            )
                        )
                except IntegrityError:  # another worker inserted the row meanwhile: add to it
                    conn.execute(added)

    def _soft(self, budget: Budget, identity: str, name: str, used: float) -> None:
        key = (budget.name, identity, name)
        if key in self._alerted:
            return
        self._alerted.add(key)
        logger.warning(
            "budget soft limit reached",
            extra={"budget": budget.name, "identity": identity, "window": name, "used": used, "limit": budget.limit},
        )
        if self._on_soft is not None:
            self._on_soft(budget, identity)
