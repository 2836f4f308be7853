"""The spend ledger: tokens and cost of the stored requests, grouped by API key, tenant or stack version.

Why in the request store and not a second table: the record stage already writes each request's tokens and cost
(at the stack's prices) with its principal, tenant and stack version, in the same row as the query log, so the
ledger is a GROUP BY over it and cannot drift from what the responses reported. A request answered from the answer
cache is in the ledger with what its response reported too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, Engine, Integer, String, cast, func, literal, select

from rag.errors import BadQuery
from rag.store.tables import requests

Grouping = Literal["tenant", "key", "stack"]
GROUPINGS: tuple[Grouping, ...] = ("tenant", "key", "stack")
NO_TENANT = "(none)"
"""The group of requests with no tenant (the operator, anonymous callers on loopback)."""

DAY_S = 86_400


@dataclass(frozen=True)
class SpendRow:
    """One group's totals over the window."""

    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class DailySpend:
    """One tenant's cost on one UTC day (``day`` counts days since the epoch)."""

    tenant: str
    day: int
    requests: int
    cost_usd: float
    tokens: int


def _group_column(by: Grouping) -> ColumnElement[str]:
    c = requests.c
    if by == "tenant":
        return func.coalesce(c.tenant, literal(NO_TENANT))
    if by == "key":
        return c.principal
    if by == "stack":
        name = func.coalesce(c.stack_name, literal("?"))
        version = func.coalesce(cast(c.stack_version, String), literal("?"))
        return name + literal(" v") + version
    raise BadQuery(f"unknown grouping {by!r}: use one of {', '.join(GROUPINGS)}")


def spend(engine: Engine, by: Grouping, since: float, until: float) -> list[SpendRow]:
    """Totals per group over ``since <= at < until``, most expensive first (then most tokens)."""
    if until < since:
        raise BadQuery(f"window ends ({until}) before it starts ({since})")
    c = requests.c
    group = _group_column(by).label("grp")
    query = (
        select(
            group,
            func.count(),
            func.coalesce(func.sum(c.prompt_tokens), 0),
            func.coalesce(func.sum(c.completion_tokens), 0),
            func.coalesce(func.sum(c.cost_usd), 0.0),
        )
        .where(c.at >= since, c.at < until)
        .group_by(group)
    )
    with engine.connect() as db:
        rows = [SpendRow(str(g), int(n), int(p), int(o), float(cost)) for g, n, p, o, cost in db.execute(query)]
    return sorted(rows, key=lambda r: (-r.cost_usd, -r.total_tokens, r.group))


def daily_spend(engine: Engine, since: float, until: float) -> list[DailySpend]:
    """Cost per tenant and UTC day over the window (days without requests are absent: callers fill zeros)."""
    if until < since:
        raise BadQuery(f"window ends ({until}) before it starts ({since})")
    c = requests.c
    tenant = func.coalesce(c.tenant, literal(NO_TENANT)).label("tenant")
    # SQLite's CAST truncates (at >= 0, so that is the UTC day); PostgreSQL's rounds, so it floors first
    days = c.at / DAY_S
    day = cast(days if engine.dialect.name == "sqlite" else func.floor(days), Integer).label("day")
    query = (
        select(
            tenant,
            day,
            func.count(),
            func.coalesce(func.sum(c.cost_usd), 0.0),
            func.coalesce(func.sum(c.prompt_tokens + c.completion_tokens), 0),
        )
        .where(c.at >= since, c.at < until)
        .group_by(tenant, day)
        .order_by(tenant, day)
    )
    with engine.connect() as db:
        return [DailySpend(str(t), int(d), int(n), float(cost), int(tok)) for t, d, n, cost, tok in db.execute(query)]
