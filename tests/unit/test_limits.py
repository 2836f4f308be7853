"""Rate limits in memory, admission control and circuit breakers: the protection the request path is built from."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from rag.errors import CircuitOpen, Overloaded
from rag.limits import AdmissionController, BreakerState, CircuitBreaker, LimitsSettings, RateLimiter


def test_limits_are_off_by_default() -> None:
    limiter = RateLimiter(LimitsSettings())
    assert not limiter.enabled
    decisions = [limiter.check(api_key="k", tenant="t", tokens=10_000) for _ in range(100)]
    assert all(d.allowed and d.storage == "memory" and not d.degraded for d in decisions)


def test_requests_per_key_are_limited_and_keys_are_independent() -> None:
    limiter = RateLimiter(LimitsSettings(requests_per_minute=3))
    assert [limiter.check(api_key="a", tenant=None).allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.check(api_key="a", tenant=None)
    assert refused.limit == "key:requests_per_minute" and 1 <= refused.retry_after_s <= 60
    assert limiter.check(api_key="b", tenant=None).allowed


def test_tokens_per_tenant_span_keys_and_a_refusal_spends_nothing() -> None:
    limiter = RateLimiter(LimitsSettings(requests_per_minute=100, tenant_tokens_per_minute=1000))
    assert limiter.check(api_key="a", tenant="acme", tokens=600).allowed
    refused = limiter.check(api_key="b", tenant="acme", tokens=600)  # another key, same tenant: 1200 > 1000
    assert not refused.allowed and refused.limit == "tenant:tokens_per_minute"
    assert limiter.check(api_key="b", tenant="acme", tokens=400).allowed  # the refused 600 were not counted
    assert limiter.check(api_key="b", tenant="other", tokens=900).allowed


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
def test_every_strategy_limits(strategy: str) -> None:
    limiter = RateLimiter(LimitsSettings(strategy=strategy, requests_per_minute=2))  # type: ignore[arg-type]
    assert [limiter.check(api_key="a", tenant=None).allowed for _ in range(3)] == [True, True, False]


def test_admission_sheds_past_the_queue_with_a_retry_after() -> None:
    async def scenario() -> tuple[list[str], AdmissionController]:
        controller = AdmissionController(max_concurrency=2, max_queue=2, queue_timeout_s=5)
        release = asyncio.Event()
        outcomes: list[str] = []

        async def request() -> None:
            try:
                async with controller.slot():
                    await release.wait()
                outcomes.append("done")
            except Overloaded as exc:
                assert exc.retry_after_s >= 1
                outcomes.append("shed")

        tasks = [asyncio.create_task(request()) for _ in range(6)]
        await asyncio.sleep(0.05)
        assert controller.stats().active == 2 and controller.stats().waiting == 2
        release.set()
        await asyncio.gather(*tasks)
        return outcomes, controller

    outcomes, controller = asyncio.run(scenario())
    assert sorted(outcomes) == ["done"] * 4 + ["shed"] * 2
    assert controller.stats().shed == 2 and controller.stats().active == 0 and controller.stats().waiting == 0


def test_admission_sheds_a_waiter_that_gets_no_slot_in_time() -> None:
    async def scenario() -> None:
        controller = AdmissionController(max_concurrency=1, max_queue=5, queue_timeout_s=0.1)
        async with controller.slot():
            with pytest.raises(Overloaded, match="no slot within"):
                async with controller.slot():
                    pass
        async with controller.slot():  # the slot is free again
            pass

    asyncio.run(scenario())


def test_a_standing_queue_sheds_waiters_early_while_a_burst_may_wait() -> None:
    """CoDel's rule: behind a queue that drains, a waiter may wait up to queue_timeout_s; once the queue has stood
    for overload_interval_s, a newcomer is shed after overload_wait_s, so admitted requests stay fast."""

    async def scenario() -> tuple[float, float]:
        controller = AdmissionController(
            max_concurrency=1, max_queue=10, queue_timeout_s=5.0, overload_wait_s=0.05, overload_interval_s=0.2
        )
        hold = asyncio.Event()

        async def holder() -> None:
            async with controller.slot():
                await hold.wait()

        async def waiter() -> float:
            started = time.monotonic()
            try:
                async with controller.slot():
                    return -1.0
            except Overloaded:
                return time.monotonic() - started

        first = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        burst = asyncio.create_task(waiter())  # the queue is new: it may wait its 5 s
        await asyncio.sleep(0.3)  # the queue has now stood for longer than overload_interval_s
        assert controller.overloaded()
        standing = await waiter()
        hold.set()  # the burst's waiter gets the slot
        burst_outcome = await burst
        await first
        assert not controller.overloaded() and controller.stats().waiting == 0
        return standing, burst_outcome

    standing, burst = asyncio.run(scenario())
    assert 0.04 <= standing < 1.0, standing  # shed after about overload_wait_s, not queue_timeout_s
    assert burst == -1.0  # admitted once the slot freed: the burst was not shed


def test_the_door_refuses_only_newcomers_a_standing_queue_could_not_take_in_time() -> None:
    async def scenario() -> None:
        controller = AdmissionController(
            max_concurrency=1, max_queue=3, queue_timeout_s=5.0, overload_wait_s=0.05, overload_interval_s=0.1
        )
        assert controller.shed_at_door() is None  # a free slot
        hold = asyncio.Event()

        async def occupy() -> None:
            with contextlib.suppress(Overloaded):
                async with controller.slot():
                    await hold.wait()

        tasks = [asyncio.create_task(occupy()) for _ in range(2)]  # one holds the slot, one waits
        await asyncio.sleep(0.01)
        assert controller.shed_at_door() is None  # a young queue absorbs a burst
        await asyncio.sleep(0.15)  # now it stands, and one waiter at 0.1 s a request is past 0.05 s
        refused = controller.shed_at_door()
        assert refused is not None and "standing queue" in str(refused) and refused.retry_after_s >= 1
        assert controller.stats().shed == 1
        hold.set()
        await asyncio.gather(*tasks)
        assert controller.shed_at_door() is None

    asyncio.run(scenario())


def test_more_slots_let_the_longest_waiter_in_at_once_and_fewer_bind_newcomers() -> None:
    async def scenario() -> None:
        controller = AdmissionController(max_concurrency=1, max_queue=5, queue_timeout_s=5.0)
        hold = asyncio.Event()
        entered: list[str] = []

        async def request(name: str) -> None:
            async with controller.slot():
                entered.append(name)
                await hold.wait()

        tasks = [asyncio.create_task(request(n)) for n in ("first", "second", "third")]
        await asyncio.sleep(0.01)
        assert entered == ["first"] and controller.stats().waiting == 2
        controller.resize(2)  # e.g. an LLM-answered stack was promoted
        await asyncio.sleep(0.01)
        assert entered == ["first", "second"] and controller.stats().active == 2
        controller.resize(1)  # holders keep their slots; the third waits until both have left
        hold.set()
        await asyncio.gather(*tasks)
        assert entered == ["first", "second", "third"] and controller.stats().active == 0

    asyncio.run(scenario())


def test_a_stack_answered_by_an_llm_gets_the_llm_slots() -> None:
    from rag.service.query import answers_with_llm
    from rag.types import AnswererConfig, StackConfig

    # only the answering parts matter here (the rest of a stack needs a built index)
    extractive = StackConfig.model_construct(answerer=AnswererConfig(), routing=None)
    assert not answers_with_llm(extractive)
    llm = extractive.model_copy(update={"answerer": extractive.answerer.model_copy(update={"kind": "llm"})})
    assert answers_with_llm(llm)


def test_breaker_opens_refuses_and_closes_after_a_good_trial(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    breaker = CircuitBreaker("llm", failure_threshold=2, reset_timeout_s=10, clock=lambda: now[0])

    async def fail() -> None:
        raise ConnectionError("down")

    async def ok() -> str:
        return "fine"

    async def scenario() -> None:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                with pytest.raises(ConnectionError):
                    await breaker.call(fail)
        assert breaker.state is BreakerState.OPEN and "circuit llm open" in caplog.text
        with pytest.raises(CircuitOpen) as refused:
            await breaker.call(ok)  # refused without calling
        assert refused.value.retry_after_s == 10
        now[0] = 11.0
        assert breaker.state is BreakerState.HALF_OPEN
        with pytest.raises(ConnectionError):
            await breaker.call(fail)  # the failed trial opens it again at once
        assert breaker.state is BreakerState.OPEN
        now[0] = 22.0
        assert await breaker.call(ok) == "fine"
        assert breaker.state is BreakerState.CLOSED

    asyncio.run(scenario())


def test_half_open_lets_one_trial_through() -> None:
    now = [0.0]
    breaker = CircuitBreaker("qdrant", failure_threshold=1, reset_timeout_s=1, clock=lambda: now[0])
    breaker.before_call()
    breaker.record_failure()
    now[0] = 2.0
    breaker.before_call()  # the trial
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # a second caller while the trial runs


def test_a_key_quota_is_never_shared_by_same_named_keys_of_two_tenants() -> None:
    """OWASP LLM10 across tenants (found by the red-team review): the per-key quota was keyed by the principal's
    name, so tenant globex's "alice" could use up tenant acme's "alice"'s budget."""
    from typing import Any

    from rag.errors import RateLimited
    from rag.stages.context import Principal, RequestContext
    from rag.stages.limit import LimitStage

    stage = LimitStage(RateLimiter(LimitsSettings(requests_per_minute=1)))
    engine: Any = None  # the limit stage reads only the principal

    def ask(principal: Principal) -> None:
        asyncio.run(stage.run(RequestContext(engine=engine, question="q", principal=principal)))

    ask(Principal(name="alice", tenant="globex"))
    ask(Principal(name="alice", tenant="acme"))  # its own budget
    ask(Principal(name="alice"))  # an untenanted alice too
    with pytest.raises(RateLimited, match="key:requests_per_minute"):
        ask(Principal(name="alice", tenant="acme"))
