"""A ``routing`` column (a tiered stack's decision, attempts and escalations; JSON, null otherwise) and the
``budget_spend`` table (tokens and dollars per API key or tenant per day and month: :mod:`rag.limits.budget`).

Why a column rather than part of ``timings``: which tier answered, why the router chose it and why an answer was
escalated are what a cost review and a router refit read back, with their own shape. Why budgets here: the request
store is the database every worker and every restart already shares.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("routing", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))
    op.create_table(
        "budget_spend",
        sa.Column("scope", sa.String(8), primary_key=True),
        sa.Column("identity", sa.String(200), primary_key=True),
        sa.Column("window", sa.String(16), primary_key=True),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_spend")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("routing")
