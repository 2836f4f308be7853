"""A ``guardrail_triggered`` column (any check's verdict other than allow), in the covering window index.

The monitor's guardrail trigger rate is a share of requests; reading it from the ``verdicts`` JSON would touch every
wide row of the window, so the record says it in a boolean the window index covers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_WINDOW_0001 = [
    "at",
    "status",
    "blocked",
    "abstained",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "total_ms",
    "feedback_rating",
]


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("guardrail_triggered", sa.Boolean, nullable=False, server_default=sa.false()))
    op.drop_index("requests_window", table_name="requests")
    op.create_index("requests_window", "requests", [*_WINDOW_0001, "guardrail_triggered"])


def downgrade() -> None:
    op.drop_index("requests_window", table_name="requests")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("guardrail_triggered")
    op.create_index("requests_window", "requests", _WINDOW_0001)
