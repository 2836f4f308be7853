"""The spine of the request path: an ordered chain of stages over one :class:`RequestContext`.

Every production control is a stage (validation, guardrails, embedding, retrieval, answering, recording; later
authentication, limits and the cache), assembled once per served stack by :func:`rag.stages.build.build_chain`.
The query service and the evaluation runner run the same chain, so the deployment gate measures what users get.

A stage ends a request early by setting ``ctx.refusal``; the stages after it are skipped except those marked
``always`` (recording). Streaming: the first stage that can stream (the answer stage) produces events, and each
later stage that can wrap a stream (the output guard) sees them on the way out, so a sentence-level check runs
while tokens arrive; stages that cannot wrap run once the stream has ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from rag.stages.context import RequestContext

if TYPE_CHECKING:
    from rag.types import Answer


@dataclass(frozen=True)
class StreamEvent:
    """One piece of a streamed answer.

    ``delta``: text to append; ``notice``: something the reader should be told (an LLM fell back to the
    extractive answer); ``blocked``: a check stopped the stream (``text`` is the refusal, ``check`` its name);
    ``done``: the answer is complete (``ctx.answer`` holds it).
    """

    kind: Literal["delta", "notice", "blocked", "done"]
    text: str = ""
    check: str | None = None
    answer: Answer | None = None


def sentence_deltas(answer: Answer) -> list[StreamEvent]:
    """A whole answer as the stream shows it: one ``delta`` per sentence, joined by single spaces."""
    pieces = answer.sentences or (answer.text,)
    return [StreamEvent("delta", sentence if i == 0 else " " + sentence) for i, sentence in enumerate(pieces)]


@runtime_checkable
class Stage(Protocol):
    """One step of the request path. ``always``: runs even after an earlier stage refused the request."""

    name: str
    always: bool

    async def run(self, ctx: RequestContext) -> None:
        """Do this stage's part (may set ``ctx.refusal`` to end the request)."""
        ...


@runtime_checkable
class StreamingStage(Stage, Protocol):
    """A stage that can produce the answer as a stream (the answer stage)."""

    def stream(self, ctx: RequestContext) -> AsyncIterator[StreamEvent]:
        """Events ending with ``done`` (setting ``ctx.answer``) or ``blocked``."""
        ...


@runtime_checkable
class WrappingStage(Stage, Protocol):
    """A stage after the answer that inspects a stream as it passes (the output guard)."""

    def wrap(self, ctx: RequestContext, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
        """The events passed on (changed or held back). To stop the stream it sets ``ctx.refusal`` and returns;
        the chain then runs the stages that always run and yields the ``blocked`` event."""
        ...


class Chain:
    """Runs stages in order; see the module docstring.

    Usage example::

        ctx = RequestContext(engine=engine, question="How long is the NR-200 warranty?")
        await chain.run(ctx)                  # ctx.answer, ctx.verdicts, ctx.timings, ctx.refusal
        async for event in chain.stream(ctx):  # the same request as a stream
            ...
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.stages: tuple[Stage, ...] = tuple(stages)

    @property
    def names(self) -> tuple[str, ...]:
        """The stage names in order (what ``timings`` reports)."""
        return tuple(s.name for s in self.stages)

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    async def _run(self, ctx: RequestContext, stages: Sequence[Stage]) -> None:
        for stage in stages:
            if ctx.ended and not stage.always:
                continue
            with ctx.timed(stage.name):
                await stage.run(ctx)

    async def run(self, ctx: RequestContext) -> RequestContext:
        """Run every stage (the non-streaming path)."""
        await self._run(ctx, self.stages)
        return ctx

    async def stream(self, ctx: RequestContext) -> AsyncIterator[StreamEvent]:
        """Run the request, yielding the answer as it is produced.

        Stages before the streaming stage run first (a refusal there yields one ``blocked`` event); the answer
        streams through every wrapping stage after it; then the remaining stages run, and ``done`` (or
        ``blocked``) comes last.
        """
        at = next((i for i, s in enumerate(self.stages) if isinstance(s, StreamingStage)), None)
        if at is None:
            await self.run(ctx)
            if ctx.refusal is not None:
                yield StreamEvent("blocked", ctx.refusal.text, check=ctx.refusal.check)
            else:
                yield StreamEvent("done", answer=ctx.answer)
            return
        await self._run(ctx, self.stages[:at])
        rest = self.stages[at + 1 :]
        if ctx.cache_hit is not None and ctx.answer is not None:  # answered before the answer stage: replay it
            for delta in sentence_deltas(ctx.answer):
                yield delta
        elif ctx.refusal is None:
            source = self.stages[at]
            assert isinstance(source, StreamingStage)
            events: AsyncIterator[StreamEvent] = source.stream(ctx)
            wrapped = {s.name for s in rest if isinstance(s, WrappingStage)}
            for stage in rest:
                if isinstance(stage, WrappingStage):
                    events = stage.wrap(ctx, events)
            try:
                async for event in events:
                    if event.kind != "done":
                        yield event
            finally:
                await _close(events)
            rest = tuple(s for s in rest if s.name not in wrapped)
        await self._run(ctx, rest)
        if ctx.refusal is not None:
            yield StreamEvent("blocked", ctx.refusal.text, check=ctx.refusal.check)
        else:
            yield StreamEvent("done", answer=ctx.answer)


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    """Close an async generator early (the client went away or a check blocked): the LLM request is released."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
