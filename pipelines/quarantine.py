"""The quarantine: one JSON file per rejected document, with the reason, kept until the document lands.

A record is keyed by (collection, source, document id), so a fixed file replaces its own entry on the next run and
entries of different collections never collide. Nothing is copied from sources: the original stays where it is and
the record says where and why.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from pipelines.types import QuarantineRecord


class Quarantine:
    """Quarantine records of one collection under ``<home>/quarantine/<collection>/``."""

    def __init__(self, root: Path, collection: str) -> None:
        self.folder = root / collection

    def _path(self, doc_id: str, source: str) -> Path:
        key = hashlib.sha256(f"{source}\x1f{doc_id}".encode()).hexdigest()[:24]
        return self.folder / f"{key}.json"

    def put(self, records: Iterable[QuarantineRecord]) -> int:
        """Store (or refresh) records; returns how many were written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for record in records:
            path = self._path(record.doc_id, record.source)
            data = {**asdict(record), "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds")}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
            os.replace(tmp, path)
            count += 1
        return count

    def release(self, doc_id: str, source: str) -> None:
        """Forget a document's record once it has landed."""
        self._path(doc_id, source).unlink(missing_ok=True)

    def retain(self, source_key: str, keep: set[tuple[str, str]]) -> int:
        """Drop this source's records except ``keep`` ((doc_id, source) pairs rejected by the latest run).

        A record outlives its document otherwise: a bad file that is deleted, or restored to its last published
        bytes (unchanged, so never re-read), would stay in the quarantine forever.
        """
        removed = 0
        for record in self.list():
            if record.source_key == source_key and (record.doc_id, record.source) not in keep:
                self.release(record.doc_id, record.source)
                removed += 1
        return removed

    def list(self) -> list[QuarantineRecord]:
        """Every current record, oldest source first."""
        if not self.folder.is_dir():
            return []
        records = []
        for path in sorted(self.folder.glob("*.json")):
            data = json.loads(path.read_text())
            data.pop("quarantined_at", None)
            records.append(QuarantineRecord(**data))
        return sorted(records, key=lambda r: (r.source, r.doc_id))
