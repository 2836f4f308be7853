"""The review queue: requests queued for a human reviewer, and their labels.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("queued_at", sa.Float, nullable=False),
        sa.Column("reasons", _JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("right_answer", sa.Text, nullable=True),
        sa.Column("relevant_chunk_ids", _JSON, nullable=True),
        sa.Column("reviewer", sa.String(200), nullable=True),
        sa.Column("labelled_at", sa.Float, nullable=True),
    )
    op.create_index("review_items_status", "review_items", ["status", "queued_at"])


def downgrade() -> None:
    op.drop_index("review_items_status", table_name="review_items")
    op.drop_table("review_items")
