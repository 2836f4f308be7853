"""Errors raised by the ingestion pipeline.

RagopsError
 ├── ConfigError                   settings that cannot work (bad glob, unknown source)
 └── IngestionError
      ├── SourceError               a source that cannot be listed at all (missing folder, unreadable JSONL)
      ├── DocumentRejected          one document cannot be used; carries the reason and goes to the quarantine
      │    ├── PartitionError       the file could not be read or turned into text
      │    └── DataQualityError     its chunks failed the great-expectations suite
      ├── IndexError_               the index is unusable for this run
      │    ├── EmbedderMismatchError  the index was built by another embedder
      │    └── WriterBusy           another ingestion is writing the collection
      └── FailureThresholdExceeded  too large a share of the batch was quarantined

Everything here is a library error; the CLI and the service translate them to exit codes and HTTP statuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.ingest import IngestReport


class RagopsError(Exception):
    """Base of every error ragops raises on purpose."""


class ConfigError(RagopsError, ValueError):
    """A setting or argument that cannot work; the message names the fix."""


class IngestionError(RagopsError):
    """Ingestion could not proceed."""


class SourceError(IngestionError):
    """A source that cannot be listed or opened at all."""


class DocumentRejected(IngestionError):
    """One document is unusable; the batch goes on without it and the reason is quarantined.

    Args:
        reason: A short human sentence saying what is wrong, e.g. "empty file".
        stage: The pipeline step that rejected it ("discover", "read", "partition", "validate").
    """

    def __init__(self, reason: str, *, stage: str = "partition") -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


class PartitionError(DocumentRejected):
    """The file could not be read or partitioned into text."""


class DataQualityError(DocumentRejected):
    """The document's chunks failed validation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, stage="validate")


class IndexError_(IngestionError):
    """The vector index cannot be used for this operation."""


class EmbedderMismatchError(IndexError_):
    """The index was built with another embedder; writing or querying it would mix vector spaces."""


class FailureThresholdExceeded(IngestionError):
    """More documents failed than ``ingest.max_failure_share`` allows; nothing was published.

    ``report`` is the failed run's summary (what was seen, what was quarantined and why) when the run got that far,
    so ``ragops ingest --json`` can print it although the command exits 3.
    """

    def __init__(self, message: str, *, report: IngestReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class WriterBusy(IndexError_):
    """Another ingestion holds the collection's writer lock; nothing was changed."""
