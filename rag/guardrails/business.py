"""Business rules from a YAML file kept in the stack: deny patterns, required disclaimers, allowed link domains and a
maximum length, each rule with a name that shows up in the verdicts.

Example::

    deny:
      - name: no-competitor-pricing
        pattern: "(?i)\\bacme\\s+price"
    disclaimers:
      - name: legal-disclaimer
        when: "(?i)\\b(?:contract|lawsuit|liability)\\b"
        text: "This is not legal advice."
    allowed_link_domains: [northwind.example]
    max_length: 1200
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag.errors import GuardrailError

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_URL = re.compile(r"https?://[^\s)\]>\"']+", re.IGNORECASE)


class DenyRule(BaseModel):
    """Block an answer matching ``pattern`` (a Python regex)."""

    model_config = _FROZEN
    name: str = Field(min_length=1)
    pattern: str


class DisclaimerRule(BaseModel):
    """When the question or answer matches ``when``, the answer must carry ``text`` (appended if missing)."""

    model_config = _FROZEN
    name: str = Field(min_length=1)
    when: str
    text: str = Field(min_length=1)


class BusinessRules(BaseModel):
    """The parsed YAML file."""

    model_config = _FROZEN
    deny: tuple[DenyRule, ...] = ()
    disclaimers: tuple[DisclaimerRule, ...] = ()
    allowed_link_domains: tuple[str, ...] | None = None
    max_length: int | None = Field(default=None, ge=1)

    @classmethod
    def from_yaml(cls, text: str) -> BusinessRules:
        """Parse and validate (regexes compiled here, so a bad one fails at registration, not per request).

        Raises:
            GuardrailError: Not YAML, unknown keys, or a pattern that is not a regex.
        """
        import yaml

        try:
            data = yaml.safe_load(text) or {}
            rules = cls.model_validate(data)
            for pattern in [d.pattern for d in rules.deny] + [d.when for d in rules.disclaimers]:
                re.compile(pattern)
        except (yaml.YAMLError, ValidationError, re.error) as exc:
            raise GuardrailError(f"business rules YAML is invalid: {exc}") from exc
        return rules


@dataclass(frozen=True)
class RuleOutcome:
    """What the rules decided for one answer."""

    text: str
    blocked_by: str | None
    fired: tuple[str, ...]


def apply_rules(rules: BusinessRules, question: str, answer: str) -> RuleOutcome:
    """Deny patterns block; a missing disclaimer is appended; links outside the allowed domains and text beyond the
    maximum length are cut. ``fired`` names every rule that acted."""
    fired: list[str] = []
    for rule in rules.deny:
        if re.search(rule.pattern, answer):
            return RuleOutcome(answer, f"deny:{rule.name}", (f"deny:{rule.name}",))
    text = answer
    if rules.allowed_link_domains is not None:
        allowed = tuple(d.lower() for d in rules.allowed_link_domains)

        def keep(match: re.Match[str]) -> str:
            host = (urlsplit(match.group(0)).hostname or "").lower()
            if any(host == d or host.endswith("." + d) for d in allowed):
                return match.group(0)
            fired.append("allowed_link_domains")
            return "[link removed]"

        text = _URL.sub(keep, text)
    if rules.max_length is not None and len(text) > rules.max_length:
        text = text[: rules.max_length].rstrip() + "…"
        fired.append("max_length")
    for disclaimer in rules.disclaimers:
        applies = re.search(disclaimer.when, question) or re.search(disclaimer.when, text)
        if applies and disclaimer.text not in text:
            text = f"{text}\n\n{disclaimer.text}"
            fired.append(f"disclaimer:{disclaimer.name}")
    return RuleOutcome(text, None, tuple(dict.fromkeys(fired)))
