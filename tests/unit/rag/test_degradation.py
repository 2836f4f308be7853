"""Graceful degradation, announced: with the LLM, the cache's Redis, the limits' Redis and the stack registry all
down, the served app still answers (extractive, no cache, per-worker quotas, the last loaded stack), and past a
used-up budget it answers without the LLM; it names each degraded mode in the response (``degraded``) and counts it
in ``ragops_degraded_requests_total{kind}``."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.index import VectorIndex
from rag.stages.context import DEGRADATIONS
from rag.types import StackConfig
from tests.fixtures.server import api_client, free_port, serve
from tests.unit.rag.conftest import BuiltIndex

pytestmark = pytest.mark.slow


def test_every_degraded_mode_is_announced_and_counted(built_index: BuiltIndex) -> None:
    from rag.service.app import create_app
    from rag.service.holder import StackHolder

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    base = built_index.settings
    settings = base.model_copy(
        update={
            "limits": base.limits.model_copy(
                update={"redis_url": dead, "requests_per_minute": 1000, "redis_timeout_s": 0.2, "key_daily_tokens": 1}
            ),
            "answer_cache": base.answer_cache.model_copy(update={"enabled": True, "url": dead, "timeout_s": 0.2}),
        }
    )
    index = VectorIndex(settings).current()
    assert index is not None
    extractive = StackConfig.for_index(index, name="degraded")
    config = extractive.model_copy(
        update={
            "answerer": extractive.answerer.model_copy(update={"kind": "llm"}),
            "llm": extractive.llm.model_copy(
                update={"base_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 2}
            ),
        }
    )
    registry_up = [True]

    def champion() -> tuple[int, StackConfig]:
        if not registry_up[0]:
            raise ConnectionError("MLflow is down")
        return 1, config

    holder = StackHolder(settings, champion=champion)
    with serve(create_app(settings, holder=holder)) as running, api_client(running.url) as client:
        registry_up[0] = False
        holder.check()  # the registry is now unreachable: the loaded stack keeps serving
        response = client.post("/v1/query", json={"question": "When did Mount Kerrigan last erupt?"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["answer"] and "extractive" in (body["notice"] or "")
        assert set(body["degraded"]) == set(DEGRADATIONS) - {"llm_over_budget"}, body["degraded"]
        # the fallback answer's tokens used up the key's daily budget of 1: the next one does not try the LLM
        over = client.post("/v1/query", json={"question": "When did Mount Kerrigan last erupt?"})
        assert over.status_code == 200, over.text
        assert body["usage"]["total_tokens"] > 1 and "key:daily_tokens" in (over.json()["notice"] or "")
        assert set(over.json()["degraded"]) == set(DEGRADATIONS) - {"llm_fallback"}, over.json()["degraded"]
        announced = set(body["degraded"]) | set(over.json()["degraded"])
        metrics = client.get("/metrics").text
    counted = {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "ragops_degraded_requests"
        for s in family.samples
        if s.name == "ragops_degraded_requests_total"
    }
    assert {k for k, v in counted.items() if v >= 1} == announced == set(DEGRADATIONS)


def test_an_index_that_keeps_failing_opens_the_breaker_and_requests_fail_fast(built_index: BuiltIndex) -> None:
    from typing import Any

    from rag.errors import RetrievalError
    from rag.service.app import create_app
    from rag.service.batcher import BatchedVectors
    from rag.service.holder import StackHolder

    class DownIndex(BatchedVectors):
        searches = 0

        async def search(self, engine: Any, text: str, vector: Any, **kwargs: Any) -> Any:
            DownIndex.searches += 1
            raise RetrievalError("the index did not answer")

    base = built_index.settings
    settings = base.model_copy(
        update={"limits": base.limits.model_copy(update={"breaker_failures": 2, "breaker_reset_s": 30})}
    )
    index = VectorIndex(settings).current()
    assert index is not None
    config = StackConfig.for_index(index, name="no-index")
    holder = StackHolder(settings, champion=lambda: (1, config))
    app = create_app(settings, holder=holder, vectors=DownIndex(max_batch=4))
    with serve(app) as running, api_client(running.url) as client:
        replies = [client.post("/v1/query", json={"question": "When did Mount Kerrigan last erupt?"}) for _ in range(4)]
    assert [r.status_code for r in replies] == [503] * 4
    codes = [r.json()["error"]["code"] for r in replies]
    assert codes == ["retrieval_error", "retrieval_error", "dependency_unavailable", "dependency_unavailable"]
    assert DownIndex.searches == 2  # the open breaker spared the index the last two calls
    assert replies[0].headers["Retry-After"] == "1"
    assert 25 <= int(replies[-1].headers["Retry-After"]) <= 30
