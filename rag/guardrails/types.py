"""What a guardrail check decides about one text, and what a chain of checks hands on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rag.types import Answer

Action = Literal["allow", "redact", "flag", "block"]
GuardStage = Literal["input", "output"]


@dataclass(frozen=True)
class Span:
    """A detected piece of the text: ``type`` (e.g. EMAIL_ADDRESS), character offsets, detector score."""

    type: str
    start: int
    end: int
    score: float | None = None


@dataclass(frozen=True)
class Verdict:
    """One check's decision on one request, in words, with its cost."""

    name: str
    stage: GuardStage
    verdict: Action
    reason: str
    ms: float
    score: float | None = None
    spans: tuple[Span, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``{name, stage, verdict, reason, ms, score?, spans?}``."""
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
            out["spans"] = [{"type": s.type, "start": s.start, "end": s.end} for s in self.spans]
        return out


@dataclass(frozen=True)
class InputResult:
    """What the input checks pass on (redacted text) and decided."""

    text: str
    verdicts: tuple[Verdict, ...]
    blocked_by: str | None = None

    @property
    def blocked(self) -> bool:
        """A check blocked the request."""
        return self.blocked_by is not None


@dataclass(frozen=True)
class OutputResult:
    """The answer after the output checks (sentences dropped, PII redacted, abstained) and their verdicts."""

    answer: Answer
    verdicts: tuple[Verdict, ...]
    blocked_by: str | None = None
