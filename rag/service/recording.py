"""The service's record stage: each finished request goes to the request log and the recent-requests map.

The record is the request's facts: the (redacted) question, the answer, the stack and index versions, the
guardrail verdicts, usage, timings and the cited chunks' texts (feedback turns them into training pairs, and the
index they came from may be gone by the time someone rates an old answer). Refused requests are recorded too,
without any retrieved text.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.feedback import CitedChunk, RequestSnapshot
from rag.service.recent import RecentRequests
from rag.stages.context import RequestContext

if TYPE_CHECKING:
    from rag.settings import RagSettings


class RequestLog:
    """Append-only JSONL under ``<home>/logs``: answered requests (``requests.jsonl``, for monitoring and
    feedback) or ratings (``feedback.jsonl``)."""

    def __init__(self, settings: RagSettings, name: str = "requests.jsonl") -> None:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        self._path = settings.logs_dir / name
        self._lock = threading.Lock()
        self._handle = self._path.open("a", encoding="utf-8", buffering=1)

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        with self._lock:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        """Flush and close."""
        self._handle.close()


class ServiceRecorder:
    """:class:`rag.stages.record.Recorder` of the service: the request log plus the in-memory recent map."""

    def __init__(self, log: RequestLog, recent: RecentRequests | None, *, stack_version: int, index_version: int):
        self._log = log
        self._recent = recent
        self._stack_version = stack_version
        self._index_version = index_version

    def record(self, ctx: RequestContext) -> None:
        """Write ``ctx``'s facts (an answered request is also kept for feedback)."""
        answer = ctx.answer
        texts = {c.chunk_id: c.text for c in ctx.chunks}
        snapshot = RequestSnapshot(
            request_id=ctx.request_id,
            at=time.time(),
            question=ctx.text,
            answer=ctx.refusal.text if ctx.refusal else (answer.text if answer else ""),
            abstained=bool(answer and answer.abstained),
            stack_version=self._stack_version,
            stack_name=ctx.engine.config.name,
            index_version=self._index_version,
            citations=()
            if ctx.refusal or answer is None
            else tuple(
                CitedChunk(c.n, c.chunk_id, c.doc_id, c.title, c.source, texts.get(c.chunk_id))
                for c in answer.citations
            ),
        )
        self._log.write(
            {
                **snapshot.to_json(),
                "principal": ctx.principal.name,
                "filters": ctx.filters,
                "notice": ctx.notice,
                "blocked_by": ctx.refusal.check if ctx.refusal else None,
                "guardrails": [v.to_json() for v in ctx.verdicts],
                "usage": {"prompt_tokens": ctx.usage.prompt_tokens, "completion_tokens": ctx.usage.completion_tokens},
                "timings": ctx.all_timings(),
            }
        )
        if self._recent is not None and ctx.refusal is None and answer is not None:
            self._recent.add(snapshot)
