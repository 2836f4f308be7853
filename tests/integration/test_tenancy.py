"""Tenant isolation end to end: real ingestion of three tenants' own folders, real embedded Qdrant, the real chain.

The folders share relative paths and most of their text (every tenant has ``policy.md`` and ``handbook/travel.md``
about the same topics) but each holds facts of its own, so a leak shows as a foreign tenant's chunk or fact.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.settings import Settings
from pipelines.embed import Embedder
from pipelines.index import VectorIndex
from pipelines.ingest import run_ingest
from rag.engine import RagEngine
from rag.service.holder import Served
from rag.service.sources import UnknownChunk, fetch_chunk
from rag.stages.build import build_chain
from rag.stages.context import Principal, RequestContext
from rag.stages.ports import DirectVectors
from rag.types import RetrievedChunk, StackConfig

pytestmark = pytest.mark.slow

TENANTS = {"acme": ("Reno", "120"), "beta": ("Lyon", "95"), "gamma": ("Porto", "80")}


def _write_tenant(root: Path, tenant: str) -> Path:
    city, budget = TENANTS[tenant]
    folder = root / tenant
    (folder / "handbook").mkdir(parents=True)
    (folder / "policy.md").write_text(
        f"# Expense policy\n\nEmployees of {tenant} may spend at most {budget} euros per night on hotels. "
        "Receipts are required for every expense above ten euros.\n",
        encoding="utf-8",
    )
    (folder / "handbook" / "travel.md").write_text(
        f"# Travel handbook\n\nThe {tenant} head office is in {city}. Book trains rather than flights for trips "
        "under four hours.\n",
        encoding="utf-8",
    )
    if tenant == "gamma":  # one document only the board may read
        (folder / "board.md").write_text(
            "# Board minutes\n\nThe gamma board approved the acquisition of Nimbus Robotics for 40 million euros.\n",
            encoding="utf-8",
        )
        (folder / "board.md.ragops.json").write_text(json.dumps({"acl": ["board"]}), encoding="utf-8")
    return folder


def _doc_ids(settings: Settings) -> set[str]:
    manifest = VectorIndex(settings).manifest()
    assert manifest is not None
    return set(manifest.docs)


def test_two_tenants_sharing_paths_never_overwrite_each_other(settings: Settings, tmp_path: Path) -> None:
    acme, beta = _write_tenant(tmp_path, "acme"), _write_tenant(tmp_path, "beta")
    first = run_ingest(settings, acme, tenant="acme")
    second = run_ingest(settings, beta, tenant="beta")
    assert (first.documents_new, second.documents_new, second.documents_changed) == (2, 2, 0)
    assert _doc_ids(settings) == {
        "acme:policy.md",
        "acme:handbook/travel.md",
        "beta:policy.md",
        "beta:handbook/travel.md",
    }
    # Re-ingesting the first tenant finds nothing changed (it used to flip the shared ids back).
    again = run_ingest(settings, acme, tenant="acme")
    assert (again.documents_unchanged, again.documents_changed, again.published) == (2, 0, False)
    with VectorIndex(settings).reader() as reader:
        tenants = {p.payload["tenant"] for p in reader.scroll() if p.payload}
        assert tenants == {"acme", "beta"} and reader.count() == first.points_total * 2


def test_untenanted_sources_sharing_a_path_are_refused_not_overwritten(settings: Settings, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, fact in ((one, "Oslo"), (two, "Rome")):
        folder.mkdir()
        (folder / "policy.md").write_text(f"# Policy\n\nThe office is in {fact}. Doors open at eight.\n")
        (folder / f"only-{folder.name}.md").write_text(
            f"# Other {fact}\n\nA document only {folder.name} has, about {fact}.\n"
        )
    run_ingest(settings, one)
    # policy.md of the second source clashes with the first's: quarantined with the reason, never replacing it.
    second = run_ingest(
        settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_failure_share": 1.0})}), two
    )
    assert second.documents_failed == 1 and "already belongs to source" in second.quarantined[0].reason
    manifest = VectorIndex(settings).manifest()
    assert manifest is not None and manifest.docs["policy.md"].source_key == str(one.resolve())


@pytest.fixture(scope="module")
def three_tenants(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Settings]:
    """One collection holding acme, beta and gamma, each ingested from its own folder with ``--tenant``."""
    root = tmp_path_factory.mktemp("tenants")
    with pytest.MonkeyPatch.context() as patch:
        import os

        for key in list(os.environ):
            if key.startswith("RAGOPS_"):
                patch.delenv(key)
        built = Settings(home=root / "home", cache=shared_cache)
    built.ensure_dirs()
    for tenant in TENANTS:
        run_ingest(built, _write_tenant(root / "src", tenant), tenant=tenant)
    # and one untenanted (single-tenant) document
    shared = root / "src" / "public"
    shared.mkdir()
    (shared / "holidays.md").write_text("# Holidays\n\nThe company closes between Christmas and New Year.\n")
    run_ingest(built, shared)
    yield built


@pytest.fixture(scope="module", params=["dense", "hybrid"])
def engine(request: pytest.FixtureRequest, three_tenants: Settings, embedder: Embedder) -> Iterator[RagEngine]:
    version = VectorIndex(three_tenants).current()
    assert version is not None
    config = StackConfig.for_index(version, name="tenancy", guardrails=None, retrieval={"mode": request.param})
    with RagEngine.open(three_tenants, config, embedder=embedder) as opened:
        yield opened


def _ask(engine: RagEngine, question: str, principal: Principal, **kwargs: object) -> list[RetrievedChunk]:
    chain = build_chain(engine, vectors=DirectVectors())
    ctx = asyncio.run(chain.run(RequestContext(engine=engine, question=question, principal=principal, **kwargs)))  # type: ignore[arg-type]
    return ctx.ranking


QUESTIONS = [
    "How much may employees spend per night on hotels?",
    "Where is the head office?",
    "Where is the beta head office? Lyon?",
    "What did the gamma board approve about Nimbus Robotics?",
    "acme policy.md expense receipts",
    "When does the company close for the holidays?",
]


@pytest.mark.parametrize("tenant", list(TENANTS))
def test_a_tenant_principal_sees_only_its_own_chunks(engine: RagEngine, tenant: str) -> None:
    principal = Principal(name=f"{tenant}-reader", tenant=tenant)
    for question in QUESTIONS:
        ranking = _ask(engine, question, principal, top_k=5, depth=20)
        # top-k is filled from permitted chunks only: a tenant holds 2 documents (1 chunk each) and no ACL'd one
        assert ranking and {c.tenant for c in ranking} == {tenant}, (question, ranking)
        assert all(c.doc_id.startswith(f"{tenant}:") and c.doc_id != "gamma:board.md" for c in ranking)
        assert len(ranking) == 2


def test_groups_open_acl_documents_and_admin_sees_all(engine: RagEngine) -> None:
    question = "What did the gamma board approve about Nimbus Robotics?"
    board = _ask(engine, question, Principal(tenant="gamma", groups=("board",)), top_k=5)
    assert board[0].doc_id == "gamma:board.md"
    admin = _ask(engine, question, Principal(role="admin"), top_k=10, depth=20)
    assert {c.tenant for c in admin} == {"acme", "beta", "gamma", None}
    # a principal without tenant is a single-tenant one: only untenanted documents
    untenanted = _ask(engine, "Where is the head office?", Principal(), top_k=5)
    assert [c.doc_id for c in untenanted] == ["holidays.md"]


def test_request_filters_only_narrow(engine: RagEngine) -> None:
    acme = Principal(tenant="acme")
    question = "Where is the head office?"
    assert _ask(engine, question, acme, filters={"tenant": ["beta"]}) == []
    assert _ask(engine, question, acme, filters={"tenant": ["beta", "gamma"]}) == []
    both = _ask(engine, question, acme, filters={"tenant": ["acme", "beta"]}, top_k=5)
    assert {c.tenant for c in both} == {"acme"}
    one = _ask(engine, question, acme, filters={"doc_id": ["acme:handbook/travel.md", "beta:policy.md"]}, top_k=5)
    assert [c.doc_id for c in one] == ["acme:handbook/travel.md"]


def test_sources_answer_only_chunks_in_scope(engine: RagEngine) -> None:
    from rag.access import scope_of

    served = Served(
        version=1, config=engine.config, engine=engine, index_version=engine.reader.version.version, loaded_at=0.0
    )
    admin_view = _ask(engine, "What did the gamma board approve?", Principal(role="admin"), top_k=10, depth=20)
    by_doc = {c.doc_id: c.chunk_id for c in admin_view}
    board, beta = by_doc["gamma:board.md"], by_doc["beta:policy.md"]
    assert fetch_chunk(served, board, scope=scope_of(Principal(tenant="gamma", groups=("board",)))).doc_id == (
        "gamma:board.md"
    )
    for principal, chunk_id in (
        (Principal(tenant="gamma"), board),  # not in the board group
        (Principal(tenant="acme"), board),
        (Principal(tenant="acme"), beta),
        (Principal(), beta),
    ):
        with pytest.raises(UnknownChunk, match="no chunk"):
            fetch_chunk(served, chunk_id, scope=scope_of(principal))


def test_sources_route_answers_404_outside_the_principal_scope(engine: RagEngine) -> None:
    """The real route and error handlers; the principal arrives on ``request.state`` as authentication leaves it."""
    from contextlib import contextmanager

    from fastapi import FastAPI, Request
    from fastapi.testclient import TestClient

    from rag.service.errors import install_error_handlers
    from rag.service.routers.feedback import router

    served = Served(
        version=1, config=engine.config, engine=engine, index_version=engine.reader.version.version, loaded_at=0.0
    )

    class OneStack:
        @contextmanager
        def acquire(self) -> Iterator[Served]:
            yield served

    app = FastAPI()
    install_error_handlers(app)
    app.state.holder = OneStack()
    app.include_router(router)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        tenant = request.headers.get("x-test-tenant")
        if tenant is not None:
            request.state.principal = Principal(name=tenant, tenant=tenant)
        return await call_next(request)

    admin_view = _ask(engine, "Where is the head office?", Principal(role="admin"), top_k=10, depth=20)
    beta = next(c.chunk_id for c in admin_view if c.doc_id == "beta:policy.md")
    with TestClient(app) as client:
        assert client.get(f"/v1/sources/{beta}", headers={"x-test-tenant": "beta"}).json()["doc_id"] == "beta:policy.md"
        foreign = client.get(f"/v1/sources/{beta}", headers={"x-test-tenant": "acme"})
        unknown = client.get("/v1/sources/00000000-0000-0000-0000-000000000001", headers={"x-test-tenant": "acme"})
        assert foreign.status_code == unknown.status_code == 404
        assert "beta" not in foreign.text
        # no principal on the request at all: anonymous, who sees no tenant's documents (the service's auth
        # dependency always sets one; a route reached without it must not fall open)
        assert client.get(f"/v1/sources/{beta}").status_code == 404
