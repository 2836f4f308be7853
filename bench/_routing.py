"""The routing, abstention, budget and context-fitting part of ``bench/llm.py`` on demo_qa.

1. Builds the demo corpus and index in a scratch home.
2. Tiers, cheapest first: extractive (real), the local small LLM (real, only with ``--small-llm-url``: at ~10
   tokens/s on a busy core it is too slow for 351 questions here), and the top tier: :class:`SimulatedTopTier`
   (a SIMULATION: loopback server answering from the references, priced like a hosted large model).
3. Evaluates each tier alone through the evaluation chain (:func:`evaluation.runner.evaluate`), fits the router on
   the even-numbered questions (:mod:`evaluation.router_fit`), then evaluates the routed stack on all questions
   and reports the held-out (odd) half's simulated figures too.
4. Budgets: the routed run's per-request costs replayed through a :class:`rag.limits.budget.BudgetLedger` on the
   home's request-store database with a daily budget of a tenth of their total; counts requests served after the
   budget was used up (the target is 0).
5. Context fitting: retrieved top-5 of every answerable question fitted to ``--fit-budget`` tokens; the share of
   context tokens saved and whether the reference stays in the context where it was.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench._common import REPO

logger = logging.getLogger("bench.llm.routing")

TOP_INPUT_USD_PER_MTOK = 2.5
TOP_OUTPUT_USD_PER_MTOK = 10.0


def _contains(text: str, references: tuple[str, ...]) -> bool:
    from evaluation.metrics import containment

    return containment(text, list(references)) >= 1.0


def run_routing(
    *, home: Path | None, limit: int | None, small_llm_url: str | None, small_llm_model: str | None, fit_budget: int
) -> dict[str, Any]:
    """Measure and return the routing figures (see the module docstring)."""
    from bench._sim_llm import SimulatedTopTier
    from evaluation.router_fit import fit, rows_from, simulate, single_tier, top_tier
    from evaluation.runner import EvalResult, evaluate
    from evaluation.settings import EvalSettings
    from evaluation.testsets import TestSet, load_qa
    from flows.settings import Settings
    from pipelines.demo import build_demo_corpus
    from pipelines.env import apply_offline_env
    from pipelines.index import VectorIndex
    from pipelines.ingest import run_ingest
    from rag.engine import RagEngine
    from rag.types import RoutingConfig, StackConfig, TierConfig

    root = home or Path(tempfile.mkdtemp(prefix="bench-routing-"))
    settings = Settings(home=root / "home")
    apply_offline_env(settings)
    settings.ensure_dirs()
    corpus = root / "corpus"
    build_demo_corpus(corpus, overwrite=True)
    run_ingest(settings, corpus)
    index = VectorIndex(settings).current()
    assert index is not None
    testset = load_qa(REPO / "evaluation" / "testsets" / "demo_qa.jsonl")
    if limit:
        testset = TestSet(testset.name, testset.kind, testset.items[:limit], testset.source)
    references = {i.question: i.answers[0] for i in testset.items if i.answers and not i.unanswerable}
    eval_settings = EvalSettings()

    with SimulatedTopTier(references) as top:
        tiers = [TierConfig(name="extractive")]
        if small_llm_url and small_llm_model:
            small = {"base_url": small_llm_url, "model": small_llm_model, "timeout_s": 120, "max_tokens": 96}
            tiers.append(TierConfig(name="small", kind="llm", llm=small))
        large = {
            "base_url": top.base_url,
            "model": top.model,
            "timeout_s": 30,
            "input_usd_per_mtok": TOP_INPUT_USD_PER_MTOK,
            "output_usd_per_mtok": TOP_OUTPUT_USD_PER_MTOK,
        }
        tiers.append(TierConfig(name="top", kind="llm", llm=large))
        base = StackConfig.for_index(index, name="bench-routed", routing=RoutingConfig(tiers=tuple(tiers)))

        def run(config: StackConfig) -> EvalResult:
            engine = RagEngine.open(settings, config)
            try:
                logger.info("evaluating %s on %d questions", config.name, len(testset.items))
                return evaluate(engine, testset, eval_settings)
            finally:
                engine.close()

        per_tier = [run(single_tier(base, t.name)) for t in tiers]
        rows = rows_from(per_tier)
        train = [r for n, r in enumerate(rows) if n % 2 == 0]
        held_out = [r for n, r in enumerate(rows) if n % 2 == 1]
        assert base.routing is not None
        fitted = fit(
            base.routing,
            train,
            tolerance=eval_settings.tolerance,
            fitted_on=f"{testset.name}@{testset.sha256[:12]} even items; success = containment or right abstention",
        )
        routed_config = base.model_copy(update={"routing": fitted})
        routed = run(routed_config)
        top_calls = top.calls

    top_result = per_tier[-1]

    def cost(result: EvalResult) -> float:
        return sum(e.cost_usd for e in result.examples)

    def quality(result: EvalResult) -> dict[str, float]:
        keys = ("containment", "token_f1", "groundedness", "abstention_f1", "abstention_recall")
        return {k: round(result.metrics[k], 4) for k in keys if k in result.metrics}

    unanswerable = [e for e in routed.examples if e.unanswerable]
    answerable = [e for e in routed.examples if not e.unanswerable]
    sim_routed, sim_top = simulate(fitted, held_out), top_tier(held_out)
    out: dict[str, Any] = {
        "questions": len(testset.items),
        "top_tier": "SIMULATION: loopback OpenAI-compatible server answering from demo_qa references "
        f"(${TOP_INPUT_USD_PER_MTOK}/M in, ${TOP_OUTPUT_USD_PER_MTOK}/M out, ~{top.ttft_s}s + 10 ms/token)",
        "tiers": [t.name for t in tiers],
        "router": fitted.model_dump(mode="json"),
        "per_tier": {
            t.name: {"cost_usd": round(cost(r), 6), **quality(r)} for t, r in zip(tiers, per_tier, strict=True)
        },
        "routed": {"cost_usd": round(cost(routed), 6), **quality(routed)},
        "routed_cost_share": round(cost(routed) / cost(top_result), 4) if cost(top_result) else None,
        "routed_quality_delta": round(routed.metrics["containment"] - top_result.metrics["containment"], 4),
        "routed_quality_delta_token_f1": round(routed.metrics["token_f1"] - top_result.metrics["token_f1"], 4),
        "gate_tolerance": eval_settings.tolerance,
        "escalation_rate": round(routed.metrics.get("escalation_rate", 0.0), 4),
        "escalation_reasons": _reasons(routed),
        "tier_shares": {k: round(v, 4) for k, v in routed.metrics.items() if k.startswith("tier_share_")},
        "top_tier_calls": top_calls,
        "abstention_recall_unanswerable": round(sum(e.abstained for e in unanswerable) / len(unanswerable), 4)
        if unanswerable
        else None,
        "false_abstention_rate": round(sum(e.abstained for e in answerable) / len(answerable), 4),
        "held_out_simulation": {
            "routed_quality": round(sim_routed.quality, 4),
            "top_quality": round(sim_top.quality, 4),
            "routed_cost_share": round(sim_routed.cost_usd / sim_top.cost_usd, 4) if sim_top.cost_usd else None,
            "escalation_rate": round(sim_routed.escalation_rate, 4),
        },
    }
    out.update(_budget_overrun(settings, routed))
    out.update(_context_fit(settings, base, testset, fit_budget))
    return out


def _reasons(result: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for example in result.examples:
        for attempt in (example.routing or {}).get("attempts", [])[:-1]:
            key = f"{attempt['tier']}:{attempt['reason']}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _budget_overrun(settings: Any, routed: Any) -> dict[str, Any]:
    """Replay the routed run's costs through a ledger on the real database with a budget of a tenth of them."""
    from rag.errors import BudgetExceeded
    from rag.limits.budget import BudgetLedger
    from rag.limits.settings import LimitsSettings

    total = sum(e.cost_usd for e in routed.examples)
    if total <= 0:
        return {"budget_overrun_requests": None}
    ledger = BudgetLedger(
        settings.store.resolve_url(settings.home), LimitsSettings(key_daily_usd=total / 10), on_soft=None
    )
    served = refused = overrun = 0
    key = f"bench-{uuid.uuid4().hex[:8]}"  # a fresh key: the home's database keeps earlier runs' spend
    try:
        for example in routed.examples:
            try:
                ledger.check(api_key=key, tenant=None)
            except BudgetExceeded:
                refused += 1
                continue
            if ledger.spend("key", key, "daily").cost_usd >= total / 10:
                overrun += 1  # served although the budget was already used up
            served += 1
            ledger.charge(api_key=key, tenant=None, tokens=example.tokens, cost_usd=example.cost_usd)
    finally:
        ledger.close()
    return {"budget_overrun_requests": overrun, "budget_served": served, "budget_refused": refused}


def _context_fit(settings: Any, config: Any, testset: Any, budget: int) -> dict[str, Any]:
    """Share of context tokens fitting saves on the answerable questions' top-5, and reference containment kept."""
    from rag.context_fit import fit_context
    from rag.engine import RagEngine

    engine = RagEngine.open(settings, config.model_copy(update={"routing": None}))
    before = after = held = kept = 0
    try:
        for item in testset.items:
            if item.unanswerable or not item.answers:
                continue
            chunks = engine.retrieve(item.question)[: config.retrieval.top_k]
            fitted = fit_context(item.question, chunks, budget=budget, count_tokens=engine.embedder.count_tokens)
            before, after = before + fitted.tokens_before, after + fitted.tokens_after
            if _contains(" ".join(c.text for c in chunks), item.answers):
                held += 1
                kept += _contains(" ".join(c.text for c in fitted.chunks), item.answers)
    finally:
        engine.close()
    return {
        "context_fit_budget_tokens": budget,
        "context_tokens_saved_share": round(1 - after / before, 4) if before else None,
        "context_answer_containment_kept": round(kept / held, 4) if held else None,
    }
