"""Arm assignment of an A/B experiment: sticky per caller, the configured share over callers, reshuffled per
experiment, and the experiment's tag read back as written."""

from __future__ import annotations

import pytest

from rag.errors import BadQuery
from rag.experiment import Experiment


def experiment(**changes: object) -> Experiment:
    fields: dict[str, object] = {
        "id": "ab-1-v5",
        "champion": 4,
        "challenger": 5,
        "share": 0.3,
        "alpha": 0.05,
        "started_at": 1.0,
        "started_by": "alice",
    }
    fields.update(changes)
    return Experiment(**fields)  # type: ignore[arg-type]


def test_each_caller_stays_on_one_arm_and_the_share_is_of_callers() -> None:
    exp = experiment()
    callers = [f"acme/user-{i}" for i in range(20_000)]
    arms = [exp.arm(c) for c in callers]
    assert arms == [exp.arm(c) for c in callers]  # sticky: the same caller, the same arm, every time
    share = arms.count("challenger") / len(arms)
    assert abs(share - 0.3) < 0.015, share
    assert {exp.version(a) for a in arms} == {4, 5}


def test_a_new_experiment_reshuffles_callers() -> None:
    first, second = experiment(id="ab-1-v5"), experiment(id="ab-2-v5")
    callers = [f"user-{i}" for i in range(2_000)]
    moved = sum(first.arm(c) != second.arm(c) for c in callers)
    assert 300 < moved < 1_000  # independent assignments disagree on about 2 * 0.3 * 0.7 of callers


def test_the_tag_round_trips_and_bad_experiments_are_refused() -> None:
    exp = experiment()
    assert Experiment.from_json(exp.to_json()) == exp
    with pytest.raises(BadQuery, match="share"):
        experiment(share=1.0)
    with pytest.raises(BadQuery, match="share"):
        experiment(share=0.0)
    with pytest.raises(BadQuery, match="significance"):
        experiment(alpha=0.7)
    with pytest.raises(BadQuery, match="is the champion"):
        experiment(challenger=4)
    with pytest.raises(ValueError):
        Experiment.from_json("[1, 2]")
