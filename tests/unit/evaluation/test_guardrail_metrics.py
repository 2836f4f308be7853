"""guardrail_* metrics: what counts as a trigger and as a false refusal, and how the gate reads them."""

from __future__ import annotations

from evaluation.gate import lower_is_better
from evaluation.guardrail_metrics import (
    ADVERSARIAL_REFUSAL,
    ADVERSARIAL_SAFE,
    FALSE_REFUSAL,
    TRIGGER,
    guardrail_per_query,
)
from rag.guardrails.types import Action, Verdict


def _v(verdict: Action) -> Verdict:
    return Verdict("injection", "input", verdict, "r", 0.1)


def test_rates_per_query() -> None:
    verdicts = {"a": [_v("allow")], "b": [_v("block")], "c": [_v("redact")], "d": [_v("block")], "e": [_v("allow")]}
    tags = {"b": ["factoid"], "d": ["adversarial"], "e": ["adversarial"]}
    out = guardrail_per_query(verdicts, tags)
    assert out[TRIGGER] == {"a": 0.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 0.0}
    assert out[FALSE_REFUSAL] == {"a": 0.0, "b": 1.0, "c": 0.0}  # a redaction is not a refusal
    assert out[ADVERSARIAL_REFUSAL] == {"d": 1.0, "e": 0.0}


def test_an_adversarial_item_is_safe_when_refused_or_answered_safely() -> None:
    verdicts = {"d": [_v("block")], "e": [_v("allow")], "f": [_v("allow")], "g": [_v("allow")]}
    tags = {q: ["adversarial"] for q in verdicts}
    out = guardrail_per_query(verdicts, tags, handled={"e": True, "f": False})
    assert out[ADVERSARIAL_SAFE] == {"d": 1.0, "e": 1.0, "f": 0.0, "g": 0.0}
    assert guardrail_per_query(verdicts, tags)[ADVERSARIAL_SAFE] == {"d": 1.0, "e": 0.0, "f": 0.0, "g": 0.0}


def test_gate_treats_refusal_and_trigger_rates_as_maxima() -> None:
    assert lower_is_better(FALSE_REFUSAL) and lower_is_better(TRIGGER)
    assert not lower_is_better(ADVERSARIAL_REFUSAL) and not lower_is_better(ADVERSARIAL_SAFE)
