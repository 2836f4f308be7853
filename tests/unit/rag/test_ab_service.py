"""An A/B experiment in the served app, end to end on loopback: callers split between the champion and the
challenger by key (each caller always on one arm), the challenger's answers recorded under its version, the
arms compared from the real request store with the feedback given, and a stopped experiment (or a champion that
moved) sends everyone back to the champion.

The champion and the experiment come from functions, so no MLflow registry is involved (the registry's side is
tested in ``test_stack.py``)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator

import httpx
import pytest

from evaluation.ab import analyse
from pipelines.index import VectorIndex
from rag.experiment import Experiment
from rag.types import StackConfig
from tests.fixtures.server import Running, serve
from tests.unit.rag.conftest import BuiltIndex

pytestmark = pytest.mark.slow

CHAMPION, CHALLENGER = 4, 5
QUESTION = "When did Mount Kerrigan last erupt?"
CALLERS = 24


class Registry:
    """What the holder reads: the champion and the running experiment (changed by the test)."""

    def __init__(self, champion: StackConfig, challenger: StackConfig) -> None:
        self.champion = (CHAMPION, champion)
        self.challenger = challenger
        self.running: Experiment | None = None

    def experiment(self) -> tuple[Experiment, StackConfig] | None:
        return (self.running, self.challenger) if self.running is not None else None


@pytest.fixture(scope="module")
def served(built_index: BuiltIndex) -> Iterator[tuple[Running, Registry]]:
    from rag.service.app import create_app
    from rag.service.holder import StackHolder

    settings = built_index.settings
    index = VectorIndex(settings).current()
    assert index is not None
    champion = StackConfig.for_index(index, name="champion")
    challenger = champion.model_copy(
        update={"name": "top1", "retrieval": champion.retrieval.model_copy(update={"top_k": 1})}
    )
    registry = Registry(champion, challenger)
    holder = StackHolder(settings, champion=lambda: registry.champion, experiment=registry.experiment)
    with serve(create_app(settings, holder=holder)) as running:
        yield running, registry


def callers(running: Running) -> dict[str, str]:
    gate = running.app.state.gate
    return {
        f"user-{i}": str(gate.keys.create(role="reader", name=f"user-{i}", created_by="tests").secret)
        for i in range(CALLERS)
    }


def ask(running: Running, key: str) -> dict[str, object]:
    response = httpx.post(
        f"{running.url}/v1/query",
        json={"question": QUESTION},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_callers_split_by_key_stay_on_their_arm_and_the_arms_are_compared(
    served: tuple[Running, Registry],
) -> None:
    running, registry = served
    holder = running.app.state.holder
    keys = callers(running)
    started = time.time()
    registry.running = Experiment(
        "ab-test-v5", CHAMPION, CHALLENGER, share=0.5, alpha=0.05, started_at=started, started_by="tests"
    )
    holder.check()
    assert holder.experiment is not None and holder.experiment[1].version == CHALLENGER

    seen: dict[str, set[int]] = defaultdict(set)
    citations: dict[int, Counter[int]] = defaultdict(Counter)
    for _ in range(3):
        for name, key in keys.items():
            body = ask(running, key)
            version = int(body["stack_version"])  # type: ignore[call-overload]
            seen[name].add(version)
            citations[version][len(body["citations"])] += 1  # type: ignore[arg-type]
            expected = registry.running.version(registry.running.arm(name))
            assert version == expected, (name, version, expected)
            rating = httpx.post(
                f"{running.url}/v1/feedback",
                json={"request_id": body["request_id"], "rating": "up" if version == CHAMPION else "down"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
            assert rating.status_code == 200, rating.text
    assert all(len(v) == 1 for v in seen.values()), seen  # sticky
    assert {next(iter(v)) for v in seen.values()} == {CHAMPION, CHALLENGER}  # both arms have callers
    assert max(citations[CHALLENGER]) <= 1  # the challenger is the top-1 stack

    store = running.app.state.requests
    store.flush()
    report = analyse(store, registry.running, now=time.time() + 1)
    assert report.sticky_violations == 0
    assert report.champion.callers + report.challenger.callers == CALLERS
    assert report.champion.requests + report.challenger.requests == 3 * CALLERS
    assert report.champion.thumbs_up == report.champion.rated > 0
    assert report.challenger.thumbs_up == 0 < report.challenger.rated
    assert report.verdict == "challenger_worse"  # every answer of the challenger rated down

    # a champion that moved ends the challenger's traffic; so does stopping the experiment
    registry.champion = (CHAMPION + 10, registry.champion[1])
    holder.check()
    assert holder.experiment is None
    assert all(ask(running, key)["stack_version"] == CHAMPION + 10 for key in keys.values())
    registry.champion = (CHAMPION, registry.champion[1])
    holder.check()
    assert holder.experiment is not None
    registry.running = None
    holder.check()
    assert holder.experiment is None
    assert all(ask(running, key)["stack_version"] == CHAMPION for key in keys.values())
