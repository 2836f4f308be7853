"""The answer cache: exact and semantic layers, scopes that never share, expiry and size bounds (the cache stages
in a real chain are tested in test_stages.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rag.access import AccessScope
from rag.cache import AnswerCache, CachedAnswer, normalise, scope_key
from rag.types import Answer

ANSWER = Answer(text="In 1847 [1].", citations=(), abstained=False, support=0.9, sentences=("In 1847 [1].",))


def _entry(question: str = "When did it erupt?") -> CachedAnswer:
    return CachedAnswer(question, ANSWER, (), time.monotonic())


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


ACME_STAFF = AccessScope(tenant="acme", groups=("staff",))
SCOPE = scope_key(ACME_STAFF, None, 5)


def test_exact_layer_matches_the_normalised_text() -> None:
    cache = AnswerCache(threshold=0.95, ttl_s=60, max_entries=10)
    cache.put(SCOPE, "When did Mount Kerrigan erupt?", None, _entry())
    assert normalise("  when did MOUNT kerrigan   erupt ") == normalise("When did Mount Kerrigan erupt?")
    assert cache.exact(SCOPE, "when did mount kerrigan erupt") is not None
    assert cache.exact(SCOPE, "When did Mount Kerrigan form?") is None


def test_semantic_layer_needs_the_threshold() -> None:
    cache = AnswerCache(threshold=0.95, ttl_s=60, max_entries=10)
    cache.put(SCOPE, "q", _unit(1, 0, 0), _entry())
    hit = cache.similar(SCOPE, _unit(1, 0.1, 0))  # cosine 0.995
    assert hit is not None and hit[1] == pytest.approx(0.995, abs=1e-3)
    assert cache.similar(SCOPE, _unit(1, 0.5, 0)) is None  # cosine 0.894


@pytest.mark.parametrize(
    "other",
    [
        scope_key(AccessScope(tenant="beta", groups=("staff",)), None, 5),  # another tenant
        scope_key(AccessScope(tenant="acme", groups=("staff", "hr")), None, 5),  # another access scope
        scope_key(AccessScope(tenant="acme", groups=("staff",), all_groups=True), None, 5),  # the tenant's admin
        scope_key(ACME_STAFF, {"doc_id": ["a.md"]}, 5),  # the request narrowed what it may see
        scope_key(ACME_STAFF, None, 3),  # another top_k
    ],
    ids=["tenant", "groups", "all-groups", "filters", "top_k"],
)
def test_nothing_is_shared_across_scopes(other: str) -> None:
    cache = AnswerCache(threshold=0.5, ttl_s=60, max_entries=10)
    cache.put(SCOPE, "q", _unit(1, 0, 0), _entry())
    assert cache.exact(other, "q") is None and cache.similar(other, _unit(1, 0, 0)) is None


def test_an_admin_and_a_reader_without_tenant_never_share() -> None:
    """Both have no tenant, but the admin sees every tenant and the reader only untenanted documents (a defect the
    red-team suite found: the key used to be the tenant and groups alone)."""
    from rag.access import scope_of
    from rag.stages.context import Principal

    admin = scope_key(scope_of(Principal(name="root", role="admin")), None, 5)
    reader = scope_key(scope_of(Principal(name="solo")), None, 5)
    assert admin != reader


def test_scope_key_ignores_the_order_of_groups_and_filter_values() -> None:
    a = scope_key(AccessScope(tenant="t", groups=("b", "a")), {"doc_id": ["y", "x"], "source": ["s"]}, 5)
    b = scope_key(AccessScope(tenant="t", groups=("a", "b")), {"source": ["s"], "doc_id": ["x", "y"]}, 5)
    assert a == b


def test_entries_expire_and_the_size_is_bounded() -> None:
    cache = AnswerCache(threshold=0.9, ttl_s=0.05, max_entries=10)
    cache.put(SCOPE, "q", _unit(1, 0, 0), _entry())
    time.sleep(0.1)
    assert cache.exact(SCOPE, "q") is None and cache.similar(SCOPE, _unit(1, 0, 0)) is None and len(cache) == 0
    small = AnswerCache(threshold=0.9, ttl_s=60, max_entries=2)
    for i in range(3):
        small.put(SCOPE, f"q{i}", None, _entry())
    assert len(small) == 2 and small.exact(SCOPE, "q0") is None and small.exact(SCOPE, "q2") is not None


def test_the_vector_matrix_stays_correct_through_growth_eviction_and_expiry() -> None:
    """The semantic layer updates its matrix in place (no rebuild per put): after rows are freed by eviction and by
    expiry and reused, every lookup still finds exactly its own live entry, and a freed row never hits."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(60, 16)).astype(np.float32)
    cache = AnswerCache(threshold=0.99, ttl_s=60, max_entries=40)
    for i, v in enumerate(vectors):  # grows past the first allocation; the first 20 are evicted
        cache.put(SCOPE, f"q{i}", v, _entry(f"q{i}"))
    assert len(cache) == 40
    for i, v in enumerate(vectors):
        hit = cache.similar(SCOPE, v)
        assert (hit is None) if i < 20 else (hit is not None and hit[0].question == f"q{i}")
    cache.put(SCOPE, "q59", None, _entry("q59"))  # re-stored without a vector: its old vector must go
    assert cache.similar(SCOPE, vectors[59]) is None and cache.exact(SCOPE, "q59") is not None

    short = AnswerCache(threshold=0.99, ttl_s=60, max_entries=40)
    short.put(SCOPE, "old", vectors[0], CachedAnswer("old", ANSWER, (), time.monotonic() - 120))  # already expired
    short.put(SCOPE, "near", vectors[0] + 0.01, _entry("near"))  # the next closest, fresh
    hit = short.similar(SCOPE, vectors[0])  # the expired best is dropped and the fresh one found
    assert hit is not None and hit[0].question == "near" and len(short) == 1
    short.put(SCOPE, "reuse", vectors[1], _entry("reuse"))  # takes the freed row
    assert short.similar(SCOPE, vectors[0])[0].question == "near"  # type: ignore[index]
    assert short.similar(SCOPE, vectors[1])[0].question == "reuse"  # type: ignore[index]
