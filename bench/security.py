"""Security benchmark: the authorisation table walked over a served app, the audit chain's tamper cases, and
what authentication costs per request. Prints one JSON object on stdout.

Keys (issue 13's targets): ``authz_cells`` / ``authz_passed`` (every route x every role x no key, over HTTP on
loopback), ``audit_tamper_cases`` / ``audit_tamper_detected`` (every single-byte change of a sample of records,
every deletion, swaps), ``auth_overhead_p50_ms`` (the gate's check with a cached key, which is what a request pays;
``auth_uncached_p50_ms``: a key looked up in the database; ``auth_http_delta_p50_ms``: the same seen over HTTP,
auth on minus off). Tenancy adds ``cross_tenant_chunks``,
``tenant_queries`` and ``filtered_over_unfiltered_p50``: each measurement is a function returning a dict, listed
in :data:`MEASUREMENTS`, so adding one is adding a function.

Usage: python bench/security.py [--records 40] [--repeat 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.settings import Settings  # noqa: E402
from pipelines.env import apply_offline_env  # noqa: E402

Measurement = Callable[[Settings, argparse.Namespace], dict[str, float | int]]


def _p50_ms(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 4)


def authz(settings: Settings, args: argparse.Namespace) -> dict[str, float | int]:
    """The table walk of tests/security/test_authz.py, over a served app with no stack."""
    from rag.errors import StackNotFound
    from rag.service.app import create_app
    from rag.service.holder import StackHolder
    from tests.fixtures.server import serve
    from tests.security.walk import app_routes, walk

    def no_champion() -> tuple[int, object]:
        raise StackNotFound("no stack is promoted")

    app = create_app(settings, holder=StackHolder(settings, champion=no_champion))  # type: ignore[arg-type]
    keys = {r: app.state.gate.keys.create(role=r, name=f"bench-{r}").secret for r in ("reader", "operator", "admin")}
    with serve(app) as service:
        cells = walk(service.url, app_routes(app), keys)
    return {"authz_cells": len(cells), "authz_passed": sum(c.passed for c in cells)}


def audit(settings: Settings, args: argparse.Namespace) -> dict[str, float | int]:
    """Tamper with a fresh trail of ``--records`` records: bytes of the first, middle and last record, every
    deletion, and swaps of neighbours and of the ends."""
    from rag.security.audit import AuditTrail
    from rag.security.db import open_engine
    from tests.security.tamper import byte_changes, deletions, fill, swaps

    path = settings.home / "tamper.db"
    engine = open_engine(f"sqlite:///{path}")
    trail = AuditTrail(engine)
    n = args.records
    fill(trail, n)
    reports = [
        byte_changes(trail, path, (1, n // 2, n)),
        deletions(trail, path, range(1, n + 1)),
        swaps(trail, path, [(i, i + 1) for i in range(1, n)] + [(1, n)]),
    ]
    started = time.perf_counter()
    trail.verify()
    verify_ms = (time.perf_counter() - started) * 1000
    engine.dispose()
    return {
        "audit_tamper_cases": sum(r.cases for r in reports),
        "audit_tamper_detected": sum(r.detected for r in reports),
        "audit_records": n,
        "audit_verify_ms": round(verify_ms, 3),
    }


def overhead(settings: Settings, args: argparse.Namespace) -> dict[str, float | int]:
    """The gate's check of a reader key on POST /v1/query: from the in-memory cache (what nearly every request
    pays) and from the database (the first request of a key in each cache period)."""
    from rag.security.gate import Gate

    gate = Gate(settings)
    header = f"Bearer {gate.keys.create(role='reader').secret}"
    gate.check("POST", "/v1/query", header)  # fills the cache
    cached = _p50_ms(lambda: gate.check_fast("POST", "/v1/query", header), args.repeat)
    uncached_gate = Gate(
        settings.model_copy(update={"security": settings.security.model_copy(update={"key_cache_s": 0})})
    )
    uncached = _p50_ms(lambda: uncached_gate.check("POST", "/v1/query", header), max(args.repeat // 10, 50))
    gate.close()
    uncached_gate.close()
    return {"auth_overhead_p50_ms": cached, "auth_uncached_p50_ms": uncached}


def http_delta(settings: Settings, args: argparse.Namespace) -> dict[str, float | int]:
    """The whole request over loopback HTTP (GET /v1/models, a handler that does nothing): auth on with a reader
    key minus auth off, the two services asked alternately so machine load hits both alike (medians of 500).
    Includes FastAPI's dependency machinery; still noisy on a shared machine."""
    import contextlib

    import httpx

    from rag.errors import StackNotFound
    from rag.service.app import create_app
    from rag.service.holder import StackHolder
    from tests.fixtures.server import serve

    def no_champion() -> tuple[int, object]:
        raise StackNotFound("no stack is promoted")

    samples: dict[bool, list[float]] = {True: [], False: []}
    with contextlib.ExitStack() as stack:
        clients = {}
        for auth in (True, False):
            varied = settings.model_copy(update={"security": settings.security.model_copy(update={"auth": auth})})
            app = create_app(varied, holder=StackHolder(varied, champion=no_champion))  # type: ignore[arg-type]
            headers = {"Authorization": f"Bearer {app.state.gate.keys.create(role='reader').secret}"} if auth else {}
            service = stack.enter_context(serve(app))
            clients[auth] = stack.enter_context(httpx.Client(base_url=service.url, headers=headers))
        for i in range(550):
            for auth, client in clients.items():
                started = time.perf_counter()
                client.get("/v1/models")
                if i >= 50:  # warm-up
                    samples[auth].append((time.perf_counter() - started) * 1000)
    on, off = statistics.median(samples[True]), statistics.median(samples[False])
    return {
        "http_models_p50_ms_auth_on": round(on, 4),
        "http_models_p50_ms_auth_off": round(off, 4),
        "auth_http_delta_p50_ms": round(on - off, 4),
    }


MEASUREMENTS: tuple[Measurement, ...] = (authz, audit, overhead, http_delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40, help="Audit records in the tamper trail.")
    parser.add_argument("--repeat", type=int, default=5000, help="Timed repetitions of the cached auth check.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragops-bench-security-") as tmp:
        settings = Settings(home=Path(tmp) / "home")
        settings.ensure_dirs()
        apply_offline_env(settings)
        result: dict[str, float | int] = {}
        for measure in MEASUREMENTS:
            result.update(measure(settings, args))
    print(json.dumps(result, indent=2))  # the benchmark's output is its JSON on stdout


if __name__ == "__main__":
    main()
