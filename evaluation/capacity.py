"""Capacity planning: replicas, cores and memory for a query rate and a corpus size, from measured unit costs.

The plan multiplies a few unit costs measured on a real machine (a :class:`CostProfile`: CPU milliseconds per
request of the query service and per chunk of ingestion, resident memory per process, search cost per query at a
known index size) by the load asked for, and divides by a target utilisation so that there is headroom for bursts
and for one replica to fail. It is arithmetic, not a simulation: every assumption is printed beside the answer, and
the profile can be replaced by one measured on the target hardware (``--profile FILE``).

Scaling rules, and why:

* **Query service**: CPU-bound (query embedding is most of a request), so cores grow linearly with the rate. At
  least two replicas, so one can fail or be replaced without downtime.
* **Qdrant** (server mode): memory is Qdrant's own sizing rule, vectors x dimension x 4 bytes x 1.5 (the index's
  links and bookkeeping), plus payloads when kept in RAM; an HNSW search grows about with the logarithm of the
  number of points, so the measured search cost is scaled by ``log(N) / log(N_measured)``. ``replication`` copies of
  everything (2: one node may fail).
* **Ingestion**: CPU-bound in the embedder, linear in chunks; the number of workers is what re-embeds the whole
  corpus within the allowed window (a new embedder, a re-chunking), each worker one process of ``cores_per_worker``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from evaluation.errors import EvaluationError


class CapacityError(EvaluationError, ValueError):
    """A capacity question that cannot be answered as asked (a non-positive rate, an unreadable profile)."""


class CostProfile(BaseModel):
    """Unit costs measured on one machine (defaults: this project's benchmarks, see ``source``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service_core_ms_per_request: float = Field(
        default=17.9,
        gt=0,
        description="CPU milliseconds per query request (HTTP, auth, guardrails, embedding, search, answer).",
    )
    service_rss_mb: float = Field(default=1000.0, gt=0, description="Resident memory of one service process.")
    search_core_ms: float = Field(default=0.9, gt=0, description="CPU milliseconds of one top-10 dense search.")
    search_points: int = Field(default=12_685, gt=1, description="Index size at which search_core_ms was measured.")
    ingest_core_ms_per_chunk: float = Field(
        default=30.9, gt=0, description="CPU milliseconds per chunk ingested (partition, chunk, embed, upsert)."
    )
    ingest_rss_mb: float = Field(default=1900.0, gt=0, description="Peak resident memory of one ingestion process.")
    vector_dim: int = Field(default=384, gt=0, description="Embedding dimension.")
    payload_bytes_per_chunk: int = Field(
        default=900, ge=0, description="Payload per point: chunk text, ids and metadata."
    )
    source: str = Field(
        default=(
            "bench/query.py 2026-11-26 (111.6 requests/s at concurrency 8 on 2 cores, int8 MiniLM, AMD EPYC AVX2); "
            "bench/index.py (Edge dense top-10 about 0.9 ms on 12,685 points); bench/ingest.py 2026-11-26 (12,677 "
            "SciFact chunks in 235 s on 2 cores at 0.83 core share); RSS of `ragops serve` and `ragops ingest` "
            "measured 2026-12-04; SciFact chunks hold 613 characters of text on average"
        ),
        description="Where the figures come from.",
    )

    @classmethod
    def load(cls, path: Path | None) -> CostProfile:
        """The profile in ``path`` (JSON with any of the fields), or the defaults."""
        if path is None:
            return cls()
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CapacityError(f"cannot read the cost profile {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CapacityError(f"{path} is not a cost profile: {exc}") from None


@dataclass(frozen=True)
class Demand:
    """What the plan must carry."""

    qps: float
    corpus_chunks: int
    utilisation: float = 0.6
    cores_per_replica: int = 2
    replication: int = 2
    payload_in_ram: bool = False
    reindex_hours: float = 4.0
    cores_per_worker: int = 2

    def __post_init__(self) -> None:
        if not self.qps > 0:
            raise CapacityError(f"--qps must be positive, got {self.qps}")
        if self.corpus_chunks < 1:
            raise CapacityError(f"--corpus-chunks must be at least 1, got {self.corpus_chunks}")
        if not 0 < self.utilisation <= 1:
            raise CapacityError(f"--utilisation must be in (0, 1], got {self.utilisation}")
        if self.cores_per_replica < 1 or self.cores_per_worker < 1:
            raise CapacityError("cores per replica and per worker must be at least 1")
        if self.replication < 1:
            raise CapacityError(f"--replication must be at least 1, got {self.replication}")
        if not self.reindex_hours > 0:
            raise CapacityError(f"--reindex-hours must be positive, got {self.reindex_hours}")


@dataclass(frozen=True)
class Part:
    """One part of the platform: how many processes, cores and memory."""

    name: str
    replicas: int
    cores: float
    memory_gb: float
    note: str


@dataclass(frozen=True)
class CapacityPlan:
    """The answer, with what it assumed."""

    demand: Demand
    parts: tuple[Part, ...]
    assumptions: tuple[str, ...]

    @property
    def total_cores(self) -> float:
        """Cores over every part."""
        return round(sum(p.cores for p in self.parts), 1)

    @property
    def total_memory_gb(self) -> float:
        """Memory over every part."""
        return round(sum(p.memory_gb for p in self.parts), 1)

    def to_json(self) -> dict[str, object]:
        """The ``--json`` output."""
        return {
            "demand": asdict(self.demand),
            "parts": {p.name: asdict(p) for p in self.parts},
            "total_cores": self.total_cores,
            "total_memory_gb": self.total_memory_gb,
            "assumptions": list(self.assumptions),
        }


def plan(demand: Demand, profile: CostProfile) -> CapacityPlan:
    """Size the query service, Qdrant and ingestion for ``demand`` with the unit costs of ``profile``."""
    u = demand.utilisation
    n = demand.corpus_chunks
    # query service
    service_cores = demand.qps * profile.service_core_ms_per_request / 1000.0 / u
    replicas = max(2, math.ceil(service_cores / demand.cores_per_replica))
    service = Part(
        "query_service",
        replicas,
        float(replicas * demand.cores_per_replica),
        round(replicas * profile.service_rss_mb / 1024.0, 1),
        f"{service_cores:.1f} busy cores at {u:.0%} utilisation; at least 2 replicas",
    )
    # Qdrant
    growth = math.log(max(n, 2)) / math.log(profile.search_points)
    search_cores = demand.qps * profile.search_core_ms * growth / 1000.0 / u
    vectors_gb = n * profile.vector_dim * 4 * 1.5 / 1024**3
    payload_gb = n * profile.payload_bytes_per_chunk / 1024**3
    per_copy_gb = vectors_gb + (payload_gb if demand.payload_in_ram else 0.0) + 0.5  # plus the process itself
    qdrant = Part(
        "qdrant",
        demand.replication,
        round(max(1.0, search_cores) * demand.replication, 1),
        round(per_copy_gb * demand.replication, 1),
        f"vectors {vectors_gb:.2f} GB per copy, payloads {payload_gb:.2f} GB "
        f"({'in RAM' if demand.payload_in_ram else 'on disk'}), disk about {vectors_gb + payload_gb:.1f} GB per copy",
    )
    # ingestion
    reindex_core_hours = n * profile.ingest_core_ms_per_chunk / 1000.0 / 3600.0
    workers = max(1, math.ceil(reindex_core_hours / demand.reindex_hours / demand.cores_per_worker))
    ingestion = Part(
        "ingestion",
        workers,
        float(workers * demand.cores_per_worker),
        round(workers * profile.ingest_rss_mb / 1024.0, 1),
        f"a full re-index is {reindex_core_hours:.2f} core-hours: "
        f"{reindex_core_hours / (workers * demand.cores_per_worker):.2f} h on {workers} worker(s)",
    )
    assumptions = (
        f"unit costs: {profile.source}",
        f"{profile.service_core_ms_per_request} CPU ms per query request; {profile.service_rss_mb:.0f} MB per "
        "service process",
        f"{profile.search_core_ms} CPU ms per search at {profile.search_points:,} points, growing with log(points)",
        f"Qdrant memory: points x {profile.vector_dim} dims x 4 bytes x 1.5, plus "
        f"{profile.payload_bytes_per_chunk} payload bytes per point when in RAM, plus 0.5 GB per node",
        f"{profile.ingest_core_ms_per_chunk} CPU ms per chunk ingested; {profile.ingest_rss_mb:.0f} MB per worker",
        f"target utilisation {u:.0%} (headroom for bursts and a failed replica); replication {demand.replication}",
        "the query rate is steady and questions are like the benchmark's (short; answers extractive or from a hosted "
        "LLM, whose own capacity is not counted here)",
    )
    return CapacityPlan(demand, (service, qdrant, ingestion), assumptions)
