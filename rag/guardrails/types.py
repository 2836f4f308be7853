"""The nouns of the guardrails: a check's verdict, the spans it detected, and what the input and output chains return.

Every check reports a :class:`Verdict` whatever its action (``allow`` still carries the spans and score it saw), so a
team can measure the guardrails on its own data and a stack in ``flag`` mode shows what ``enforce`` would have done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rag.types import Answer

Action = Literal["allow", "redact", "flag", "block"]
GuardStage = Literal["input", "output"]

REFUSAL_TEXT = "I can't help with that request."
"""The plain refusal a blocked request answers with (never any retrieved text)."""


@dataclass(frozen=True)
class Span:
    """A detected piece of the checked text: ``[start, end)`` character offsets into the text the caller passed."""

    type: str
    start: int
    end: int
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        """``{type, start, end}`` plus ``score`` when known."""
        out: dict[str, Any] = {"type": self.type, "start": self.start, "end": self.end}
        if self.score is not None:
            out["score"] = round(self.score, 4)
        return out


@dataclass(frozen=True)
class Verdict:
    """One check's outcome: its action, the reason in words, its milliseconds, and what it detected."""

    name: str
    stage: GuardStage
    verdict: Action
    reason: str
    ms: float
    score: float | None = None
    spans: tuple[Span, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``{name, stage, verdict, reason, ms}`` plus ``score`` and ``spans`` when the check produced them."""
        out: dict[str, Any] = {
            "name": self.name,
            "stage": self.stage,
            "verdict": self.verdict,
            "reason": self.reason,
            "ms": round(self.ms, 3),
        }
        if self.score is not None:
            out["score"] = round(self.score, 4)
        if self.spans:
            out["spans"] = [span.to_json() for span in self.spans]
        return out


@dataclass(frozen=True)
class PreparedInput:
    """Phase one of the input chain (normalisation and PII), run before the question is embedded.

    ``text`` is what everything downstream sees (retrieval, the LLM, logs, feedback): the normalised question with
    redacted PII replaced by ``<TYPE>`` placeholders. Embed ``text`` once and hand the vector to
    :meth:`rag.guardrails.chain.InputGuard.check`. ``original`` is the caller's text (PII spans index into it);
    ``decoded`` are plain-text readings of obfuscated parts (base64, hex, rot13) that the detectors also scan.
    """

    original: str
    normalised: str
    text: str
    decoded: tuple[str, ...]
    verdicts: tuple[Verdict, ...]
    blocked_by: str | None

    @property
    def blocked(self) -> bool:
        """True when a phase-one check (PII with action ``block``) refused the request."""
        return self.blocked_by is not None


@dataclass(frozen=True)
class InputResult:
    """What the input chain passes on and every check's verdict."""

    text: str
    verdicts: tuple[Verdict, ...]
    blocked_by: str | None

    @property
    def blocked(self) -> bool:
        """True when a check in ``enforce`` mode blocked the request."""
        return self.blocked_by is not None

    def to_json(self) -> dict[str, Any]:
        """``{blocked, text, checks}``: the ``ragops guardrails check`` line."""
        return {"blocked": self.blocked, "text": self.text, "checks": [v.to_json() for v in self.verdicts]}


@dataclass(frozen=True)
class OutputResult:
    """The answer after the output checks (sentences dropped, PII redacted, or abstained) and their verdicts."""

    answer: Answer
    verdicts: tuple[Verdict, ...]
    blocked_by: str | None

    @property
    def blocked(self) -> bool:
        """True when an output check blocked the answer (the answer is then the refusal)."""
        return self.blocked_by is not None


@dataclass(frozen=True)
class StreamStep:
    """What a streaming guard releases after a delta: checked text, the verdicts so far, and whether it stopped."""

    release: str
    verdicts: tuple[Verdict, ...]
    blocked_by: str | None
