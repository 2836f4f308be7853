"""The nouns that cross module boundaries in ingestion: documents, chunks, quarantine records, run reports.

All frozen: a step returns new values instead of mutating what it was given, so a retried Prefect task cannot see
half-updated state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MetadataValue = str | int | float | bool | list[str]
Metadata = Mapping[str, MetadataValue]
SourceKind = Literal["file", "record"]


@dataclass(frozen=True)
class SourceItem:
    """One discovered item, before it is read: a file of a directory tree or a record of a JSONL file.

    ``content_hash`` covers the raw bytes (or record) plus its user metadata, so an unchanged item is recognised
    without partitioning it again.
    """

    doc_id: str
    source: str
    kind: SourceKind
    content_hash: str
    size: int
    metadata: Metadata = field(default_factory=dict)
    path: Path | None = None
    title: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class Document:
    """A readable document: plain text plus what identifies it."""

    doc_id: str
    source: str
    title: str
    text: str
    content_hash: str
    metadata: Metadata = field(default_factory=dict)
    file_type: str = "text"


@dataclass(frozen=True)
class Chunk:
    """A piece of a document sized for the embedder's window.

    ``chunk_id`` is a UUID derived from (doc_id, position, content) so re-chunking identical text yields identical
    ids. ``embed_text`` is what the embedder sees (title line plus the chunk); ``n_tokens`` is measured in the
    embedder's own tokenizer, special tokens included; ``truncated`` is true when it still exceeds the window.
    """

    chunk_id: str
    doc_id: str
    position: int
    text: str
    embed_text: str
    n_tokens: int
    truncated: bool
    source: str
    title: str
    doc_hash: str
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class QuarantineRecord:
    """Why one document did not land."""

    doc_id: str
    source: str
    stage: str
    reason: str
    content_hash: str = ""
    run_id: str = ""
    source_key: str = ""
