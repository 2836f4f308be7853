"""Tenancy benchmark: cross-tenant leaks over randomised queries, and what the scope filter costs.

Usage: ``python bench/tenancy.py [--queries N] [--docs N] [--seed S] [--out FILE]``. Prints one JSON object.

1. Writes three tenants' folders (``acme``, ``beta``, ``gamma``) with the same relative paths and mostly the same
   text (each document has a tenant-specific fact; one in five carries an ``acl``), plus an untenanted folder, and
   ingests each for real (``run_ingest(..., tenant=T)``) into one collection of a scratch ``RAGOPS_HOME``.
2. ``tenant_queries`` (default 10,000) randomised queries, each with a random principal (a tenant, with or without
   the ACL group), a random mode (dense or hybrid), a random question from a pool that includes questions naming
   other tenants' documents and facts, and a random request filter (none, own tenant, another tenant, another
   tenant's doc ids, both tenants). The pool is embedded once, so each query is the Retriever's search with the
   principal's :class:`rag.access.AccessScope`, exactly what the retrieve stage calls. Counted:
   ``cross_tenant_chunks`` (chunks the principal may not see; target 0) and ``underfilled_queries`` (requests
   without a filter that returned fewer than ``min(top_k, permitted chunks)``: what a post-filter would do).
   ``chain_queries`` more go through the whole chain (``build_chain``) with the principal on the context; 200
   control queries without the scope (``control_unscoped_foreign_chunks``, must be > 0) show the check can fail.
3. Latency, in process on the embedded engine (Edge): ``unfiltered_p50_ms`` (dense top-10, no scope) and
   ``filtered_p50_ms`` (dense top-10 with a tenant + ACL scope) on a store of ``--scale-points`` points (default
   12,000, the ingested points' vectors plus random unit vectors, three tenants), ``filtered_over_unfiltered_p50``
   (target <= 2.0); and the same two through the Retriever over the ingested index (``retriever_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.index import p50_ms  # noqa: E402  (the same timing as the index benchmark)

logger = logging.getLogger("bench.tenancy")

TENANTS = {"acme": ("Reno", 120), "beta": ("Lyon", 95), "gamma": ("Porto", 80)}
TOPICS = ("hotel budget", "train travel", "laptop refresh", "parental leave", "badge access", "security training")
GROUP = "board"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000, help="Randomised retrieval queries.")
    parser.add_argument("--chain-queries", type=int, default=300, help="Of which also through the whole chain.")
    parser.add_argument("--docs", type=int, default=30, help="Documents per tenant.")
    parser.add_argument("--scale-points", type=int, default=12_000, help="Points of the latency store.")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    out = run(args.queries, args.chain_queries, args.docs, args.scale_points, args.seed)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")
    return 0


def write_tenant(root: Path, tenant: str, docs: int) -> Path:
    """``docs`` documents at the same relative paths in every tenant, with this tenant's own facts."""
    city, budget = TENANTS[tenant]
    folder = root / tenant
    for i in range(docs):
        topic = TOPICS[i % len(TOPICS)]
        path = folder / f"policies/{topic.replace(' ', '-')}-{i:02d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# {topic.title()} policy {i}\n\nThis policy covers {topic} for every employee. At {tenant}, whose "
            f"head office is in {city}, the {topic} limit is {budget + i} euros and requests go to desk {i}.\n",
            encoding="utf-8",
        )
        if i % 5 == 0:
            (path.parent / f"{path.name}.ragops.json").write_text(json.dumps({"acl": [GROUP]}), encoding="utf-8")
    return folder


def question_pool(docs: int) -> list[str]:
    """Generic questions, and questions that name each tenant's documents, cities and facts."""
    pool = [f"What is the {topic} limit?" for topic in TOPICS]
    for tenant, (city, budget) in TENANTS.items():
        pool += [f"What does {tenant}'s {topic} policy say?" for topic in TOPICS]
        pool += [
            f"Show me {tenant}:policies/{TOPICS[i % len(TOPICS)].replace(' ', '-')}-{i:02d}.md" for i in range(docs)
        ]
        pool += [f"Which tenant has its head office in {city}?", f"Who has a limit of {budget} euros?"]
    return pool


def run(queries: int, chain_queries: int, docs: int, scale_points: int, seed: int) -> dict[str, Any]:
    """Every measurement of the module docstring, as the JSON report."""
    from bench._common import cpu_flags, cpu_model, load_average
    from flows.settings import Settings
    from pipelines.embed import Embedder
    from pipelines.env import apply_offline_env
    from pipelines.index import VectorIndex
    from pipelines.ingest import run_ingest
    from rag.engine import RagEngine
    from rag.types import StackConfig

    scratch = Path(tempfile.mkdtemp(prefix="ragops-bench-tenancy-"))
    settings = Settings(home=scratch / "home")
    apply_offline_env(settings)
    settings.ensure_dirs()
    started = time.perf_counter()
    for tenant in TENANTS:
        run_ingest(settings, write_tenant(scratch / "src", tenant, docs), tenant=tenant)
    public = scratch / "src" / "public"
    public.mkdir()
    (public / "holidays.md").write_text("# Holidays\n\nThe company closes between Christmas and New Year.\n")
    run_ingest(settings, public)
    ingest_seconds = time.perf_counter() - started
    version = VectorIndex(settings).current()
    assert version is not None
    embedder = Embedder(settings.embedder, cache_dir=settings.cache_dir)
    embedder.warm_up()
    pool = question_pool(docs)
    vectors = embedder.encode(pool)
    out: dict[str, Any] = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "load": load_average()}
    out["points"] = version.points
    out["ingest_seconds"] = round(ingest_seconds, 2)
    engines = {
        mode: RagEngine.open(
            settings,
            StackConfig.for_index(version, name=f"bench-{mode}", guardrails=None, retrieval={"mode": mode}),
            embedder=embedder,
        )
        for mode in ("dense", "hybrid")
    }
    try:
        out.update(isolation(engines, pool, vectors, queries, chain_queries, seed))
        out.update(retriever_latency(engines["dense"], vectors))
    finally:
        for engine in engines.values():
            engine.close()
    with VectorIndex(settings).reader() as reader:
        points = list(reader.scroll(dense=True, sparse=True, payload=True))
    out.update(engine_latency(settings, points, vectors, scale_points, seed))
    out["targets_met"] = {
        "cross_tenant_chunks==0": out["cross_tenant_chunks"] == 0 and out["chain_cross_tenant_chunks"] == 0,
        "underfilled_queries==0": out["underfilled_queries"] == 0,
        "filtered_over_unfiltered_p50<=2": out["filtered_over_unfiltered_p50"] <= 2.0,
    }
    return out


def _random_request(rng: random.Random) -> tuple[Any, dict[str, list[str]] | None, str]:
    """A principal, the request's filters and what kind of filter it is."""
    from rag.stages.context import Principal

    tenant = rng.choice(list(TENANTS))
    others = [t for t in TENANTS if t != tenant]
    principal = Principal(name=f"{tenant}-user", tenant=tenant, groups=(GROUP,) if rng.random() < 0.3 else ())
    kind = rng.choice(("none", "none", "own", "other", "other-docs", "both"))
    filters: dict[str, list[str]] | None = {
        "none": None,
        "own": {"tenant": [tenant]},
        "other": {"tenant": [rng.choice(others)]},
        "other-docs": {"doc_id": [f"{rng.choice(others)}:policies/hotel-budget-00.md"]},
        "both": {"tenant": [tenant, rng.choice(others)]},
    }[kind]
    return principal, filters, kind


def isolation(
    engines: dict[str, Any], pool: Sequence[str], vectors: np.ndarray, queries: int, chain_queries: int, seed: int
) -> dict[str, Any]:
    """Randomised queries: leaked chunks (must be 0) and top-k filled from permitted chunks only."""
    from rag.access import scope_of
    from rag.stages.build import build_chain
    from rag.stages.context import RequestContext
    from rag.stages.ports import DirectVectors

    rng = random.Random(seed)
    permitted_counts = _permitted_counts(engines["dense"])
    leaked = underfilled = returned = 0
    kinds: dict[str, int] = {}
    started = time.perf_counter()
    for _ in range(queries):
        principal, filters, kind = _random_request(rng)
        kinds[kind] = kinds.get(kind, 0) + 1
        engine = engines[rng.choice(("dense", "hybrid"))]
        i = rng.randrange(len(pool))
        top_k = rng.choice((3, 5, 10))
        scope = scope_of(principal)
        chunks = engine.retriever.search(pool[i], vectors[i], top_k=top_k, filters=filters, scope=scope)
        returned += len(chunks)
        leaked += sum(1 for c in chunks if not scope.permits(_payload(c)))
        if kind == "none" and len(chunks) < min(top_k, permitted_counts[(principal.tenant, bool(principal.groups))]):
            underfilled += 1
    seconds = time.perf_counter() - started
    # Control: the same kind of requests without the scope must show foreign chunks, or the count above proves nothing.
    control = 0
    for _ in range(200):
        principal, filters, _kind = _random_request(rng)
        i = rng.randrange(len(pool))
        chunks = engines["dense"].retriever.search(pool[i], vectors[i], top_k=10, filters=filters)
        control += sum(1 for c in chunks if not scope_of(principal).permits(_payload(c)))
    chain_leaked = 0
    for _ in range(chain_queries):
        principal, filters, _kind = _random_request(rng)
        engine = engines[rng.choice(("dense", "hybrid"))]
        chain = build_chain(engine, vectors=DirectVectors())
        ctx = asyncio.run(
            chain.run(RequestContext(engine=engine, question=rng.choice(pool), principal=principal, filters=filters))
        )
        scope = scope_of(principal)
        cited = {c.chunk_id for c in ctx.answer.citations} if ctx.answer else set()
        chain_leaked += sum(1 for c in ctx.ranking if not scope.permits(_payload(c)))
        chain_leaked += len(cited - {c.chunk_id for c in ctx.ranking})
    return {
        "tenant_queries": queries,
        "cross_tenant_chunks": leaked,
        "underfilled_queries": underfilled,
        "chunks_returned": returned,
        "control_unscoped_foreign_chunks": control,
        "filter_kinds": kinds,
        "queries_per_s": round(queries / seconds),
        "chain_queries": chain_queries,
        "chain_cross_tenant_chunks": chain_leaked,
    }


def _payload(chunk: Any) -> dict[str, Any]:
    return {"tenant": chunk.tenant, "acl": chunk.metadata.get("acl")}


def _permitted_counts(engine: Any) -> dict[tuple[str | None, bool], int]:
    """How many chunks each (tenant, in the group) principal may see."""
    from rag.access import AccessScope

    payloads = [p.payload or {} for p in engine.reader.scroll(payload=True)]
    return {
        (tenant, grouped): sum(
            1 for p in payloads if AccessScope(tenant=tenant, groups=(GROUP,) if grouped else ()).permits(p)
        )
        for tenant in TENANTS
        for grouped in (False, True)
    }


def retriever_latency(engine: Any, vectors: np.ndarray) -> dict[str, Any]:
    """The Retriever's dense search over the ingested index, without and with a tenant scope."""
    from rag.access import UNRESTRICTED, AccessScope

    scope = AccessScope(tenant="beta", groups=(GROUP,))
    n = len(vectors)
    search = engine.retriever.search
    plain = p50_ms(lambda i: search("limit?", vectors[i], top_k=10, scope=UNRESTRICTED), n)
    scoped = p50_ms(lambda i: search("limit?", vectors[i], top_k=10, scope=scope), n)
    return {"retriever_unfiltered_p50_ms": plain, "retriever_filtered_p50_ms": scoped}


def engine_latency(
    settings: Any, points: Sequence[Any], vectors: np.ndarray, scale_points: int, seed: int
) -> dict[str, Any]:
    """Dense top-10 on an embedded store of ``scale_points`` points, without and with a tenant + ACL scope."""
    from pipelines.sparse import SparseVector
    from pipelines.store import EdgeStore, StoredPoint, StoreSchema
    from rag.access import AccessScope

    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    extra = rng.standard_normal((max(scale_points - len(points), 0), dim)).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    names = list(TENANTS)
    scaled = [StoredPoint(p.id, p.dense, p.sparse, dict(p.payload or {})) for p in points]
    for row, vector in enumerate(extra):
        payload: dict[str, Any] = {"tenant": names[row % 3], "doc_id": f"synthetic-{row}"}
        if row % 5 == 0:
            payload["acl"] = [GROUP]
        scaled.append(StoredPoint(_uuid(row), vector, SparseVector([row % 5000], [1.0]), payload))
    store = EdgeStore.create(Path(tempfile.mkdtemp(prefix="shard-", dir=settings.home)) / "shard", StoreSchema(dim=dim))
    try:
        store.upsert(scaled)
        store.flush()
        flt = AccessScope(tenant="beta", groups=()).narrow(None)
        n = len(vectors)
        plain = p50_ms(lambda i: store.search_dense(vectors[i], limit=10), n)
        scoped = p50_ms(lambda i: store.search_dense(vectors[i], limit=10, flt=flt), n)
    finally:
        store.close()
    return {
        "scale_points": len(scaled),
        "unfiltered_p50_ms": plain,
        "filtered_p50_ms": scoped,
        "filtered_over_unfiltered_p50": round(scoped / plain, 3),
    }


def _uuid(row: int) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ragops-bench-tenancy-{row}"))


if __name__ == "__main__":
    raise SystemExit(main())
