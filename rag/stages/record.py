"""The last stage: the request's facts are written where monitoring, feedback and review read them."""

from __future__ import annotations

from typing import Protocol

from rag.stages.context import RequestContext


class Recorder(Protocol):
    """Where a finished request goes (the service's request log; evaluation keeps its own table)."""

    def record(self, ctx: RequestContext) -> None:
        """Store the request (must be fast: it runs on the request path)."""
        ...


class RecordStage:
    """Hand the finished request to the recorder, refused requests included."""

    name = "record"
    always = True

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, ctx: RequestContext) -> None:
        """Record ``ctx``."""
        self.recorder.record(ctx)
