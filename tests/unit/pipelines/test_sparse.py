"""The BM25 sparse encoder: terms, ids and weights that hybrid retrieval relies on."""

from __future__ import annotations

import math

import pytest

from pipelines.sparse import Bm25Encoder, SparseVector


@pytest.fixture(scope="module")
def bm25() -> Bm25Encoder:
    return Bm25Encoder(avgdl=20.0)


def _weights(vector: SparseVector) -> dict[int, float]:
    return dict(zip(vector.indices, vector.values, strict=True))


def test_stemming_maps_inflections_to_one_term(bm25: Bm25Encoder) -> None:
    assert bm25.terms("running") == bm25.terms("runs") == bm25.terms("Run") == ["run"]
    running = bm25.encode_document("running")
    runs = bm25.encode_document("runs")
    assert running.indices == runs.indices == [Bm25Encoder.term_id("run")]
    # A query for one form matches a document with another.
    assert set(bm25.encode_query("runs").indices) & set(bm25.encode_document("she was running late").indices)


def test_stop_words_and_punctuation_are_dropped(bm25: Bm25Encoder) -> None:
    assert bm25.terms("The cat and the hat, of a kind!") == ["cat", "hat", "kind"]
    assert bm25.encode_document("the and of a to is") == SparseVector([], [])
    assert bm25.encode_query("which of these?") == SparseVector([], [])
    assert bm25.encode_document("") == SparseVector([], [])


def test_unicode_words_and_numbers_are_terms(bm25: Bm25Encoder) -> None:
    assert bm25.terms("Café état 2024 snake_case") == ["café", "état", "2024", "snake", "case"]


def test_query_weights_are_one_per_distinct_term(bm25: Bm25Encoder) -> None:
    query = bm25.encode_query("aspirin aspirin ASPIRIN stroke risks risk")
    assert len(query.indices) == 3  # aspirin, stroke, risk
    assert query.values == [1.0, 1.0, 1.0]
    assert query.indices == sorted(query.indices)


def test_document_weights_grow_with_tf_and_saturate(bm25: Bm25Encoder) -> None:
    """Same document length for every tf, so only the term frequency varies."""
    length = 40
    fillers = [f"filler{i}" for i in range(length)]
    target = Bm25Encoder.term_id(bm25.terms("aspirin")[0])
    weights = []
    for tf in range(1, 31):
        doc = " ".join(["aspirin"] * tf + fillers[: length - tf])
        weights.append(_weights(bm25.encode_document(doc))[target])

    assert all(a < b for a, b in zip(weights, weights[1:], strict=False))  # monotone
    gains = [b - a for a, b in zip(weights, weights[1:], strict=False)]
    assert all(a > b for a, b in zip(gains, gains[1:], strict=False))  # diminishing returns (concave in tf)
    assert weights[-1] < bm25.k1 + 1  # bounded by k1 + 1

    # The exact BM25 term-frequency factor for tf=1 in a 40-term document.
    norm = bm25.k1 * (1 - bm25.b + bm25.b * length / bm25.avgdl)
    assert math.isclose(weights[0], (bm25.k1 + 1) / (1 + norm))


def test_longer_documents_weigh_a_term_less(bm25: Bm25Encoder) -> None:
    target = Bm25Encoder.term_id("aspirin")
    short = _weights(bm25.encode_document("aspirin helps"))[target]
    long = _weights(bm25.encode_document("aspirin " + " ".join(f"word{i}" for i in range(60))))[target]
    assert long < short


def test_document_vector_is_sorted_unique_and_positive(bm25: Bm25Encoder) -> None:
    vector = bm25.encode_document("Honey bees make honey; bees dance, bees swarm, honey flows.")
    assert vector.indices == sorted(set(vector.indices))
    assert len(vector.indices) == len(vector.values)
    assert all(v > 0 for v in vector.values)
    assert all(0 <= i < 2**31 for i in vector.indices)


def test_term_ids_are_deterministic_across_processes_and_releases() -> None:
    # Golden values: indexes built by earlier runs store these ids; changing the hash silently breaks sparse search.
    assert Bm25Encoder.term_id("run") == 1349952704
    assert Bm25Encoder.term_id("aspirin") == 1269276553
    assert Bm25Encoder.term_id("stroke") == 155868018
    assert Bm25Encoder().encode_query("Aspirin and strokes").indices == [155868018, 1269276553]


def test_encoders_with_different_parameters_share_term_ids() -> None:
    a = Bm25Encoder(avgdl=10.0).encode_document("Solar panels need cleaning")
    b = Bm25Encoder(avgdl=500.0, k1=2.0, b=0.3).encode_document("Solar panels need cleaning")
    assert a.indices == b.indices
    assert a.values != b.values


def test_average_length(bm25: Bm25Encoder) -> None:
    assert bm25.average_length(["cats sleep", "dogs bark loudly at night"]) == pytest.approx((2 + 4) / 2)
    assert bm25.average_length([]) == bm25.avgdl
    assert bm25.average_length(["the of and"]) == 1.0  # never zero (it divides)


def test_avgdl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="avgdl"):
        Bm25Encoder(avgdl=0)
