"""The human review queue: which answers a person should look at, and what the person says about them.

Users' thumbs and the guardrails say *that* something may be wrong; only a reviewer says *what* is right. Answers
enter the queue by four rules (:func:`queue_reasons`): rated down by the user (``thumbs_down``), answered with low
support from the retrieved text (``low_support``, abstentions included: the reviewer says whether the corpus had
the answer), touched by a guardrail (``guardrail``: flagged, redacted or blocked), or drawn at random
(``sampled``, a share of all answers, so the queue is not only the failures). A reviewer (operator role) labels an
item: the answer was ``correct``; ``incorrect``, with the right answer; or the question is ``unanswerable`` from the
corpus; and which of the cited chunks were relevant. Labels go back to MLflow as expectations on the request's
trace, and become a versioned test set and training pairs (:mod:`evaluation.review`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from rag.errors import BadQuery

Reason = Literal["thumbs_down", "low_support", "guardrail", "sampled"]
REASONS: tuple[Reason, ...] = ("thumbs_down", "low_support", "guardrail", "sampled")
ReviewVerdict = Literal["correct", "incorrect", "unanswerable"]
VERDICTS: tuple[ReviewVerdict, ...] = ("correct", "incorrect", "unanswerable")
MAX_ANSWER_CHARS = 4_000


class ReviewSettings(BaseModel):
    """Which answers enter the review queue (``RAGOPS_REVIEW__*``)."""

    enabled: bool = Field(default=True, description="Queue answers for human review by the rules below.")
    sample_rate: float = Field(
        default=0.02, ge=0.0, le=1.0, description="Share of all answers queued at random (a baseline of the good)."
    )
    low_support: float = Field(
        default=0.35,
        ge=0.0,
        le=1.0,
        description="Answers whose support (share of the answer found in the cited text) is below this are queued.",
    )
    guardrails: bool = Field(default=True, description="Queue requests a guardrail flagged, redacted or blocked.")
    thumbs_down: bool = Field(default=True, description="Queue answers their user rated down.")


def queue_reasons(
    settings: ReviewSettings,
    *,
    answered: bool,
    support: float | None,
    guardrail_triggered: bool,
    draw: float,
) -> tuple[Reason, ...]:
    """Why a finished request enters the queue (empty: it does not). ``draw`` is uniform in [0, 1) (the sampling
    rule's coin). Thumbs-down is added later, when the rating arrives."""
    if not settings.enabled:
        return ()
    reasons: list[Reason] = []
    if answered and support is not None and support < settings.low_support:
        reasons.append("low_support")
    if settings.guardrails and guardrail_triggered:
        reasons.append("guardrail")
    if answered and draw < settings.sample_rate:
        reasons.append("sampled")
    return tuple(reasons)


@dataclass(frozen=True)
class ReviewLabel:
    """What the reviewer said about one answer."""

    verdict: ReviewVerdict
    reviewer: str
    at: float
    right_answer: str | None = None
    relevant_chunk_ids: tuple[str, ...] = ()

    @classmethod
    def checked(
        cls,
        *,
        verdict: object,
        reviewer: str,
        at: float,
        right_answer: object = None,
        relevant_chunk_ids: Sequence[object] = (),
        cited: Sequence[str] = (),
    ) -> ReviewLabel:
        """A label from a reviewer's input, checked against the answer's cited chunks.

        Raises:
            BadQuery: An unknown verdict, an incorrect answer without the right one, an over-long answer, or a
                chunk id the answer did not cite.
        """
        if verdict not in VERDICTS:
            raise BadQuery(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        text = right_answer.strip() if isinstance(right_answer, str) else None
        if right_answer is not None and not isinstance(right_answer, str):
            raise BadQuery("right_answer must be text")
        if verdict == "incorrect" and not text:
            raise BadQuery("an incorrect answer needs the right answer (right_answer)")
        if text and len(text) > MAX_ANSWER_CHARS:
            raise BadQuery(f"right_answer is longer than {MAX_ANSWER_CHARS} characters")
        chunks = tuple(str(c) for c in relevant_chunk_ids)
        unknown = sorted(set(chunks) - set(cited))
        if unknown:
            raise BadQuery(f"relevant chunks must be among the answer's citations; not cited: {', '.join(unknown)}")
        if verdict == "unanswerable" and chunks:
            raise BadQuery("an unanswerable question has no relevant chunks")
        return cls(
            verdict=verdict,
            reviewer=reviewer,
            at=at,
            right_answer=text or None,
            relevant_chunk_ids=tuple(dict.fromkeys(chunks)),
        )


@dataclass(frozen=True)
class ReviewItem:
    """One queued answer: the request as answered, why it is queued, and its label once reviewed."""

    request_id: str
    queued_at: float
    reasons: tuple[Reason, ...]
    question: str
    answer: str
    abstained: bool
    blocked: bool
    tenant: str | None
    stack_version: int | None
    verdicts: dict[str, str]
    citations: tuple[dict[str, object], ...]
    label: ReviewLabel | None = None

    @property
    def cited_chunk_ids(self) -> tuple[str, ...]:
        """The chunk ids the answer cited."""
        return tuple(str(c["chunk_id"]) for c in self.citations)

    def doc_of(self, chunk_id: str) -> str | None:
        """The document a cited chunk belongs to."""
        for c in self.citations:
            if c["chunk_id"] == chunk_id:
                return str(c["doc_id"])
        return None
