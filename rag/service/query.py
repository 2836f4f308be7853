"""The service's side of the request chain: which stack answers, with which chain, and the HTTP shapes.

Each served stack gets its chain once (built on the first request after a switch, with the service's batched
vector port and recorder); a request holds the stack it started with until it ends, streams included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from rag.service.batcher import BatchedVectors
from rag.service.holder import Served, StackHolder
from rag.service.recent import RecentRequests
from rag.service.recording import RequestLog, ServiceRecorder
from rag.service.schemas import CitationOut, GuardrailOut, QueryResponse, Usage
from rag.stages.build import build_chain
from rag.stages.chain import Chain
from rag.stages.context import ANONYMOUS, Principal, RequestContext
from rag.stages.validate import RequestLimits

if TYPE_CHECKING:
    from pipelines.settings import Settings
    from rag.security.gate import Gate


class QueryService:
    """Runs questions through the champion stack's chain."""

    def __init__(
        self,
        settings: Settings,
        holder: StackHolder,
        vectors: BatchedVectors,
        log: RequestLog,
        recent: RecentRequests | None = None,
        *,
        gate: Gate | None = None,
    ) -> None:
        self._holder = holder
        self._gate = gate
        self._vectors = vectors
        self._log = log
        self._recent = recent
        self._limits = RequestLimits(
            max_question_chars=settings.service.max_question_chars, max_top_k=settings.service.max_top_k
        )
        self._chains: dict[int, tuple[Served, Chain]] = {}

    def chain_for(self, served: Served) -> Chain:
        """The chain of ``served`` (built once per served stack and index version)."""
        known = self._chains.get(id(served))
        if known is not None and known[0] is served:
            return known[1]
        recorder = ServiceRecorder(
            self._log, self._recent, stack_version=served.version, index_version=served.index_version
        )
        chain = build_chain(served.engine, vectors=self._vectors, limits=self._limits, recorder=recorder)
        self._chains = {k: v for k, v in self._chains.items() if not v[0].retired}
        self._chains[id(served)] = (served, chain)
        return chain

    @asynccontextmanager
    async def request(
        self,
        question: object,
        *,
        filters: object,
        top_k: int | None,
        principal: Principal = ANONYMOUS,
        auth_ms: float | None = None,
    ) -> AsyncIterator[tuple[Served, Chain, RequestContext]]:
        """The stack, its chain and a fresh context for one question; the stack is held until the block ends.

        ``principal`` is who the request authenticated as (retrieval bounds what it may see by it); ``auth_ms`` the
        credential check's time, reported as the ``authenticate`` timing. A request that completes is audited when
        ``RAGOPS_SECURITY__AUDIT_QUERIES`` is on.
        """
        with self._holder.acquire() as served:
            # question and filters come as the caller sent them: the validate stage checks and normalises them
            ctx = RequestContext(
                engine=served.engine,
                question=question,  # type: ignore[arg-type]
                filters=filters,  # type: ignore[arg-type]
                top_k=top_k,
                principal=principal,
            )
            if auth_ms is not None:
                ctx.timings["authenticate"] = auth_ms
            yield served, self.chain_for(served), ctx
        if self._gate is not None and self._gate.audit_queries:
            await anyio.to_thread.run_sync(self._audit, ctx)

    def _audit(self, ctx: RequestContext) -> None:
        assert self._gate is not None  # checked by the caller
        cited = sorted({c.doc_id for c in ctx.answer.citations}) if ctx.answer and ctx.refusal is None else []
        self._gate.record(
            "query",
            actor=ctx.principal.name,
            outcome="blocked" if ctx.refusal is not None else "ok",
            target=ctx.request_id,
            detail={"tenant": ctx.principal.tenant, "cited_doc_ids": cited},
        )

    async def answer(
        self,
        question: object,
        *,
        filters: object,
        top_k: int | None,
        principal: Principal = ANONYMOUS,
        auth_ms: float | None = None,
    ) -> tuple[Served, RequestContext]:
        """Run the whole chain for one question."""
        async with self.request(question, filters=filters, top_k=top_k, principal=principal, auth_ms=auth_ms) as (
            served,
            chain,
            ctx,
        ):
            await chain.run(ctx)
            return served, ctx


def citations(ctx: RequestContext) -> list[CitationOut]:
    """The answer's numbered sources (none for a refused request)."""
    if ctx.answer is None or ctx.refusal is not None:
        return []
    return [
        CitationOut(
            n=c.n,
            doc_id=c.doc_id,
            source=c.source,
            chunk_id=c.chunk_id,
            position=c.position,
            title=c.title,
            score=round(c.score, 6),
        )
        for c in ctx.answer.citations
    ]


def usage(ctx: RequestContext) -> Usage:
    """The HTTP shape of the request's usage."""
    u = ctx.usage
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        cost_usd=u.cost_usd,
        time_to_first_token_ms=ctx.first_token_ms,
    )


def guardrails(ctx: RequestContext) -> list[GuardrailOut]:
    """Every check's verdict on the request."""
    return [GuardrailOut.model_validate(v.to_json()) for v in ctx.verdicts]


def query_response(served: Served, ctx: RequestContext) -> QueryResponse:
    """``POST /v1/query``'s body for a finished request (answered or refused)."""
    answer = ctx.answer
    refused = ctx.refusal is not None
    return QueryResponse(
        request_id=ctx.request_id,
        answer=ctx.refusal.text if ctx.refusal else (answer.text if answer else ""),
        citations=citations(ctx),
        abstained=bool(answer and answer.abstained) and not refused,
        support=0.0 if refused or answer is None else round(answer.support, 6),
        blocked=refused,
        blocked_by=ctx.refusal.check if ctx.refusal else None,
        guardrails=guardrails(ctx),
        stack_version=served.version,
        stack_name=served.config.name,
        index_version=served.index_version,
        usage=usage(ctx),
        timings=ctx.all_timings(),
        notice=ctx.notice,
    )
