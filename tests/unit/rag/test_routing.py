"""The router's decision and the output check, without an index: the parts a refit or a threshold change moves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from rag.routing import Features, check_answer, decide, features, pass_probability
from rag.types import ROUTER_FEATURES, Answer, RetrievedChunk, RoutingConfig, TierConfig

N = len(ROUTER_FEATURES)
FEATS = Features(1.0, 0.0, 0.8, 0.2, 0.9, 0.0, 0.0, 0.5)


def _routing(*coefs: tuple[float, ...] | None, **kw: object) -> RoutingConfig:
    tiers = [
        TierConfig(name=f"t{i}", coef=c, intercept=0.0)
        if i == 0
        else TierConfig(name=f"t{i}", kind="llm", llm={"base_url": "http://127.0.0.1:9/v1", "model": "m"}, coef=c)
        for i, c in enumerate(coefs)
    ]
    return RoutingConfig.model_validate({"tiers": tiers, **kw})


def _chunk(text: str, sim: float) -> RetrievedChunk:
    return RetrievedChunk("c1", "d1", "t", "s", 0, text, sim, similarity=sim)


def _bag_of_words(texts: Sequence[str]) -> np.ndarray:
    vocab = sorted({w for t in texts for w in t.lower().split()})
    return np.array([[float(w in t.lower().split()) for w in vocab] for t in texts])


def test_the_cheapest_tier_over_the_threshold_is_chosen_else_the_last() -> None:
    confident = (0.0,) * 4 + (5.0,) + (0.0,) * (N - 5)  # the extractive support drives it
    routing = _routing(confident, (0.0,) * N, None, threshold=0.6)
    assert decide(routing, FEATS).name == "t0"
    weak = Features(1.0, 0.0, 0.8, 0.2, 0.0, 1.0, 0.0, 0.0)
    decision = decide(routing, weak)
    assert decision.name == "t2"  # t0 at 0.5, t1 at 0.5, both under 0.6; t2 is only reached this way
    assert decision.probabilities[2] is None and pass_probability(routing.tiers[0], weak) == pytest.approx(0.5)


def test_a_tier_with_the_wrong_number_of_coefficients_or_an_llm_without_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="coefficients"):
        TierConfig(name="x", coef=(1.0,))
    with pytest.raises(ValidationError, match="base_url"):
        TierConfig(name="x", kind="llm")
    with pytest.raises(ValidationError, match="unique"):
        RoutingConfig(tiers=(TierConfig(name="a"), TierConfig(name="a")))


def test_the_output_check_fails_invented_text_and_abstention_over_answerable_context() -> None:
    routing = _routing(None, min_grounded_share=0.5, answerable_similarity=0.5)
    chunks = [_chunk("Mount Kerrigan last erupted in 1847. It is 2400 metres high.", 0.8)]
    copied = Answer("Mount Kerrigan last erupted in 1847.", (), False, 0.8, ("Mount Kerrigan last erupted in 1847.",))
    invented = Answer("Chocolate factories abound there.", (), False, 0.8, ("Chocolate factories abound there.",))
    abstained = Answer("not found", (), True, 0.0)
    assert check_answer(routing, copied, chunks, FEATS, _bag_of_words).passed
    failed = check_answer(routing, invented, chunks, FEATS, _bag_of_words)
    assert (failed.passed, failed.reason) == (False, "ungrounded")
    assert check_answer(routing, abstained, chunks, FEATS, _bag_of_words).reason == "abstained_with_support"
    unrelated = Features(1.0, 0.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.0)
    assert check_answer(routing, abstained, chunks, unrelated, _bag_of_words).passed  # the right abstention


def test_features_read_the_question_and_the_retrieval() -> None:
    chunks = [_chunk("a", 0.9), _chunk("b", 0.4)]
    f = features("Why does the arm stop?", chunks, Answer("x", (), True, 0.1))
    assert (f.open_question, f.top_similarity, f.similarity_spread, f.extractive_abstained) == (
        1.0,
        0.9,
        pytest.approx(0.5),
        1.0,
    )
    year = features("In what year was Northwind founded?", chunks, Answer("Northwind was founded early.", (), False, 1))
    assert year.number_missing == 1.0 and year.question_overlap == pytest.approx(2 / 3)  # year, northwind, founded
    found = features("In what year was Northwind founded?", chunks, Answer("Founded in 2014.", (), False, 1))
    assert found.number_missing == 0.0
