"""Open- and closed-loop HTTP load for the serving benchmark (``bench/load.py``), cheap enough to share two cores.

Why open loop: a closed-loop client (wrk, N connections each waiting for its answer) slows down with the server, so
it can never offer 2x the capacity and hides queueing (coordinated omission). Here requests leave on a fixed
schedule (``rate`` per second, evenly spaced) whatever the server does, each on its own keep-alive connection from a
pool, and latency counts from the scheduled departure, so time spent waiting behind a slow server is measured.

aiohttp's client (C HTTP parser) keeps the generator's own CPU low; :class:`StepResult` reports that share
(process CPU seconds over wall seconds) beside the figures, since the generator runs on the cores it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

REFUSED = (429, 503)


@dataclass(frozen=True)
class Outcome:
    """One request: its HTTP status (0: no answer), latency from its scheduled departure, and ``Retry-After``."""

    status: int
    latency_s: float
    retry_after: bool
    error: str = ""
    server_ms: float | None = None  # the answer's own timings.total: the time inside the request's stages
    admission_ms: float | None = None  # the answer's timings.admission: its wait for a slot


@dataclass(frozen=True)
class StepResult:
    """What a load step produced: answered (200), refused (429/503) and the rest, with the answered latencies."""

    offered_rps: float
    seconds: float
    outcomes: tuple[Outcome, ...] = field(repr=False)
    generator_cpu_share: float

    @property
    def ok(self) -> list[float]:
        return sorted(o.latency_s for o in self.outcomes if o.status == 200)

    @property
    def refused(self) -> int:
        return sum(1 for o in self.outcomes if o.status in REFUSED)

    @property
    def refused_without_retry_after(self) -> int:
        return sum(1 for o in self.outcomes if o.status in REFUSED and not o.retry_after)

    @property
    def other_errors(self) -> int:
        return sum(1 for o in self.outcomes if o.status != 200 and o.status not in REFUSED)

    def summary(self) -> dict[str, object]:
        """The step as JSON-ready figures (latencies in ms)."""
        ok = self.ok
        server = sorted(o.server_ms for o in self.outcomes if o.status == 200 and o.server_ms is not None)
        admission = sorted(o.admission_ms for o in self.outcomes if o.status == 200 and o.admission_ms is not None)
        kinds = Counter(o.error or str(o.status) for o in self.outcomes if o.status != 200 and o.status not in REFUSED)
        return {
            "offered_rps": round(self.offered_rps, 2),
            "sent": len(self.outcomes),
            "goodput_rps": round(len(ok) / self.seconds, 2),
            "refused": self.refused,
            "refused_without_retry_after": self.refused_without_retry_after,
            "other_errors": self.other_errors,
            "other_error_kinds": dict(kinds.most_common(5)),
            "p50_ms": _ms(_percentile(ok, 50)),
            "p99_ms": _ms(_percentile(ok, 99)),
            "server_p50_ms": _round(_percentile(server, 50)),
            "server_p99_ms": _round(_percentile(server, 99)),
            "admission_p99_ms": _round(_percentile(admission, 99)),
            "generator_cpu_share": round(self.generator_cpu_share, 3),
        }


def _percentile(values: Sequence[float], q: float) -> float | None:
    """bench/query.py's nearest-rank percentile, None (JSON null) when nothing was answered."""
    from bench.query import percentile

    return percentile(values, q) if values else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _bodies(questions: Sequence[str]) -> list[bytes]:
    return [json.dumps({"question": q}).encode() for q in questions]


async def _post(session: object, url: str, body: bytes, scheduled: float, timeout_s: float) -> Outcome:
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            body = await response.read()
            latency = time.perf_counter() - scheduled
            server_ms = admission_ms = None
            if response.status == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    timings = json.loads(body)["timings"]
                    server_ms, admission_ms = float(timings["total"]), float(timings.get("admission", 0.0))
            retry_after = "Retry-After" in response.headers
            return Outcome(response.status, latency, retry_after, server_ms=server_ms, admission_ms=admission_ms)
    except TimeoutError:
        return Outcome(0, time.perf_counter() - scheduled, False, "timeout")
    except aiohttp.ClientError as exc:
        return Outcome(0, time.perf_counter() - scheduled, False, type(exc).__name__)


async def open_loop(
    url: str,
    questions: Sequence[str],
    rate: float,
    seconds: float,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    connections: int = 1024,
) -> StepResult:
    """POST ``questions`` (cycled) to ``url`` at ``rate`` per second for ``seconds``, whatever the answers take."""
    import aiohttp

    bodies = _bodies(questions)
    total = max(1, int(rate * seconds))
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    cpu0 = _cpu_seconds()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(session, url, bodies[i % len(bodies)], scheduled, timeout_s)))
        outcomes = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return StepResult(rate, seconds, tuple(outcomes), (_cpu_seconds() - cpu0) / max(wall, 1e-9))


async def closed_loop(
    url: str,
    questions: Sequence[str],
    concurrency: int,
    seconds: float,
    *,
    headers: Mapping[str, str] | None = None,
    refused_pause_s: float = 0.02,
) -> StepResult:
    """``concurrency`` clients each posting the next question as soon as the previous one is answered (after
    ``refused_pause_s`` when it was refused, so refusals do not spin); ``offered_rps`` is the goodput."""
    import aiohttp

    bodies = _bodies(questions)
    counter = iter(range(10**9))
    outcomes: list[Outcome] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    cpu0 = _cpu_seconds()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        deadline = start + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                outcome = await _post(session, url, bodies[next(counter) % len(bodies)], time.perf_counter(), 30)
                outcomes.append(outcome)
                if outcome.status in REFUSED:
                    await asyncio.sleep(refused_pause_s)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = sum(1 for o in outcomes if o.status == 200)
    return StepResult(ok / wall, wall, tuple(outcomes), (_cpu_seconds() - cpu0) / wall)
