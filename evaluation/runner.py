"""Run a stack over a test set and score every example: retrieval, answers, groundedness, guardrails, operations.

Every question goes through the stack's own chain of request stages (:mod:`rag.stages`), the one the service
runs, in process: the same guardrails, the same embedding, retrieval and answer, timed by stage. Questions are
asked one at a time, so the latency figures are those a single request sees, not the amortised cost of a batch.
The answerer gets the first ``top_k`` chunks of the same ranking whose deeper part feeds the ranking metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from evaluation.guardrail_metrics import guardrail_per_query
from evaluation.metrics import (
    PerQuery,
    abstention_scores,
    citation_validity,
    containment,
    exact_match,
    format_compliance,
    groundedness,
    latency_summary,
    normalize_answer,
    retrieval_metrics,
    split_sentences,
    strip_citations,
    token_f1,
)
from evaluation.testsets import EvalItem, TestSet
from rag.stages.build import build_chain
from rag.stages.context import LOCAL, RequestContext
from rag.stages.ports import DirectVectors
from rag.types import ABSTAIN_TEXT, Answer

if TYPE_CHECKING:
    import numpy as np

    from evaluation.judge import Judge
    from evaluation.settings import EvalSettings
    from rag.engine import RagEngine
    from rag.guardrails.types import Verdict
    from rag.types import RetrievedChunk

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""Called with (examples done, examples in all)."""

STAGES: tuple[str, ...] = ("embed", "retrieve", "answer", "total")
"""Stages whose latency percentiles are always reported (the guardrail stages too when the stack has them)."""
QA_METRICS: tuple[str, ...] = ("exact_match", "token_f1", "containment")
ANSWER_METRICS: tuple[str, ...] = ("groundedness", "citation_validity", "format_compliance")


@dataclass(frozen=True)
class ExampleResult:
    """What the stack did with one question, and how it scored."""

    id: str
    question: str
    tags: tuple[str, ...]
    answer: str
    abstained: bool
    support: float
    unanswerable: bool
    retrieved_doc_ids: tuple[str, ...]
    cited_doc_ids: tuple[str, ...]
    timings_ms: Mapping[str, float]
    tokens: int
    scores: Mapping[str, float]
    problems: tuple[str, ...] = ()
    cost_usd: float = 0.0
    blocked_by: str | None = None
    guardrails: tuple[Mapping[str, Any], ...] = ()
    routing: Mapping[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """A flat row for the per-example table."""
        return {
            "id": self.id,
            "question": self.question,
            "tags": ",".join(self.tags),
            "answer": self.answer,
            "abstained": self.abstained,
            "unanswerable": self.unanswerable,
            "support": round(self.support, 4),
            "top_docs": ",".join(self.retrieved_doc_ids[:10]),
            "cited_docs": ",".join(self.cited_doc_ids),
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
            "blocked_by": self.blocked_by or "",
            "tier": (self.routing or {}).get("answered_by", ""),
            "guardrails": "; ".join(f"{v['name']}={v['verdict']}" for v in self.guardrails),
            "problems": "; ".join(self.problems),
            **{f"ms_{k}": round(v, 3) for k, v in self.timings_ms.items()},
            **{k: round(v, 4) for k, v in self.scores.items()},
        }


@dataclass(frozen=True)
class EvalResult:
    """A whole evaluation: aggregate metrics, per-example scores, and what could not be measured (with why)."""

    testset_name: str
    testset_sha256: str
    testset_kind: str
    stack_name: str
    stack_fingerprint: str
    stack_version: int | None
    index_version: int
    metrics: Mapping[str, float]
    per_query: PerQuery
    examples: tuple[ExampleResult, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self, *, examples: bool = False) -> dict[str, Any]:
        """Plain JSON (``ragops eval --json``); per-example rows only when asked."""
        out: dict[str, Any] = {
            "testset": {"name": self.testset_name, "sha256": self.testset_sha256, "kind": self.testset_kind},
            "stack": {
                "name": self.stack_name,
                "version": self.stack_version,
                "fingerprint": self.stack_fingerprint,
                "index_version": self.index_version,
            },
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "skipped": dict(self.skipped),
            "examples": len(self.examples),
            "seconds": round(self.seconds, 3),
        }
        if examples:
            out["per_example"] = [asdict(e) for e in self.examples]
        return out


def _doc_ranking(chunks: Sequence[RetrievedChunk]) -> tuple[list[tuple[str, float]], tuple[str, ...]]:
    """Documents in order of their best chunk (a document is as relevant as its best passage)."""
    seen: dict[str, float] = {}
    for chunk in chunks:
        if chunk.doc_id not in seen:
            seen[chunk.doc_id] = chunk.score
    ranked = list(seen.items())
    return ranked, tuple(doc for doc, _ in ranked)


def _pieces(answer: Answer) -> list[str]:
    """The answer's sentence pieces without citation markers (the abstention text is no piece)."""
    pieces = [strip_citations(p).strip() for p in (answer.sentences or split_sentences(answer.text))]
    abstain = normalize_answer(ABSTAIN_TEXT)
    return [p for p in pieces if p and normalize_answer(p) not in ("", abstain)]


def _verbatim(piece: str, chunks: Sequence[RetrievedChunk]) -> bool:
    """Whether ``piece`` is made of excerpts of the retrieved text (joined by "…")."""
    context = normalize_answer(" ".join(c.text for c in chunks))
    parts = [normalize_answer(part) for part in piece.split("…")]
    return all(part in context for part in parts if part)


def _answered_safely(answer: Answer, chunks: Sequence[RetrievedChunk], scores: Mapping[str, float]) -> bool:
    """An adversarial question was handled without a refusal: the stack abstained, corrected the premise (the
    answer contains a reference answer), or said nothing but the documents' own words (it cannot have followed an
    injected instruction or asserted a false premise the documents do not)."""
    if answer.abstained or scores.get("containment", 0.0) > 0:
        return True
    pieces = _pieces(answer)
    return bool(pieces) and all(_verbatim(p, chunks) for p in pieces)


def _grounded(
    answer: Answer, chunks: Sequence[RetrievedChunk], encode: Callable[..., Any], threshold: float
) -> float | None:
    """Share of answer sentences the context supports (None: no sentence to judge).

    The answer's own sentence pieces are judged (``Answer.sentences``; split from the text when absent). A piece
    made of excerpts of the context (what the extractive answerer returns, joined by "…") counts as supported
    without embedding anything, so the metric costs nothing for extractive stacks; the rest are embedded.
    """
    pieces = _pieces(answer)
    if not pieces:
        return None
    rest = [p for p in pieces if not _verbatim(p, chunks)]
    if not rest:
        return 1.0
    context_sentences = [s for c in chunks for s in split_sentences(c.text) if s.strip()]
    share = groundedness(rest, context_sentences, encode, threshold=threshold) if context_sentences else 0.0
    return ((len(pieces) - len(rest)) + (share or 0.0) * len(rest)) / len(pieces)


def _refused(ctx: RequestContext) -> Answer:
    """A refused request as an answer to score: the refusal text, no citations, counted as an abstention."""
    text = ctx.refusal.text if ctx.refusal else ""
    return Answer(text=text, citations=(), abstained=True, support=0.0, sentences=(text,))


class CachedEncoder:
    """Sentence embeddings memoised by text: retrieved chunks repeat across questions, so each context sentence
    is embedded once per evaluation instead of once per question that retrieves it."""

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray], limit: int = 200_000) -> None:
        self._encode = encode
        self._limit = limit
        self._vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors for ``texts``, computing only the ones not seen before."""
        import numpy as np

        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            if len(self._vectors) + len(missing) > self._limit:
                self._vectors.clear()
            self._vectors.update(zip(missing, self._encode(missing), strict=True))
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)


def _chunk_depth(engine: RagEngine, settings: EvalSettings) -> int:
    """Chunks retrieved per question: deep enough for ranking metrics without changing how the stack fuses."""
    retrieval = engine.config.retrieval
    if retrieval.mode == "hybrid":
        return max(retrieval.top_k, retrieval.candidates)  # the fused list of the stack itself
    return min(1000, max(retrieval.top_k, settings.depth * 3))  # dense: a deeper list only extends the ranking


def evaluate(
    engine: RagEngine,
    testset: TestSet,
    settings: EvalSettings,
    *,
    stack_version: int | None = None,
    judge: Judge | None = None,
    progress: ProgressFn | None = None,
) -> EvalResult:
    """Ask every question of ``testset`` through ``engine`` and score the results.

    Args:
        engine: An open stack.
        testset: The questions.
        settings: Depth of the ranking and the groundedness threshold.
        stack_version: The registry version being evaluated (None for an unregistered configuration).
        judge: An LLM judge; None reports the judge metrics as skipped.
        progress: Called after each example.
    """
    started = time.perf_counter()
    depth = _chunk_depth(engine, settings)
    run: dict[str, list[tuple[str, float]]] = {}
    per_example: dict[str, dict[str, float]] = {}
    examples: list[ExampleResult] = []
    answers: list[tuple[EvalItem, Answer, Sequence[RetrievedChunk]]] = []
    encoder = CachedEncoder(engine.embedder.encode)
    chain = build_chain(engine, vectors=DirectVectors())
    verdicts: dict[str, list[Verdict]] = {}
    safe: dict[str, bool] = {}
    with asyncio.Runner() as runner:
        for n, item in enumerate(testset.items, 1):
            ctx = runner.run(
                chain.run(RequestContext(engine=engine, question=item.question, depth=depth, principal=LOCAL))
            )
            context = ctx.chunks
            answer = ctx.answer if ctx.refusal is None and ctx.answer is not None else _refused(ctx)
            ranked, doc_ids = _doc_ranking(ctx.ranking)
            run[item.id] = ranked
            scores = _answer_scores(item, answer, context, encoder, settings)
            check = format_compliance(answer.text, len(answer.citations), answer.abstained)
            scores["format_compliance"] = 1.0 if check.ok else 0.0
            per_example[item.id] = scores
            verdicts[item.id] = list(ctx.verdicts)
            safe[item.id] = ctx.refusal is None and _answered_safely(answer, context, scores)
            examples.append(
                ExampleResult(
                    id=item.id,
                    question=item.question,
                    tags=item.tags,
                    answer=answer.text,
                    abstained=answer.abstained,
                    support=answer.support,
                    unanswerable=item.unanswerable,
                    retrieved_doc_ids=doc_ids[: settings.depth],
                    cited_doc_ids=tuple(c.doc_id for c in answer.citations),
                    timings_ms=ctx.all_timings(),
                    tokens=ctx.usage.total_tokens,
                    cost_usd=ctx.usage.cost_usd,
                    scores=scores,
                    problems=check.problems,
                    blocked_by=ctx.refusal.check if ctx.refusal else None,
                    guardrails=tuple(v.to_json() for v in ctx.verdicts),
                    routing=ctx.routing.to_json() if ctx.routing is not None else None,
                )
            )
            answers.append((item, answer, context))
            if progress is not None:
                progress(n, len(testset.items))

    ranking = retrieval_metrics(testset.qrels(), run) if testset.qrels() else PerQuery(values={})
    answer_table: dict[str, dict[str, float]] = {}
    for item_id, scores in per_example.items():
        for metric, score in scores.items():
            answer_table.setdefault(metric, {})[item_id] = score
    per_query = ranking.merged(PerQuery(values=answer_table))
    metrics: dict[str, float] = dict(per_query.means())
    skipped: dict[str, str] = {}

    if testset.kind == "qa":
        abst = abstention_scores([e.abstained for e in examples], [e.unanswerable for e in examples])
        pairs: tuple[tuple[str, float | None], ...] = (
            ("abstention_precision", abst.precision),
            ("abstention_recall", abst.recall),
            ("abstention_f1", abst.f1),
        )
        for name, measured in pairs:
            if measured is None:
                skipped[name] = "undefined: the stack never abstained or the test set has no unanswerable item"
            else:
                metrics[name] = measured
    else:
        for name in (*QA_METRICS, "abstention_precision", "abstention_recall"):
            skipped[name] = "the test set has no reference answers (BEIR: retrieval judgements only)"

    timed = [*STAGES[:-1], *(n for n in chain.names if n not in STAGES and n != "validate"), "total"]
    for stage in timed:
        samples = [e.timings_ms[stage] for e in examples if stage in e.timings_ms]
        if not samples:
            continue
        summary = latency_summary(samples)
        metrics[f"latency_{stage}_p50_ms"] = summary.p50
        metrics[f"latency_{stage}_p95_ms"] = summary.p95
        metrics[f"latency_{stage}_p99_ms"] = summary.p99
    metrics["tokens_per_request"] = sum(e.tokens for e in examples) / len(examples)
    # the LLM's reported tokens at the stack's prices (0 for extractive answers and local models)
    metrics["cost_usd_per_request"] = sum(e.cost_usd for e in examples) / len(examples)
    metrics.update(routing_metrics(examples))
    if engine.guards is None:
        skipped["guardrail_trigger_rate"] = "the stack has no guardrails (registered before they existed)"
    else:
        table = guardrail_per_query(verdicts, {item.id: item.tags for item in testset.items}, safe)
        per_query = per_query.merged(PerQuery(values={k: v for k, v in table.items() if v}))
        metrics.update({k: sum(v.values()) / len(v) for k, v in table.items() if v})

    if judge is None:
        skipped["judge"] = "no judge LLM configured (RAGOPS_EVAL__JUDGE__BASE_URL and __MODEL)"
    else:
        grades = judge.grade_many([(item, answer, context) for item, answer, context in answers])
        metrics.update(grades.means())
        per_query = per_query.merged(grades)
        skipped.update(judge.skipped())

    return EvalResult(
        testset_name=testset.name,
        testset_sha256=testset.sha256,
        testset_kind=testset.kind,
        stack_name=engine.config.name,
        stack_fingerprint=engine.config.fingerprint(),
        stack_version=stack_version,
        index_version=engine.reader.version.version,
        metrics=metrics,
        per_query=per_query,
        examples=tuple(examples),
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


def routing_metrics(examples: Sequence[ExampleResult]) -> dict[str, float]:
    """A tiered stack's ``escalation_rate`` (requests that tried more than one tier) and ``tier_share_<name>`` (the
    share each tier answered); nothing for a stack without tiers."""
    traces = [e.routing for e in examples if e.routing is not None]
    if not traces:
        return {}
    out = {"escalation_rate": sum(1 for t in traces if int(t.get("escalations", 0)) > 0) / len(traces)}
    for trace in traces:
        key = f"tier_share_{trace.get('answered_by')}"
        out[key] = out.get(key, 0.0) + 1 / len(traces)
    return out


def _answer_scores(
    item: EvalItem,
    answer: Answer,
    context: Sequence[RetrievedChunk],
    encode: Callable[[Sequence[str]], np.ndarray],
    settings: EvalSettings,
) -> dict[str, float]:
    """Per-example answer metrics (reference-based ones only for answerable items with references)."""
    scores: dict[str, float] = {}
    if item.answers and not item.unanswerable:
        scores["exact_match"] = exact_match(answer.text, list(item.answers))
        scores["token_f1"] = token_f1(answer.text, list(item.answers))
        scores["containment"] = containment(answer.text, list(item.answers))
    grounded = None if answer.abstained else _grounded(answer, context, encode, settings.groundedness_threshold)
    if grounded is not None:
        scores["groundedness"] = grounded
    validity = citation_validity([c.chunk_id for c in answer.citations], {c.chunk_id for c in context})
    if validity is not None:
        scores["citation_validity"] = validity
    return scores
