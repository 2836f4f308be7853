"""Discover what a source contains: files of a directory tree, or records of a (BEIR) JSONL corpus.

Discovery hashes every item (raw bytes or record, plus its metadata) so that the ingestion can tell new, changed and
unchanged documents apart before doing any expensive work. Items that cannot even be looked at (a dangling symlink,
an over-large file, a malformed JSONL line) come back as quarantine records; discovery never stops on one bad item.

Document ids are stable: the POSIX path relative to the source root for files, the record's ``_id``/``id`` for JSONL,
prefixed with ``<tenant>:`` when the source is ingested for a tenant (``--tenant``). Why the prefix: two tenants'
folders commonly share relative paths (``acme/policy.md`` and ``beta/policy.md`` are both ``policy.md``), and one
collection keys documents by id, so without it the second tenant's ingest replaced the first one's document. Sources
ingested without a tenant keep the bare path (the single-tenant case, and test sets' qrels, are unchanged). Any
remaining clash (two untenanted sources sharing a path) is refused by the ingestion plan, never overwritten.
Metadata (tenant, ACL, ...) comes from, in increasing priority: the flow parameter, ``_meta.json`` in any folder
between the root and the file, and a ``<file>.ragops.json`` sidecar next to the file.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import SourceError
from pipelines.settings import IngestSettings
from pipelines.types import Metadata, MetadataValue, QuarantineRecord, SourceItem

logger = logging.getLogger(__name__)

FOLDER_SIDECAR = "_meta.json"
DOC_SIDECAR_SUFFIX = ".ragops.json"
_HASH_CHUNK = 1 << 20
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Discovery:
    """What a source holds right now."""

    source_key: str
    kind: str
    items: tuple[SourceItem, ...]
    rejected: tuple[QuarantineRecord, ...] = field(default_factory=tuple)


def _glob_match(rel: str, patterns: Sequence[str]) -> bool:
    """fnmatch with ``**/`` also matching at the root (``**/.*`` matches ``.git`` and ``a/.git``)."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:]):
            return True
    return False


def _metadata_hash(metadata: Metadata) -> str:
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False)


def _file_hash(path: Path, metadata: Metadata) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_CHUNK):
            digest.update(block)
    digest.update(_metadata_hash(metadata).encode())
    return digest.hexdigest()


def _read_sidecar(path: Path) -> dict[str, MetadataValue]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"metadata sidecar {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SourceError(f"metadata sidecar {path} must hold a JSON object")
    return _clean_metadata(data, where=str(path))


def _clean_metadata(data: Mapping[str, object], *, where: str) -> dict[str, MetadataValue]:
    """Keep JSON scalars and lists of strings; anything else is a configuration mistake worth naming."""
    out: dict[str, MetadataValue] = {}
    for key, value in data.items():
        if isinstance(value, str | int | float | bool):
            out[str(key)] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[str(key)] = list(value)
        else:
            raise SourceError(f"metadata {key!r} in {where} must be a string, number, boolean or list of strings")
    return out


def discover(
    source: Path,
    *,
    settings: IngestSettings,
    tenant: str | None = None,
    extra_metadata: Mapping[str, MetadataValue] | None = None,
) -> Discovery:
    """List the documents of ``source`` (a folder, a JSONL file, or a BEIR folder holding ``corpus.jsonl[.gz]``).

    Args:
        source: Path to a directory tree or a JSONL / JSONL.gz file.
        settings: Include/exclude globs and size limits.
        tenant: Default tenant for every document (overridden by sidecars).
        extra_metadata: Further default metadata (e.g. ``acl``).

    Returns:
        The discovered items plus quarantine records for items that could not be examined.

    Raises:
        SourceError: The source does not exist or cannot be listed.
    """
    base: dict[str, MetadataValue] = dict(extra_metadata or {})
    prefix = ""
    if tenant:
        base["tenant"] = check_tenant(tenant)
        prefix = f"{tenant}:"
    source = source.expanduser()
    if not source.exists():
        raise SourceError(f"source {source} does not exist")
    if source.is_file():
        if _is_jsonl(source):
            return _discover_jsonl(source, base, prefix)
        raise SourceError(f"source {source} is a file; give a folder, a .jsonl or a .jsonl.gz file")
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (source / name).is_file():
            return _discover_jsonl(source / name, base, prefix)
    return _discover_tree(source, settings, base, prefix)


def check_tenant(tenant: str) -> str:
    """A tenant name usable in document ids and payload filters: letters, digits, ``.``, ``_`` and ``-``.

    Raises:
        SourceError: The name is empty or has other characters (``:`` would make ids ambiguous).
    """
    if not _TENANT_RE.fullmatch(tenant):
        raise SourceError(
            f"tenant {tenant!r} is not valid: use 1-64 letters, digits, '.', '_' or '-' (first a letter or digit)"
        )
    return tenant


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _discover_tree(
    root: Path, settings: IngestSettings, base: Mapping[str, MetadataValue], prefix: str = ""
) -> Discovery:
    root = root.resolve()
    items: list[SourceItem] = []
    rejected: list[QuarantineRecord] = []
    folder_meta: dict[Path, dict[str, MetadataValue]] = {}
    for path in _walk(root):
        rel = path.relative_to(root).as_posix()
        if not _glob_match(rel, settings.include) or _glob_match(rel, settings.exclude):
            continue
        doc_id = prefix + rel
        try:
            metadata = _metadata_for(path, root, base, folder_meta)
        except SourceError as exc:
            rejected.append(QuarantineRecord(doc_id=doc_id, source=str(path), stage="discover", reason=str(exc)))
            continue
        try:
            stat = path.stat()
        except OSError as exc:
            reason = "dangling symlink" if path.is_symlink() else f"unreadable path: {exc.strerror or exc}"
            rejected.append(QuarantineRecord(doc_id=doc_id, source=str(path), stage="read", reason=reason))
            continue
        if stat.st_size > settings.max_file_bytes:
            # Too big to read at all: hash the identity, not the bytes, so an unchanged big file costs nothing.
            content_hash = f"size:{stat.st_size}:mtime:{stat.st_mtime_ns}:{_metadata_hash(metadata)}"
        else:
            try:
                content_hash = _file_hash(path, metadata)
            except OSError as exc:
                rejected.append(
                    QuarantineRecord(
                        doc_id=doc_id, source=str(path), stage="read", reason=f"unreadable path: {exc.strerror or exc}"
                    )
                )
                continue
        items.append(
            SourceItem(
                doc_id=doc_id,
                source=str(path),
                kind="file",
                content_hash=content_hash,
                size=stat.st_size,
                metadata=metadata,
                path=path,
            )
        )
    logger.info("discovered files", extra={"source": str(root), "items": len(items), "rejected": len(rejected)})
    return Discovery(source_key=str(root), kind="tree", items=tuple(items), rejected=tuple(rejected))


def _walk(root: Path) -> Iterator[Path]:
    """Every non-directory entry below root in sorted order (symlinks to files included, dangling ones too)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if name == FOLDER_SIDECAR or name.endswith(DOC_SIDECAR_SUFFIX):
                continue
            yield Path(dirpath) / name
        # Symlinked directories are not followed (loops); report them as unreadable entries instead.
        for name in list(dirnames):
            if (Path(dirpath) / name).is_symlink():
                dirnames.remove(name)


def _metadata_for(
    path: Path, root: Path, base: Mapping[str, MetadataValue], cache: dict[Path, dict[str, MetadataValue]]
) -> dict[str, MetadataValue]:
    merged: dict[str, MetadataValue] = dict(base)
    parts = path.parent.relative_to(root).parts
    for depth in range(len(parts) + 1):
        folder = root.joinpath(*parts[:depth])
        if folder not in cache:
            sidecar = folder / FOLDER_SIDECAR
            cache[folder] = _read_sidecar(sidecar) if sidecar.is_file() else {}
        merged.update(cache[folder])
    doc_sidecar = path.with_name(path.name + DOC_SIDECAR_SUFFIX)
    if doc_sidecar.is_file():
        merged.update(_read_sidecar(doc_sidecar))
    return merged


def _open_text(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            yield from handle
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


def _discover_jsonl(path: Path, base: Mapping[str, MetadataValue], prefix: str = "") -> Discovery:
    """Records with ``_id`` or ``id``, ``text``, optional ``title`` and optional ``metadata`` object."""
    path = path.resolve()
    items: list[SourceItem] = []
    rejected: list[QuarantineRecord] = []
    seen: set[str] = set()
    for lineno, line in enumerate(_open_text(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            rejected.append(
                QuarantineRecord(doc_id=f"line-{lineno}", source=where, stage="read", reason=f"invalid JSON: {exc}")
            )
            continue
        if not isinstance(record, dict):
            rejected.append(
                QuarantineRecord(doc_id=f"line-{lineno}", source=where, stage="read", reason="not a JSON object")
            )
            continue
        raw_id = record.get("_id") if record.get("_id") is not None else record.get("id")
        text = record.get("text")
        if raw_id is None or str(raw_id).strip() == "":
            rejected.append(
                QuarantineRecord(doc_id=f"line-{lineno}", source=where, stage="read", reason="record has no _id or id")
            )
            continue
        record_id = str(raw_id)
        doc_id = prefix + record_id
        if doc_id in seen:
            # Keyed by line, not by id: the first record with this id lands and must not release this entry.
            rejected.append(
                QuarantineRecord(doc_id=doc_id, source=where, stage="read", reason=f"duplicate id {doc_id!r}")
            )
            continue
        seen.add(doc_id)
        where = f"{path}#{record_id}"  # keyed like a landed record, so a fixed record releases its entry
        if not isinstance(text, str):
            rejected.append(
                QuarantineRecord(doc_id=doc_id, source=where, stage="read", reason="record has no string 'text'")
            )
            continue
        title = record.get("title")
        metadata: dict[str, MetadataValue] = dict(base)
        try:
            extra = record.get("metadata") or {}
            if not isinstance(extra, dict):
                raise SourceError("'metadata' must be a JSON object")
            metadata.update(_clean_metadata(extra, where=where))
        except SourceError as exc:
            rejected.append(QuarantineRecord(doc_id=doc_id, source=where, stage="read", reason=str(exc)))
            continue
        title_text = title.strip() if isinstance(title, str) else ""
        digest = hashlib.sha256()
        for part in (doc_id, title_text, text, _metadata_hash(metadata)):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\x1f")
        items.append(
            SourceItem(
                doc_id=doc_id,
                source=f"{path}#{record_id}",
                kind="record",
                content_hash=digest.hexdigest(),
                size=len(text),
                metadata=metadata,
                title=title_text,
                text=text,
            )
        )
    logger.info("discovered records", extra={"source": str(path), "items": len(items), "rejected": len(rejected)})
    return Discovery(source_key=str(path), kind="jsonl", items=tuple(items), rejected=tuple(rejected))
