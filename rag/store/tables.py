"""The request store's schema: one SQLAlchemy Core table, one row per request.

Core tables rather than ORM classes: the store writes batches of plain rows from a background thread and reads
aggregates, and never needs identity maps or lazy loading. The schema is created and changed only by the Alembic
migrations in ``rag/store/migrations`` (see :mod:`rag.store.migrate`); this module is what those migrations and the
queries agree on, and a test checks that the migrated database matches it.

Why the columns look the way they do:

- ``at`` is epoch seconds (a float): every monitoring question is "what happened between then and now", and a float
  compares the same way on SQLite and PostgreSQL with no time-zone conversions.
- ``requests_window`` is a *covering* index: ``at`` first (the range), then every column the window aggregates read,
  so :meth:`RequestStore.window` never touches the wide rows (questions, answers, cited texts). On a million SQLite
  records it took the whole-store aggregate from 8.1 s to 0.55 s, and a 24 h window from 0.11 s to 0.03 s.
- ``total_ms`` is a column of its own although it is also in ``timings``: aggregates over JSON cannot use it cheaply.
- The cited chunks are stored *with their text* (JSON): feedback turns a rating into training pairs, and the index
  the chunks came from may be gone by the time someone rates an old answer.
- Feedback lives in the same row (``feedback_*``), written later by :meth:`RequestStore.set_feedback`.
- ``guardrail_triggered`` (any check's verdict other than allow) repeats what ``verdicts`` says, for the same reason
  as ``total_ms``: the monitor's trigger rate is read from the covering index.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, false
from sqlalchemy.dialects.postgresql import JSONB

VERSION_TABLE = "ragops_store_version"
"""Alembic's version table, named for this store so it never collides with MLflow's ``alembic_version`` when both
share one PostgreSQL database."""

METADATA = MetaData()

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

requests = Table(
    "requests",
    METADATA,
    Column("request_id", String(64), primary_key=True),
    Column("at", Float, nullable=False),
    Column("route", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("error", String(64), nullable=True),
    Column("principal", String(200), nullable=False),
    Column("tenant", String(200), nullable=True),
    Column("stack_name", String(200), nullable=True),
    Column("stack_version", Integer, nullable=True),
    Column("index_version", Integer, nullable=True),
    Column("question", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("abstained", Boolean, nullable=False),
    Column("blocked", Boolean, nullable=False),
    Column("total_ms", Float, nullable=True),
    Column("timings", JSON_TYPE, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("verdicts", JSON_TYPE, nullable=False),
    Column("citations", JSON_TYPE, nullable=False),
    Column("feedback_rating", String(8), nullable=True),
    Column("feedback_comment", Text, nullable=True),
    Column("feedback_at", Float, nullable=True),
    Column("guardrail_triggered", Boolean, nullable=False, server_default=false()),
    Column("routing", JSON_TYPE, nullable=True),
    Index(
        "requests_window",
        "at",
        "status",
        "blocked",
        "abstained",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "total_ms",
        "feedback_rating",
        "guardrail_triggered",
    ),
)

budget_spend = Table(
    "budget_spend",
    METADATA,
    Column("scope", String(8), primary_key=True),  # "key" | "tenant"
    Column("identity", String(200), primary_key=True),
    Column("window", String(16), primary_key=True),  # "day:2026-12-03" | "month:2026-12"
    Column("tokens", BigInteger, nullable=False),
    Column("cost_usd", Float, nullable=False),
)
"""Spend per API key or tenant per day and month (:mod:`rag.limits.budget`); rows of past windows are history."""

review_items = Table(
    "review_items",
    METADATA,
    Column("request_id", String(64), primary_key=True),
    Column("queued_at", Float, nullable=False),
    Column("reasons", JSON_TYPE, nullable=False),
    Column("status", String(16), nullable=False),  # "pending" | "labelled"
    Column("verdict", String(16), nullable=True),
    Column("right_answer", Text, nullable=True),
    Column("relevant_chunk_ids", JSON_TYPE, nullable=True),
    Column("reviewer", String(200), nullable=True),
    Column("labelled_at", Float, nullable=True),
    Index("review_items_status", "status", "queued_at"),
)
"""The human review queue (:mod:`rag.review`): one row per queued request; the question, answer and citations are
the request's own row (joined), so an erased or purged request leaves the queue with it."""
