"""Budgets in the request store's database: a second ledger on the same file (another worker, or the service after a
restart) sees what the first charged, the hard limit stops the next request naming the budget and its reset, and
the soft limit alerts once per window."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from rag.errors import BudgetExceeded
from rag.limits.budget import Budget, BudgetLedger, window
from rag.limits.settings import LimitsSettings

NOW = datetime(2026, 12, 31, 22, 0, tzinfo=UTC)


def _ledger(path: Path, alerts: list[str] | None = None, **budgets: object) -> BudgetLedger:
    def soft(budget: Budget, identity: str) -> None:
        if alerts is not None:
            alerts.append(f"{budget.name}/{identity}")

    return BudgetLedger(
        f"sqlite:///{path / 'requests.db'}", LimitsSettings.model_validate(budgets), on_soft=soft, clock=lambda: NOW
    )


def test_a_hard_limit_holds_across_ledgers_on_one_database(tmp_path: Path) -> None:
    first = _ledger(tmp_path, key_daily_usd=0.01, tenant_monthly_tokens=10_000)
    try:
        first.check(api_key="alice", tenant="acme")
        first.charge(api_key="alice", tenant="acme", tokens=900, cost_usd=0.012)  # the crossing request is served
    finally:
        first.close()
    second = _ledger(tmp_path, key_daily_usd=0.01, tenant_monthly_tokens=10_000)  # a restart, or another worker
    try:
        with pytest.raises(BudgetExceeded, match=r"key:daily_usd exceeded; it resets at 2027-01-01T00:00:00Z") as err:
            second.check(api_key="alice", tenant="acme")
        assert err.value.retry_after_s == pytest.approx(7200)
        second.check(api_key="bob", tenant="acme")  # another key has its own budget
        second.charge(api_key="bob", tenant="acme", tokens=100, cost_usd=0.0)
        assert second.spend("tenant", "acme", "monthly").tokens == 1000  # the tenant's counts both keys
    finally:
        second.close()


def test_the_soft_limit_alerts_once_per_window(tmp_path: Path) -> None:
    alerts: list[str] = []
    ledger = _ledger(tmp_path, alerts, tenant_daily_tokens=1000, budget_soft_fraction=0.5)
    try:
        ledger.charge(api_key="alice", tenant="acme", tokens=600, cost_usd=0.0)
        ledger.check(api_key="alice", tenant="acme")
        ledger.check(api_key="alice", tenant="acme")
        assert alerts == ["tenant:daily_tokens/acme"]
    finally:
        ledger.close()


def test_windows_end_at_utc_midnight_and_the_first_of_the_month() -> None:
    assert window("daily", NOW) == ("day:2026-12-31", datetime(2027, 1, 1, tzinfo=UTC))
    assert window("monthly", NOW) == ("month:2026-12", datetime(2027, 1, 1, tzinfo=UTC))
    assert window("monthly", datetime(2026, 3, 9, tzinfo=UTC))[1] == datetime(2026, 4, 1, tzinfo=UTC)


def test_no_budget_means_no_database(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.charge(api_key="a", tenant=None, tokens=5, cost_usd=1.0)
    assert not ledger.enabled and not (tmp_path / "requests.db").exists()
