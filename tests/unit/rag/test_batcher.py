"""The service's micro-batcher: a lone call goes straight to its thread, concurrent calls share one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable, Sequence

import pytest

from rag.service.batcher import MicroBatcher


class Doubler:
    """A batch function that records its calls; the first one waits for ``release`` (a slow forward pass)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()

    def __call__(self, key: Hashable, values: Sequence[int]) -> list[int]:
        self.calls.append(list(values))
        if len(self.calls) == 1:
            self.release.wait(10)
        if -1 in values:
            raise ValueError("a bad item")
        return [v * 2 for v in values]


def test_calls_arriving_during_a_lone_call_go_together_after_it() -> None:
    run = Doubler()

    async def scenario() -> tuple[int, list[int], MicroBatcher[int, int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run)
        first = asyncio.create_task(batcher.submit("k", 1))
        await asyncio.sleep(0.05)  # the lone call is in its thread
        rest = [asyncio.create_task(batcher.submit("k", v)) for v in (2, 3, 4)]
        await asyncio.sleep(0.05)
        run.release.set()
        return await first, list(await asyncio.gather(*rest)), batcher

    first, rest, batcher = asyncio.run(scenario())
    assert first == 2 and rest == [4, 6, 8]
    assert run.calls == [[1], [2, 3, 4]]  # one call for the lone request, one batch for the three behind it
    assert (batcher.batches, batcher.items) == (2, 4)


def test_a_failing_lone_call_fails_only_its_caller() -> None:
    run = Doubler()
    run.release.set()

    async def scenario() -> int:
        batcher: MicroBatcher[int, int] = MicroBatcher(run)
        with pytest.raises(ValueError, match="a bad item"):
            await batcher.submit("k", -1)
        return await batcher.submit("k", 5)

    assert asyncio.run(scenario()) == 10
    assert run.calls == [[-1], [5]]
