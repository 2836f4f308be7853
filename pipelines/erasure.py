"""What an erasure names, and the tombstones that keep an erased document from coming back.

Why tombstones: erasing a document from the index is undone by the next scheduled ingestion if its file is still
in the source folder (a user's folder ragops must not delete). So every erasure appends one line to
``<home>/erasures.jsonl`` naming *what* was erased (a document id, a source path or a tenant, never its text), and
the ingestion plan skips items a tombstone covers, logging how many it skipped. To ingest such a document again,
remove its line from that file.

The file is append-only JSON lines (one ``write`` of a short line with ``O_APPEND`` is atomic on Linux), so several
processes erasing at once cannot tear it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pipelines.errors import ConfigError
from pipelines.quarantine import Quarantine
from pipelines.settings import PipelineSettings
from pipelines.sources import check_tenant
from pipelines.types import SourceItem

logger = logging.getLogger(__name__)

TOMBSTONES = "erasures.jsonl"
Kind = Literal["doc", "source", "tenant"]


@dataclass(frozen=True)
class ErasureTarget:
    """Exactly one of a document id, a source path (a file or a folder, resolved to absolute) or a tenant."""

    kind: Kind
    value: str
    collection: str

    @classmethod
    def of(cls, *, collection: str, doc: str | None, source: str | None, tenant: str | None) -> ErasureTarget:
        """Check that exactly one is given (raises ConfigError with what to pass otherwise)."""
        given = [(k, v) for k, v in (("doc", doc), ("source", source), ("tenant", tenant)) if v]
        if len(given) != 1:
            raise ConfigError("name exactly one thing to erase: --doc ID, --source PATH or --tenant T")
        kind, value = given[0]
        if kind == "source":
            value = str(Path(value).expanduser().resolve())
        elif kind == "tenant":
            value = check_tenant(value)
        return cls(kind=kind, value=value, collection=collection)  # type: ignore[arg-type]

    def covers_source(self, source: str) -> bool:
        """Whether a document read from ``source`` (a file path) lies under this source target."""
        return self.kind == "source" and (source == self.value or source.startswith(self.value.rstrip("/") + "/"))

    def covers(self, doc_id: str, source: str, tenant: str | None) -> bool:
        """Whether a document (by id, source file and tenant) is named by this target."""
        if self.kind == "doc":
            return doc_id == self.value
        if self.kind == "tenant":
            return tenant == self.value or doc_id.startswith(f"{self.value}:")
        return self.covers_source(source)

    def describe(self) -> str:
        """For logs and messages: ``doc 'acme:policy.md'``."""
        return f"{self.kind} {self.value!r}"


@dataclass(frozen=True)
class Tombstone:
    """One erasure as remembered by ingestion (what, never the text)."""

    target: ErasureTarget
    at: str


def tombstone_file(settings: PipelineSettings) -> Path:
    """Where the tombstones live (``<home>/erasures.jsonl``)."""
    return settings.home / TOMBSTONES


def add_tombstone(settings: PipelineSettings, target: ErasureTarget) -> Tombstone:
    """Remember an erasure so that ingestion skips what it names from now on."""
    stone = Tombstone(target=target, at=datetime.now(UTC).isoformat(timespec="seconds"))
    line = json.dumps({**asdict(stone.target), "at": stone.at}, ensure_ascii=False) + "\n"
    path = tombstone_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return stone


def tombstones(settings: PipelineSettings, collection: str) -> list[ErasureTarget]:
    """The erasures recorded for ``collection`` (a malformed line is skipped with a warning naming it)."""
    path = tombstone_file(settings)
    if not path.is_file():
        return []
    found: list[ErasureTarget] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            target = ErasureTarget(kind=data["kind"], value=str(data["value"]), collection=str(data["collection"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("skipping malformed tombstone", extra={"file": str(path), "line": n})
            continue
        if target.collection == collection and target.kind in ("doc", "source", "tenant"):
            found.append(target)
    return found


def erased_items(items: Iterable[SourceItem], stones: Sequence[ErasureTarget]) -> set[str]:
    """Ids of the discovered items some tombstone covers."""
    if not stones:
        return set()
    hidden: set[str] = set()
    for item in items:
        tenant = item.metadata.get("tenant")
        if any(s.covers(item.doc_id, item.source, tenant if isinstance(tenant, str) else None) for s in stones):
            hidden.add(item.doc_id)
    return hidden


@dataclass(frozen=True)
class FileErasure:
    """What was removed from files under ``RAGOPS_HOME`` (quarantine records, ragops-owned source copies)."""

    quarantine_records: int
    home_files: tuple[str, ...]
    outside_home: tuple[str, ...]
    """Source files of erased documents that live outside ``RAGOPS_HOME``: the user's own, left in place (the
    tombstone keeps ingestion from reading them again)."""


def erase_files(settings: PipelineSettings, target: ErasureTarget, sources: Iterable[str]) -> FileErasure:
    """Remove the quarantine records the target covers and the erased documents' files that ragops owns (those
    under ``RAGOPS_HOME``, such as the demo corpus); files elsewhere belong to the user and are only reported, as
    are JSONL files (one holds other documents too)."""
    quarantine = Quarantine(settings.quarantine_dir, target.collection)
    removed = 0
    for record in quarantine.list():
        if target.covers(record.doc_id, record.source, None):
            quarantine.release(record.doc_id, record.source)
            removed += 1
    home = settings.home.resolve()
    inside: list[str] = []
    outside: list[str] = []
    for source in sorted(set(sources)):
        path = Path(source)
        if not path.is_file():
            continue
        if path.resolve().is_relative_to(home) and not path.name.endswith((".jsonl", ".jsonl.gz")):
            path.unlink()
            inside.append(source)
        else:
            outside.append(source)
    return FileErasure(quarantine_records=removed, home_files=tuple(inside), outside_home=tuple(outside))
