"""Request and response bodies of the HTTP API (separate from the library's internal types)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    """Token counts in the embedder's word pieces, and the cost (zero for the extractive answerer)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float = 0.0


class QueryResponse(BaseModel):
    """The answer with its citations, the stack that produced it, and per-stage timings in milliseconds."""

    request_id: str
    answer: str
    citations: list[CitationOut]
    abstained: bool
    support: float
    stack_version: int
    stack_name: str
    index_version: int
    usage: Usage
    timings: dict[str, float]
    notice: str | None = Field(default=None, description="E.g. that an LLM failed and the extractive answer was used.")


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


class ErrorBody(BaseModel):
    """Every error: OpenAI's envelope, so OpenAI clients surface the message."""

    error: dict[str, Any]
