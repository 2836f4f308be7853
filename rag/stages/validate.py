"""The first stage: the request is well-formed and within the service's limits, or it is a 422 with a reason."""

from __future__ import annotations

from dataclasses import dataclass

from rag.errors import BadQuery
from rag.retrieve import validate_filters, validate_question
from rag.stages.context import RequestContext


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one request (``RAGOPS_SERVICE__MAX_QUESTION_CHARS``, ``__MAX_TOP_K``)."""

    max_question_chars: int = 2000
    max_top_k: int = 50


class ValidateStage:
    """Question length and encodability, filter keys and values, ``top_k`` range."""

    name = "validate"
    always = False

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits

    async def run(self, ctx: RequestContext) -> None:
        """Raise :class:`BadQuery` on anything the caller must fix; normalise the filters."""
        question: object = ctx.question
        if isinstance(question, str) and len(question.strip()) > self.limits.max_question_chars:
            raise BadQuery(
                f"question has {len(question.strip())} characters; the limit is {self.limits.max_question_chars}"
            )
        ctx.question = ctx.text = validate_question(question)
        ctx.filters = validate_filters(ctx.filters) or None
        if ctx.top_k is not None and ctx.top_k > self.limits.max_top_k:
            raise BadQuery(f"top_k {ctx.top_k} is above the limit of {self.limits.max_top_k}")
