"""Request and response bodies of the HTTP API (separate from the library's internal types)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from rag.errors import BadQuery
from rag.feedback import MAX_COMMENT_CHARS, Rating, normalise_rating

FilterValue = str | list[str]


class QueryRequest(BaseModel):
    """``POST /v1/query``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, description="The question, in natural language.")
    top_k: int | None = Field(
        default=None, ge=1, strict=True, description="Chunks to retrieve (default: the stack's top_k)."
    )
    filters: dict[str, FilterValue] | None = Field(
        default=None, description="Metadata filters: tenant, source or doc_id, each a value or a list of values."
    )
    stream: bool = Field(default=False, description="Server-sent events: sentences first, citations and usage last.")


class CitationOut(BaseModel):
    """One numbered source of an answer."""

    n: int
    doc_id: str
    source: str
    chunk_id: str
    position: int
    title: str
    score: float


class Usage(BaseModel):
    """Token counts (an LLM's own reported usage, else the embedder's word pieces) and the cost at the stack's
    LLM prices (zero for the extractive answerer and for unpriced models)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float = 0.0
    time_to_first_token_ms: float | None = Field(
        default=None, description="Streamed answers: milliseconds from the request to the first piece of text."
    )
    context_tokens_saved: int | None = Field(
        default=None, description="Context tokens not sent to the LLM to fit the stack's input budget."
    )
    tier: str | None = Field(default=None, description="A tiered stack: the tier whose answer is shown.")
    escalations: int = Field(default=0, description="Tiers tried after the routed one (their tokens are counted).")


class GuardrailOut(BaseModel):
    """One guardrail check's verdict on the request."""

    name: str
    stage: Literal["input", "output"]
    verdict: Literal["allow", "redact", "flag", "block"]
    reason: str
    ms: float
    score: float | None = None
    spans: list[dict[str, Any]] | None = None


class QueryResponse(BaseModel):
    """The answer with its citations, the stack that produced it, and per-stage timings in milliseconds."""

    request_id: str
    answer: str
    citations: list[CitationOut]
    abstained: bool
    support: float
    blocked: bool = Field(default=False, description="A guardrail refused the request (no retrieved text is returned).")
    blocked_by: str | None = Field(default=None, description="The check that refused it.")
    guardrails: list[GuardrailOut] = Field(default_factory=list, description="Every check's verdict.")
    cached: Literal["exact", "semantic"] | None = Field(
        default=None, description="Answered from the answer cache (no retrieval, no generation), and by which layer."
    )
    stack_version: int
    stack_name: str
    index_version: int
    usage: Usage
    timings: dict[str, float]
    notice: str | None = Field(default=None, description="E.g. that an LLM failed and the extractive answer was used.")
    degraded: list[str] = Field(
        default_factory=list,
        description="Degraded modes this request was served in (rag.stages.context.DEGRADATIONS): llm_fallback, "
        "llm_over_budget, cache_unavailable, limits_per_worker, registry_unreachable.",
    )
    routing: dict[str, Any] | None = Field(
        default=None, description="A tiered stack: the router's features, pick and every attempt (rag.routing)."
    )


class ReviewLabelIn(BaseModel):
    """``POST /v1/review/{request_id}``: a reviewer's verdict on a queued answer."""

    model_config = ConfigDict(extra="forbid")

    verdict: str = Field(description="correct, incorrect (give right_answer) or unanswerable (from the corpus).")
    right_answer: str | None = Field(default=None, description="The right answer, when the answer was incorrect.")
    relevant_chunk_ids: list[str] = Field(
        default_factory=list, max_length=50, description="The cited chunks that were relevant to the question."
    )


class ReviewLabelOut(BaseModel):
    """A recorded label."""

    verdict: str
    reviewer: str
    at: float
    right_answer: str | None
    relevant_chunk_ids: list[str]


class ReviewItemOut(BaseModel):
    """One queued answer as the reviewer sees it."""

    request_id: str
    queued_at: float
    reasons: list[str] = Field(description="thumbs_down, low_support, guardrail, sampled.")
    question: str
    answer: str
    abstained: bool
    blocked: bool
    tenant: str | None
    stack_version: int | None
    guardrails: dict[str, str] = Field(description="Each guardrail check's verdict on the request.")
    citations: list[dict[str, Any]] = Field(description="The cited chunks with their text.")
    label: ReviewLabelOut | None = None


class ReviewListOut(BaseModel):
    """``GET /v1/review``."""

    items: list[ReviewItemOut]
    counts: dict[str, int] = Field(description="Queued items per status (pending, labelled).")


class ChatMessage(BaseModel):
    """An OpenAI chat message."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions`` (OpenAI-compatible); unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(default="rag-stack")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    top_k: int | None = Field(default=None, ge=1, strict=True)
    filters: dict[str, FilterValue] | None = None


def _rating(value: object) -> Rating:
    try:
        return normalise_rating(value)
    except BadQuery as exc:  # a validation error (422) with our message as is, not prefixed "Value error, "
        raise PydanticCustomError("rating", str(exc)) from None


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a rating of one answered request."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64, description="The request_id of the answer being rated.")
    rating: Annotated[Rating, BeforeValidator(_rating)] = Field(
        description='"up" (helpful) or "down" (not helpful); 1 and -1 are accepted too.'
    )
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS, description="Optional free text.")


class FeedbackResponse(BaseModel):
    """The rating as stored; ``replaced`` says an earlier rating of the same request was overwritten."""

    request_id: str
    rating: Rating
    comment: str | None
    replaced: bool
    previous_rating: Rating | None
    revisions: int = Field(description="How often this request has been rated (1 = first rating).")
    recorded_at: float
    message: str


class SourceOut(BaseModel):
    """``GET /v1/sources/{chunk_id}``: a cited chunk's text and origin in the served index."""

    chunk_id: str
    doc_id: str
    title: str
    source: str
    position: int
    text: str
    index_version: int
    stack_version: int


class ErrorBody(BaseModel):
    """Every error: OpenAI's envelope, so OpenAI clients surface the message."""

    error: dict[str, Any]
