"""Harmful or abusive content in answers, by rules: no well-kept offline toxicity classifier installs from PyPI here
(Detoxify and the like download weights at run time), so the output safety check matches a curated list of
violent, self-harm, weapons, hate and abuse phrasings in English and German. The optional moderation endpoint
(:mod:`rag.guardrails.moderation`) adds a model where one is configured.
"""

from __future__ import annotations

import re

_WEAPONS = (
    r"\b(?:how\s+to\s+(?:make|build)|instructions\s+for)\s+(?:a\s+)?"
    r"(?:bomb|explosive|pipe\s*bomb|nerve\s+agent|bioweapon)"
)
_SELF_HARM = (
    r"\b(?:kill\s+(?:yourself|urself)|you\s+should\s+die|best\s+way\s+to\s+(?:commit\s+suicide|kill\s+myself)|"
    r"bring\s+dich\s+um)\b"
)
_VIOLENCE = r"\b(?:i\s+will|we\s+will|going\s+to)\s+(?:kill|murder|hurt|stab|shoot)\s+(?:you|them|him|her)\b"
_ABUSE = (
    r"\b(?:you\s+(?:are|'re)\s+(?:an?\s+)?(?:idiot|moron|stupid|worthless|pathetic)|shut\s+up|fuck\s+you|"
    r"du\s+(?:idiot|vollidiot|arschloch))\b"
)
_HATE = r"\b(?:all\s+\w+\s+(?:people\s+)?(?:are|should\s+be)\s+(?:vermin|subhuman|exterminated)|heil\s+hitler)\b"

SAFETY_RULES: tuple[tuple[str, str], ...] = (
    ("weapons", _WEAPONS),
    ("self_harm", _SELF_HARM),
    ("violence", _VIOLENCE),
    ("abuse", _ABUSE),
    ("hate", _HATE),
)


class SafetyRules:
    """The compiled safety rules."""

    def __init__(self) -> None:
        self._rules = tuple((name, re.compile(p, re.IGNORECASE)) for name, p in SAFETY_RULES)

    def scan(self, text: str) -> list[tuple[str, int, int]]:
        """``(rule, start, end)`` of each rule that matched."""
        out: list[tuple[str, int, int]] = []
        for name, pattern in self._rules:
            match = pattern.search(text)
            if match:
                out.append((name, match.start(), match.end()))
        return out
