"""The platform's base settings and the ingestion layer's groups, read from ``RAGOPS_*`` environment variables.

Each layer owns its settings and extends the one below: :class:`PipelineSettings` (here: where state lives, Qdrant,
MLflow, Prefect's home, the embedder, chunking, ingestion, data quality) <- ``rag.settings.RagSettings`` (the query
service, the local LLM, load limits) <- ``evaluation.settings.EvaluationSettings`` (the gate, fine-tuning) <-
``flows.settings.Settings``, the one object users configure. Code takes the settings of its own layer, so a layer
never reads (or depends on) a group that belongs above it.

Built once at an entry point (CLI command, flow, service start-up, test fixture) and passed down; nothing reads the
environment anywhere else. Nested groups use ``__`` as the delimiter, e.g. ``RAGOPS_QDRANT__URL``.
Every path the platform writes lives under ``home`` so that deleting one folder resets everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    # Placement of the collections ragops creates. Only a server or cluster reads them: the embedded engine is one
    # shard in one process (pipelines/store.py EdgeStore), so there they are ignored.
    shard_number: int | None = Field(
        default=None,
        ge=1,
        description="Server mode: shards per collection ragops creates; shards spread a collection over the "
        "cluster's nodes (more nodes share the data and the search work). Unset: Qdrant's default (one per node "
        "present at creation in a cluster, 1 on a single node). Fixed at creation. Ignored by the embedded engine.",
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        description="Server mode: copies of every shard on distinct nodes, so reads and writes go on when a node "
        "fails (2 survives one node). Unset: the cluster's storage.collection.replication_factor. Meaningful in a "
        "cluster only; ignored by the embedded engine.",
    )
    write_consistency_factor: int | None = Field(
        default=None,
        ge=1,
        description="Server mode: replicas of a shard that must apply a write before it succeeds (at most "
        "replication_factor; higher is stricter but fails writes while a replica is down). Unset: the cluster's "
        "default (1). Ignored by the embedded engine.",
    )

    @model_validator(mode="after")
    def _writes_can_succeed(self) -> QdrantSettings:
        # More acknowledgements than copies: Qdrant accepts the collection, then every write to it fails.
        rf, wcf = self.replication_factor, self.write_consistency_factor
        if rf is not None and wcf is not None and wcf > rf:
            raise ValueError(
                f"qdrant.write_consistency_factor ({wcf}) exceeds qdrant.replication_factor ({rf}): "
                "no write could gather that many replicas"
            )
        return self


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
    dask_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="The ingest flow partitions files on a local Dask cluster of this many single-threaded worker "
        "processes (0: on the flow's threads). Partitioning is single-threaded Python per document, so processes "
        "scale where threads cannot.",
    )
    dask_address: str | None = Field(
        default=None,
        description="The ingest flow partitions files on this Dask scheduler (tcp://host:8786); overrides "
        "dask_workers. The workers must see the same file paths (a shared volume).",
    )


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


class PipelineSettings(BaseSettings):
    """The base of every layer's settings. Environment: ``RAGOPS_<FIELD>`` and ``RAGOPS_<GROUP>__<FIELD>``."""

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
