"""Fast phrase and structure rules for prompt injection and jailbreaks, in English and German.

The first layer of the injection check: microseconds per question, no model, and they read every decoded reading of
the text, so base64, rot13, leetspeak and spaced-out letters are caught too. Each rule has a name that shows up in
the verdict's reason. They are deliberately about the *shape* of an attack (override an earlier instruction, reveal
the prompt, assume a new persona, fake a system/turn delimiter), not about topics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PRIOR_EN = (
    r"(?:all|any|every|the|your|my|these|those|previous|prior|above|preceding|earlier|former|foregoing|initial|"
    r"original|system)"
)
_ORDERS_EN = (
    r"(?:instructions?|rules?|prompts?|directions?|guidelines?|orders?|tasks?|assignments?|commands?|context|"
    r"information|documents?|constraints?|polic(?:y|ies)|restrictions?|programming|training|everything)"
)
_PRIOR_DE = (
    r"(?:alle[ns]?|die|deine|ihre|vorherigen?|bisherigen?|obigen?|vorangegangenen?|vorigen?|früheren?|ursprünglichen?)"
)
_ORDERS_DE = r"(?:anweisungen|aufgaben|instruktionen|befehle|informationen|regeln|vorgaben|dokumente|alles)"

RULES: tuple[tuple[str, str], ...] = (
    (
        "override_en",
        rf"\b(?:ignore|disregard|forget|skip|override|bypass|drop|abandon|neglect|leave)\b(?:\W+\w+){{0,4}}?\W+"
        rf"{_PRIOR_EN}\b(?:\W+\w+){{0,3}}?\W+{_ORDERS_EN}\b",
    ),
    ("forget_everything_en", r"\b(?:forget|ignore|disregard)\s+(?:about\s+)?(?:everything|all(?:\s+that)?|that)\b"),
    ("ignore_above_en", r"\b(?:ignore|disregard|forget)\s+(?:the\s+)?(?:above|previous|prior|before)\b"),
    (
        "reveal_prompt_en",
        r"\b(?:reveal|print|show|output|repeat|display|tell|give|leak|dump|write|spell)\b(?:\W+\w+){0,5}?\W+"
        r"(?:system\s+prompt|(?:your|the|initial|hidden|secret|original)\s+(?:prompt|instructions)|prompt\s+texts?|"
        r"passwords?|secrets?|api\s*keys?|credentials?|tokens?)\b",
    ),
    (
        "persona_en",
        r"\b(?:you\s+are\s+now|from\s+now\s+on\s+you|pretend\s+(?:to\s+be|you\s+are)|act\s+as\s+(?:if|an?\s+\w+\s+"
        r"(?:without|with\s+no))|roleplay\s+as|developer\s+mode|jailbr[eo]ak|do\s+anything\s+now|\bDAN\b|"
        r"unfiltered|no\s+(?:restrictions|limitations|filters)|evil\s+(?:ai|assistant|bot))",
    ),
    (
        "new_task_en",
        r"\b(?:new\s+(?:task|instructions?|rules?)\s+(?:follow|is|are|:)|(?:focus|concentrate)\s+on\s+(?:your|the)\s+"
        r"new\s+task|system\s+override|new\s+instructions?\s+from\s+the\s+(?:developer|admin|system)|start\s+over\s+"
        r"with\s+a\s+new\s+task)",
    ),
    (
        "delimiter",
        r"(?:</?\s*(?:context|system|instructions?|prompt)\s*>|<\|im_(?:start|end)\|>|\[/?(?:system|INST)\]|"
        r"^\s*#{2,}\s*(?:system|instruction)|\bsystem\s*:\s)",
    ),
    (
        "override_de",
        rf"\b(?:ignoriere|ignorieren\s+sie|vergiss|vergessen\s+sie|missachte|überspringe|verwirf|lass)\b"
        rf"(?:\W+\w+){{0,4}}?\W+{_PRIOR_DE}\b(?:\W+\w+){{0,3}}?\W+{_ORDERS_DE}\b",
    ),
    ("forget_everything_de", r"\b(?:vergiss|vergessen\s+sie|ignoriere)\s+(?:alles|das\s+alles|alle)\b"),
    (
        "reveal_prompt_de",
        r"\b(?:zeige?|zeigen\s+sie|gib|geben\s+sie|verrate|drucke|nenne|schreibe?)\b(?:\W+\w+){0,5}?\W+"
        r"(?:(?:system-?)?prompt(?:-?texte?)?|passw(?:o|ö)rt(?:er)?|geheimnis(?:se)?|zugangsdaten|anweisungen)\b",
    ),
    (
        "persona_de",
        r"\b(?:du\s+bist\s+(?:jetzt|nun|ab\s+sofort)|nun\s+bist\s+du|tu\s+so,?\s+als|tue\s+so,?\s+als|"
        r"stell\s+dir\s+vor,?\s+du\s+bist|ohne\s+(?:einschränkungen|filter|regeln))",
    ),
    ("new_task_de", r"\b(?:neue\s+(?:aufgabe|anweisungen?)|konzentriere\s+dich\s+(?:jetzt\s+)?auf\s+deine\s+neue)"),
    (
        "override_de_final",  # German puts the verb last: "die obigen Ausführungen ignorieren"
        r"\b(?:obigen|vorherigen|bisherigen|vorangegangenen|vorigen)\s+(?:ausführungen|anweisungen|instruktionen|"
        r"aufgaben|informationen|befehle)\s+(?:ignorieren|vergessen|missachten)|\babweichend\s+(?:zu|von)\s+(?:den\s+)?"
        r"(?:vorherigen|obigen|bisherigen)\s+(?:instruktionen|anweisungen)",
    ),
    (
        "style_hijack",  # an order to change voice mid-question: "ANTWORTE IM STIL EINES PIRATEN"
        r"\b(?:answer|respond|reply|talk|speak|write)\s+(?:\w+\s+)?(?:in\s+the\s+style\s+of|like\s+a\s+pirate)|"
        r"\b(?:antworte|antworten\s+sie|sprich|rede|schreibe?)\s+(?:\w+\s+)?im\s+stil\b|"
        r"\bdu\s+bist\s+kein(?:e|en)?\s+\w+\W+sondern\b",
    ),
    (
        "persona_imagine",
        r"\b(?:imagine|pretend)\s+(?:that\s+)?you\s+(?:are|were|can|could|have)\b|"
        r"\bstell\s+dir\s+vor,?\s+du\s+(?:bist|wärst|kannst)\b",
    ),
    ("make_up", r"\bmake\s+(?:something|it|stuff|things)\s+up\b|\berfinde\s+(?:etwas|einfach)\b"),
    ("stop_attention", r"\b(?:attention|achtung)\W+(?:stop|stopp)\b|\bstop\W+(?:ignore|forget|vergiss)\b"),
    (
        "override_es_fr_it",
        r"\b(?:olvid[ae]|ignora|ignore[zr]?|oublie[zr]?|dimentica)\s+(?:todo|todas?|tout(?:es)?|tutto|tutte|"
        r"las\s+instrucciones|les\s+instructions|le\s+istruzioni)\b",
    ),
)
"""(name, pattern) pairs, matched case-insensitively on the normalised text and each decoded reading."""


@dataclass(frozen=True)
class RuleHit:
    """A rule that matched, the reading it matched in (0 = the text itself) and where."""

    rule: str
    reading: int
    start: int
    end: int


class InjectionRules:
    """The compiled rules; build once, call per question."""

    def __init__(self, rules: tuple[tuple[str, str], ...] = RULES) -> None:
        self._rules = tuple((name, re.compile(pattern, re.IGNORECASE | re.MULTILINE)) for name, pattern in rules)

    def scan(self, texts: tuple[str, ...]) -> list[RuleHit]:
        """Every rule hit in ``texts`` (the normalised text first, then its decoded readings)."""
        hits: list[RuleHit] = []
        for index, text in enumerate(texts):
            for name, pattern in self._rules:
                match = pattern.search(text)
                if match:
                    hits.append(RuleHit(name, index, match.start(), match.end()))
        return hits
