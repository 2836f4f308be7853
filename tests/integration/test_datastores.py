"""The Redis and PostgreSQL fixtures give real, working servers (other tests build on them)."""

from __future__ import annotations

import uuid

import pytest

pytestmark = [pytest.mark.integration]


def test_redis_url_is_a_real_redis(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"test:{uuid.uuid4()}"
    assert client.incr(key) == 1 and client.incr(key) == 2
    client.expire(key, 60)
    assert 0 < client.ttl(key) <= 60
    assert client.info("server")["redis_version"]


def test_postgres_url_is_a_real_postgres(postgres_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS probe (id serial PRIMARY KEY, body jsonb NOT NULL)"))
            conn.execute(text("INSERT INTO probe (body) VALUES (CAST(:b AS jsonb))"), {"b": '{"k": [1, 2]}'})
            row = conn.execute(text("SELECT body->'k'->>1, version() FROM probe ORDER BY id DESC LIMIT 1")).one()
        assert row[0] == "2" and row[1].startswith("PostgreSQL")
    finally:
        engine.dispose()
