"""The access rule (rag.access): the engine-side filter and the payload check agree, and top-k is filled."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.settings import Settings
from pipelines.sparse import SparseVector
from pipelines.store import EdgeStore, HybridRequest, PointFilter, StoredPoint, StoreSchema
from rag.access import UNRESTRICTED, AccessScope, scope_of
from rag.stages.context import ANONYMOUS, LOCAL, Principal

TENANTS = ("acme", "beta", None)
ACLS: tuple[list[str] | None, ...] = (None, ["board"], ["hr", "board"])


def _payloads() -> list[dict[str, Any]]:
    out = []
    for n, (tenant, acl) in enumerate(itertools.product(TENANTS, ACLS)):
        for copy in range(4):
            payload: dict[str, Any] = {"doc_id": f"d{n}-{copy}"}
            if tenant is not None:
                payload["tenant"] = tenant
            if acl is not None:
                payload["acl"] = acl
            out.append(payload)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    rng = np.random.default_rng(3)
    payloads = _payloads()
    vectors = rng.standard_normal((len(payloads), 8)).astype(np.float32)
    made = EdgeStore.create(Path(tmp_path_factory.mktemp("access")) / "shard", StoreSchema(dim=8))
    made.upsert(
        [
            StoredPoint(str(uuid.UUID(int=i + 1)), vectors[i], SparseVector([1, 2 + i % 3], [1.0, 0.5]), p)
            for i, p in enumerate(payloads)
        ]
    )
    yield made
    made.close()


SCOPES = [
    AccessScope(tenant="acme"),
    AccessScope(tenant="acme", groups=("board",)),
    AccessScope(tenant="beta", groups=("hr",)),
    AccessScope(),  # no tenant, not admin: untenanted, public only
    AccessScope(groups=("board",)),
    scope_of(Principal(role="admin", tenant="beta")),
    UNRESTRICTED,
]


@pytest.mark.parametrize("scope", SCOPES)
def test_search_returns_exactly_what_permits_allows_and_fills_top_k(store: Any, scope: AccessScope) -> None:
    everything = {p.id: p.payload for p in store.scroll()}
    allowed = {pid for pid, payload in everything.items() if scope.permits(payload)}
    flt = scope.narrow(None)
    query = np.ones(8, dtype=np.float32)
    for hits in (
        store.search_dense(query, limit=100, flt=flt),
        store.search_sparse(SparseVector([1], [1.0]), limit=100, flt=flt),
        store.search_hybrid(HybridRequest(query, SparseVector([1], [1.0]), depth=100), limit=100, flt=flt),
    ):
        assert {h.id for h in hits} == allowed  # inside the search: the whole permitted set, nothing else
    top = store.search_dense(query, limit=3, flt=flt)
    assert len(top) == min(3, len(allowed))


def test_request_filters_only_narrow(store: Any) -> None:
    acme = AccessScope(tenant="acme", groups=("board",))
    other = acme.narrow(PointFilter.of({"tenant": ["beta"]}))
    assert store.search_dense(np.ones(8, dtype=np.float32), limit=50, flt=other) == []
    both = acme.narrow(PointFilter.of({"tenant": ["acme", "beta"]}))
    hits = store.search_dense(np.ones(8, dtype=np.float32), limit=50, flt=both, payload=True)
    assert hits and {h.payload["tenant"] for h in hits} == {"acme"}


def test_principal_rules() -> None:
    assert scope_of(Principal(tenant="acme", groups=("hr",))) == AccessScope(tenant="acme", groups=("hr",))
    assert scope_of(Principal()) == AccessScope()  # a reader without tenant: single-tenant documents only
    assert scope_of(Principal(role="admin")).narrow(None) is None  # admin without tenant: no restriction
    assert scope_of(ANONYMOUS) == AccessScope()  # a public route's caller: untenanted, public documents only
    assert scope_of(LOCAL) == UNRESTRICTED  # evaluation, the CLI, a service without authentication
    assert not AccessScope(tenant="acme").permits({"tenant": "beta"})
    assert not AccessScope().permits({"tenant": "beta"})
    assert AccessScope(tenant="acme", groups=("hr",)).permits({"tenant": "acme", "acl": "hr"})


def test_one_trusted_in_process_principal(settings: Settings) -> None:
    """Evaluation, the CLI and a loopback service with auth off act as the same principal, which sees everything."""
    from rag.security.gate import Gate

    open_gate = Gate(settings.model_copy(update={"security": settings.security.model_copy(update={"auth": False})}))
    assert open_gate.authenticate(None) is LOCAL
    assert open_gate.check("POST", "/v1/query", None) is LOCAL
    assert scope_of(open_gate.authenticate("Bearer anything")) == UNRESTRICTED
