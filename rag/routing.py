"""Tiered answering: pick the cheapest tier likely to succeed, check what it wrote, escalate when the check fails.

Why: an LLM call costs money and seconds, and most questions of a well-kept corpus are answered by the extractive
answerer (free, 2 ms) or the small local LLM. The router sees only what is known before any generation
(:class:`Features`: the question's length and kind, the retrieval similarities and their spread, the extractive
answer's support) and predicts, per tier, the chance its answer passes the output check; the first tier whose chance
reaches the stack's threshold answers. The output check (:func:`check_answer`) fails an answer that is not grounded
in the retrieved text or that abstains although the context looks answerable, and the next tier is tried. Every
decision and escalation is kept in a :class:`RoutingTrace`, which goes into the request store and the response.

The parameters (one logistic model per tier) are fitted on an evaluation set by :mod:`evaluation.router_fit` and
stored in the stack's :class:`rag.types.RoutingConfig`, so a refit is a new stack version through the gate.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag.answer import ExtractiveAnswerer
from rag.errors import AnswerError
from rag.types import ROUTER_FEATURES, Answer, RetrievedChunk, RoutingConfig, StackConfig, TierConfig

if TYPE_CHECKING:
    import numpy as np

    from rag.answer import Answerer

logger = logging.getLogger(__name__)

_OPEN_WORDS = frozenset({"why", "how", "explain", "describe", "compare", "difference", "differ", "summarize"})
"""Question words of answers that are explanations rather than facts (harder for sentence extraction)."""

_WANTS_NUMBER = re.compile(
    r"\b(how (many|much|long|old|far|big|large|fast|often|heavy|high)|what (year|percentage|percent|date|time|"
    r"price|size|temperature)|when|which year)\b",
    re.I,
)
"""Questions whose answer is a number or a date: an extractive answer without a digit has missed it."""
_WORD = re.compile(r"[a-z0-9][a-z0-9-]{3,}")
_QUESTION_WORDS = frozenset(
    [
        "what",
        "when",
        "where",
        "which",
        "whom",
        "whose",
        "does",
        "have",
        "with",
        "that",
        "this",
        "from",
        "were",
        "many",
        "much",
        "long",
        "there",
        "their",
        "about",
    ]
)
"""Words of the question's form, not its content (left out of ``question_overlap``)."""


@dataclass(frozen=True)
class Features:
    """What the router knows before generation (the order of :data:`rag.types.ROUTER_FEATURES`).

    ``number_missing``: the question asks for a number or date and the extractive answer has no digit;
    ``question_overlap``: the share of the question's content words the extractive answer repeats."""

    question_words: float
    open_question: float
    top_similarity: float
    similarity_spread: float
    extractive_support: float
    extractive_abstained: float
    number_missing: float
    question_overlap: float

    def vector(self) -> tuple[float, ...]:
        """The values in the order the coefficients follow."""
        return tuple(float(getattr(self, name)) for name in ROUTER_FEATURES)


def _similarity(chunk: RetrievedChunk) -> float:
    return chunk.similarity if chunk.similarity is not None else chunk.score


def features(question: str, chunks: Sequence[RetrievedChunk], extractive: Answer) -> Features:
    """The router's features of ``question`` over ``chunks`` with the extractive answer already computed."""
    words = question.lower().split()
    content = set(_WORD.findall(question.lower())) - _QUESTION_WORDS
    answer = extractive.text.lower()
    sims = sorted((_similarity(c) for c in chunks), reverse=True)
    top = sims[0] if sims else 0.0
    spread = top - sims[-1] if len(sims) > 1 else 0.0
    return Features(
        question_words=float(min(len(words), 60)) / 10.0,
        open_question=1.0 if any(w.strip("?,.") in _OPEN_WORDS for w in words) else 0.0,
        top_similarity=float(top),
        similarity_spread=float(spread),
        extractive_support=float(extractive.support),
        extractive_abstained=1.0 if extractive.abstained else 0.0,
        number_missing=1.0 if _WANTS_NUMBER.search(question) and not re.search(r"\d", answer) else 0.0,
        question_overlap=sum(w in answer for w in content) / len(content) if content else 0.0,
    )


def pass_probability(tier: TierConfig, feats: Features) -> float | None:
    """The tier's fitted chance that its answer passes the output check; None for a tier chosen only by escalation."""
    if tier.coef is None:
        return None
    z = tier.intercept + sum(c * x for c, x in zip(tier.coef, feats.vector(), strict=True))
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


@dataclass(frozen=True)
class Decision:
    """The router's pick: the tier's index and name, and each tier's predicted pass probability."""

    tier: int
    name: str
    probabilities: tuple[float | None, ...]


def decide(routing: RoutingConfig, feats: Features) -> Decision:
    """The first tier whose pass probability reaches the threshold, else the last (most capable) tier."""
    probabilities = tuple(pass_probability(t, feats) for t in routing.tiers)
    chosen = len(routing.tiers) - 1
    for i, p in enumerate(probabilities):
        if p is not None and p >= routing.threshold:
            chosen = i
            break
    return Decision(chosen, routing.tiers[chosen].name, probabilities)


@dataclass(frozen=True)
class Check:
    """The output check of one tier's answer: ``passed``, else ``reason`` (``ungrounded``, ``abstained_with_support``
    or ``error``) and the share of grounded sentences."""

    passed: bool
    reason: str | None = None
    grounded_share: float | None = None


def check_answer(
    routing: RoutingConfig,
    answer: Answer,
    chunks: Sequence[RetrievedChunk],
    feats: Features,
    encode: Callable[[Sequence[str]], np.ndarray],
) -> Check:
    """Fail an answer that abstains where the context looks answerable, or whose sentences the context does not
    support (a made-up answer); an abstention over unrelated context passes (that is the right answer)."""
    if answer.abstained:
        if feats.top_similarity >= routing.answerable_similarity:
            return Check(False, "abstained_with_support")
        return Check(True)
    from rag.answer import split_sentences
    from rag.grounding import sentence_support, supported

    sentences = [s for s in answer.sentences if s.strip()] or [answer.text]
    context = [s for c in chunks for block in split_sentences(c.text) for s in block]
    support = sentence_support(sentences, context, encode, routing.grounding_threshold)
    share = sum(supported(s, routing.grounding_threshold) for s in support) / max(len(support), 1)
    if share < routing.min_grounded_share:
        return Check(False, "ungrounded", round(share, 4))
    return Check(True, None, round(share, 4))


@dataclass(frozen=True)
class Attempt:
    """One tier's try: its name, the check's verdict, tokens and cost, milliseconds."""

    tier: str
    passed: bool
    reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    ms: float
    grounded_share: float | None = None


@dataclass(frozen=True)
class RoutingTrace:
    """Every routing decision and escalation of one request (stored with it and returned in the response)."""

    chosen: str
    answered_by: str
    probabilities: dict[str, float | None]
    features: dict[str, float]
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)

    @property
    def escalations(self) -> int:
        """Tiers tried after the first."""
        return max(len(self.attempts) - 1, 0)

    def to_json(self) -> dict[str, object]:
        """Plain JSON (the request store's ``routing`` column, the response's ``routing``)."""
        return {
            "chosen": self.chosen,
            "answered_by": self.answered_by,
            "escalations": self.escalations,
            "probabilities": {k: (None if v is None else round(v, 4)) for k, v in self.probabilities.items()},
            "features": {k: round(v, 4) for k, v in self.features.items()},
            "attempts": [
                {
                    "tier": a.tier,
                    "passed": a.passed,
                    "reason": a.reason,
                    "prompt_tokens": a.prompt_tokens,
                    "completion_tokens": a.completion_tokens,
                    "cost_usd": round(a.cost_usd, 8),
                    "ms": round(a.ms, 3),
                    "grounded_share": a.grounded_share,
                }
                for a in self.attempts
            ],
        }


@dataclass(frozen=True)
class Tier:
    """A built tier: its configuration and answerer (the extractive one, or an LLM without fallback: a failed call
    is an escalation, not a silent extractive answer)."""

    config: TierConfig
    answerer: Answerer

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What the tier charges for these tokens (the extractive tier is free)."""
        llm = self.config.llm
        return 0.0 if llm is None or self.config.kind != "llm" else llm.cost_usd(prompt_tokens, completion_tokens)


def build_tiers(config: StackConfig, extractive: ExtractiveAnswerer) -> tuple[Tier, ...]:
    """The stack's tiers with their answerers; LLM clients are built now (no request is sent)."""
    if config.routing is None:
        return ()
    tiers: list[Tier] = []
    for tier in config.routing.tiers:
        if tier.kind == "extractive":
            tiers.append(Tier(tier, extractive))
            continue
        from rag.llm import LlmAnswerer

        assert tier.llm is not None  # validated by TierConfig
        answerer = LlmAnswerer(config.model_copy(update={"llm": tier.llm}))
        answerer.warm_up()
        tiers.append(Tier(tier, answerer))
    return tuple(tiers)


def call_tier(tier: Tier, question: str, chunks: Sequence[RetrievedChunk]) -> Answer | AnswerError:
    """The tier's answer, or the error it failed with (a failed call escalates like a failed check)."""
    try:
        return tier.answerer.answer(question, chunks)
    except AnswerError as exc:
        logger.warning("tier failed; escalating", extra={"tier": tier.config.name, "error": str(exc)})
        return exc


@dataclass(frozen=True)
class RoutePlan:
    """What the route stage hands the answer stage: the decision, the features and the extractive answer (already
    computed for the features, so the extractive tier costs nothing more)."""

    decision: Decision
    features: Features
    extractive: Answer
