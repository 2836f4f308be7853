"""The requests table: one row per request, feedback joined into the same row.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("tenant", sa.String(200), nullable=True),
        sa.Column("stack_name", sa.String(200), nullable=True),
        sa.Column("stack_version", sa.Integer, nullable=True),
        sa.Column("index_version", sa.Integer, nullable=True),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("abstained", sa.Boolean, nullable=False),
        sa.Column("blocked", sa.Boolean, nullable=False),
        sa.Column("total_ms", sa.Float, nullable=True),
        sa.Column("timings", _JSON, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("verdicts", _JSON, nullable=False),
        sa.Column("citations", _JSON, nullable=False),
        sa.Column("feedback_rating", sa.String(8), nullable=True),
        sa.Column("feedback_comment", sa.Text, nullable=True),
        sa.Column("feedback_at", sa.Float, nullable=True),
    )
    op.create_index(
        "requests_window",
        "requests",
        [
            "at",
            "status",
            "blocked",
            "abstained",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "total_ms",
            "feedback_rating",
        ],
    )


def downgrade() -> None:
    op.drop_index("requests_window", table_name="requests")
    op.drop_table("requests")
