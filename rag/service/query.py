"""The service's side of the request chain: which stack answers, with which chain, and the HTTP shapes.

Each served stack gets its chain once (built on the first request after a switch, with the service's batched
vector port and a :class:`rag.stages.record.StoreRecorder` for the request store and the metrics); a request holds
the stack it started with until it ends, streams included.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import anyio

from rag.cache import AnswerCache, CacheBackend
from rag.errors import Overloaded
from rag.limits.admission import AdmissionController
from rag.limits.breaker import CircuitBreaker
from rag.limits.budget import BudgetLedger
from rag.limits.rate import RateLimiter
from rag.service.batcher import BatchedVectors
from rag.service.errors import error_kind
from rag.service.holder import Served, StackHolder
from rag.service.schemas import CitationOut, GuardrailOut, QueryResponse, Usage
from rag.stages.build import build_chain
from rag.stages.chain import Chain
from rag.stages.context import ANONYMOUS, Principal, RequestContext
from rag.stages.record import RecordSink, StoreRecorder
from rag.stages.validate import RequestLimits

if TYPE_CHECKING:
    from redis import Redis

    from rag.monitoring.metrics import ServiceMetrics
    from rag.monitoring.tracing import TraceExporter
    from rag.security.gate import Gate
    from rag.settings import RagSettings
    from rag.types import StackConfig

ABANDONED = (499, "client_disconnected")
"""How a stream the client left is recorded (nginx's 499: the client closed the request)."""


def answers_with_llm(config: StackConfig) -> bool:
    """Whether an LLM answers (some of) ``config``'s questions: then its requests mostly wait, not compute."""
    if config.answerer.kind == "llm":
        return True
    return config.routing is not None and any(tier.kind == "llm" for tier in config.routing.tiers)


class QueryService:
    """Runs questions through the champion stack's chain; every request ends up in the request store.

    Args:
        store: The request store (the record stage's sink).
        metrics: The service's Prometheus metrics (None: the store only).
    """

    def __init__(
        self,
        settings: RagSettings,
        holder: StackHolder,
        vectors: BatchedVectors,
        store: RecordSink,
        metrics: ServiceMetrics | None = None,
        *,
        gate: Gate | None = None,
        tracer: TraceExporter | None = None,
    ) -> None:
        self._holder = holder
        self._tracer = tracer
        self._gate = gate
        self._vectors = vectors
        self._store = store
        self._metrics = metrics
        self._limits = RequestLimits(
            max_question_chars=settings.service.max_question_chars, max_top_k=settings.service.max_top_k
        )
        self._chains: dict[int, tuple[Served, Chain, StoreRecorder]] = {}
        limits = settings.limits
        self._cache_settings = settings.answer_cache
        self._review = settings.review
        self._redis: Redis | None = None  # one connection pool for the caches of every served version
        self.limiter = RateLimiter(limits)
        on_soft = (lambda budget, _: metrics.budget_soft_limit(budget.name)) if metrics is not None else None
        self.budgets = BudgetLedger(settings.store.resolve_url(settings.home), limits, on_soft=on_soft)
        self._limits_settings = limits
        self.admission = AdmissionController(
            limits.max_concurrency or limits.cpu_concurrency,
            limits.max_queue,
            limits.queue_timeout_s,
            overload_wait_s=limits.overload_wait_s,
            overload_interval_s=limits.overload_interval_s,
        )
        self.index_breaker = CircuitBreaker("qdrant", limits.breaker_failures, limits.breaker_reset_s)

    def close(self) -> None:
        """Release what the service holds outside the process: the budget ledger's database connections and the
        Redis connections of the rate limits and the answer caches (a worker shutting down)."""
        self.budgets.close()
        self.limiter.close()
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def _chain_and_recorder(self, served: Served) -> tuple[Chain, StoreRecorder]:
        known = self._chains.get(id(served))
        if known is not None and known[0] is served:
            return known[1], known[2]
        recorder = StoreRecorder(
            self._store,
            self._metrics,
            stack_version=served.version,
            index_version=served.index_version,
            tracer=self._tracer,
            review=self._review,
        )
        cache = self._new_cache(served) if self._cache_settings.enabled else None
        chain = build_chain(
            served.engine,
            vectors=self._vectors,
            limits=self._limits,
            recorder=recorder,
            limiter=self.limiter,
            cache=cache,
            on_cache_lookup=self._observe_cache if self._metrics is not None else None,
            budgets=self.budgets,
            breaker=self.index_breaker,
        )
        self._chains = {k: v for k, v in self._chains.items() if not v[0].retired}
        self._chains[id(served)] = (served, chain, recorder)
        if served.arm == "champion" and self._limits_settings.max_concurrency is None:
            limits = self._limits_settings
            self.admission.resize(limits.llm_concurrency if answers_with_llm(served.config) else limits.cpu_concurrency)
        if self._metrics is not None and served.arm == "champion":
            self._metrics.set_stack(
                stack_name=served.config.name,
                stack_version=served.version,
                index_version=served.index_version,
                embedder=served.config.embedder.weights_sha256[:12],
            )
        return chain, recorder

    def _observe_cache(self, hit: bool) -> None:
        if self._metrics is not None:
            self._metrics.observe_cache(hit=hit)

    def _new_cache(self, served: Served) -> CacheBackend:
        """One cache per served stack and index version, so a promotion or a publish starts from an empty one: in
        process, or in the shared Redis under a namespace naming both versions."""
        cfg = self._cache_settings
        if cfg.url is None:
            return AnswerCache(threshold=cfg.threshold, ttl_s=cfg.ttl_s, max_entries=cfg.max_entries)
        from rag.cache_redis import RedisAnswerCache, redis_client

        if self._redis is None:
            self._redis = redis_client(cfg.url, timeout_s=cfg.timeout_s)
        metrics = self._metrics
        return RedisAnswerCache(
            self._redis,
            namespace=f"{served.config.name}:{served.version}:{served.index_version}",
            threshold=cfg.threshold,
            ttl_s=cfg.ttl_s,
            max_entries=cfg.max_entries,
            retry_s=cfg.retry_s,
            on_error=metrics.observe_cache_backend_error if metrics is not None else None,
        )

    def chain_for(self, served: Served) -> Chain:
        """The chain of ``served`` (built once per served stack and index version)."""
        return self._chain_and_recorder(served)[0]

    @contextmanager
    def _acquire(self, route: str, identity: str) -> Iterator[Served]:
        """The stack serving ``identity`` (its experiment arm's, if one runs); a request refused for want of one is
        counted in the metrics (it has no record)."""
        with ExitStack() as stack:
            try:
                served = stack.enter_context(self._holder.acquire(identity))
            except Exception as exc:
                self.count_unserved(route, exc)
                raise
            yield served

    @asynccontextmanager
    async def _admitted(self, route: str) -> AsyncIterator[float]:
        """An admission slot for the request's whole life (yields the milliseconds waited for it); a request shed
        past capacity is counted (no record)."""
        admitted = False
        started = time.perf_counter()
        try:
            async with self.admission.slot():
                admitted = True
                yield round((time.perf_counter() - started) * 1000, 3)
        except Overloaded as exc:
            if not admitted:  # shed at the door; an error inside the request is the recorder's to count
                self.count_unserved(route, exc)
            raise

    def count_unserved(self, route: str, exc: Exception) -> None:
        """Count a request that ends before it has a record (no stack to serve it, or shed past capacity)."""
        if self._metrics is not None:
            status, kind = error_kind(exc)
            self._metrics.observe_unserved(route, status=status, kind=kind)

    @asynccontextmanager
    async def request(
        self,
        question: object,
        *,
        filters: object,
        top_k: int | None,
        principal: Principal = ANONYMOUS,
        route: str = "/v1/query",
        auth_ms: float | None = None,
    ) -> AsyncIterator[tuple[Served, Chain, RequestContext]]:
        """The stack (the caller's experiment arm's when an A/B experiment runs: :mod:`rag.experiment`), its chain
        and a fresh context for one question; the stack and an admission slot are held
        until the block ends (a stream's whole life). Past capacity, :class:`rag.errors.Overloaded` is raised here,
        before any work or response.

        ``principal`` is who the request authenticated as (retrieval bounds what it may see by it); ``auth_ms`` the
        credential check's time, reported as the ``authenticate`` timing. A request whose chain did not reach the
        record stage (an error, or a stream the client left) is recorded here on the way out, with the error's
        status and kind; a request that completes is audited when ``RAGOPS_SECURITY__AUDIT_QUERIES`` is on.
        """
        async with self._admitted(route) as waited_ms:
            with self._acquire(route, principal.identity) as served:
                chain, recorder = self._chain_and_recorder(served)
                # question and filters come as the caller sent them: the validate stage checks and normalises them
                ctx = RequestContext(
                    engine=served.engine,
                    question=question,  # type: ignore[arg-type]
                    filters=filters,  # type: ignore[arg-type]
                    top_k=top_k,
                    principal=principal,
                    route=route,
                )
                if auth_ms is not None:
                    ctx.timings["authenticate"] = auth_ms
                ctx.timings["admission"] = waited_ms  # queued for a slot (0 with one free)
                if not self._holder.status.registry_ok and self._holder.status.registry_error:
                    ctx.degrade("registry_unreachable")
                status, error = ABANDONED
                try:
                    yield served, chain, ctx
                except Exception as exc:
                    status, error = error_kind(exc)
                    raise
                finally:
                    if "record" not in ctx.timings:  # the record stage did not run
                        recorder.record_unfinished(ctx, status=status, error=error)
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
        route: str = "/v1/query",
        auth_ms: float | None = None,
    ) -> tuple[Served, RequestContext]:
        """Run the whole chain for one question."""
        async with self.request(
            question, filters=filters, top_k=top_k, principal=principal, route=route, auth_ms=auth_ms
        ) as (
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
        context_tokens_saved=ctx.context_tokens_saved,
        tier=ctx.routing.answered_by if ctx.routing else None,
        escalations=ctx.routing.escalations if ctx.routing else 0,
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
        cached=ctx.cache_hit,  # type: ignore[arg-type]
        stack_version=served.version,
        stack_name=served.config.name,
        index_version=served.index_version,
        usage=usage(ctx),
        timings=ctx.all_timings(),
        notice=ctx.notice,
        degraded=list(ctx.degraded),
        routing=ctx.routing.to_json() if ctx.routing else None,
    )
