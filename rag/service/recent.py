"""Where feedback finds the request it judges: recent requests in memory, older ones in the request log.

Feedback usually comes seconds after the answer, so a bounded in-memory map of the last
``RAGOPS_SERVICE__RECENT_REQUESTS`` snapshots answers almost every lookup without I/O. A request that has left the
map (or was answered before a restart) is found in ``<home>/logs/requests.jsonl``, which records the same snapshot
for every answered request. The log is read backwards from its end, since a rated request is far more likely to be
recent than old, and at most :data:`MAX_SCAN_BYTES` of it, so that a flood of feedback on made-up ids cannot make
the service read a log of many gigabytes again and again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from rag.feedback import RequestSnapshot

logger = logging.getLogger(__name__)

MAX_SCAN_BYTES = 256 * 1024 * 1024
"""How far back (from the end) the request log is searched for an id that is no longer in memory."""

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
"""The shape of the ids the service hands out (``uuid4().hex``); anything else cannot be in the log."""

_BLOCK = 64 * 1024


class RecentRequests:
    """A bounded, thread-safe ``request_id -> RequestSnapshot`` map backed by the request log.

    Args:
        capacity: Snapshots kept in memory (the oldest is dropped first).
        log_path: The service's ``requests.jsonl``.
    """

    def __init__(self, capacity: int, log_path: Path) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._log_path = log_path
        self._items: OrderedDict[str, RequestSnapshot] = OrderedDict()
        self._lock = threading.Lock()
        self.log_lookups = 0  # how often the log had to be read (monitoring; tests)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, snapshot: RequestSnapshot) -> None:
        """Remember an answered request (evicting the oldest beyond capacity)."""
        with self._lock:
            self._items[snapshot.request_id] = snapshot
            self._items.move_to_end(snapshot.request_id)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> RequestSnapshot | None:
        """The snapshot of ``request_id``: from memory, else from the request log; None when it is in neither.

        Blocking (it may read the log): call it from a worker thread in async code.
        """
        with self._lock:
            found = self._items.get(request_id)
            if found is not None or not REQUEST_ID.match(request_id):
                return found
            self.log_lookups += 1
        return find_in_log(self._log_path, request_id)  # outside the lock: memory lookups never wait for the disk


def find_in_log(path: Path, request_id: str, *, max_bytes: int = MAX_SCAN_BYTES) -> RequestSnapshot | None:
    """The last record of ``request_id`` in a request log, searching backwards from its end.

    A line that is not a complete record (one being written right now, or from a crash) is skipped.
    """
    needle = json.dumps(request_id).encode("utf-8")
    try:
        for line in _lines_backwards(path, max_bytes=max_bytes):
            if needle not in line:  # cheap test before parsing
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("request_id") == request_id:
                try:
                    return RequestSnapshot.from_json(record)
                except ValueError:
                    logger.warning("request log record of %s is incomplete; feedback cannot use it", request_id)
                    return None
    except FileNotFoundError:
        return None
    return None


def _lines_backwards(path: Path, *, max_bytes: int) -> Iterator[bytes]:
    """Non-empty lines of ``path``, last first, reading no more than ``max_bytes`` from the end."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        floor = max(0, end - max_bytes)
        position = end
        tail = b""
        while position > floor:
            step = min(_BLOCK, position - floor)
            position -= step
            handle.seek(position)
            lines = (handle.read(step) + tail).split(b"\n")
            tail = lines.pop(0)  # may continue in the previous block
            for line in reversed(lines):
                if line:
                    yield line
        if tail and floor == 0:  # the first line of the file; at a cut-off it is a fragment
            yield tail
