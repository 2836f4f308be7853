"""The guardrails section of a stack: one sub-model per check, each switchable off or to ``flag`` (report only).

It lives in the stack (``StackConfig.guardrails``), so it is versioned in MLflow with it and changes only by
registering and promoting a new stack. ``None`` there means a stack registered before guardrails existed: no checks
run and it serves exactly as before. ``GuardrailsConfig()`` is the sensible default every new stack gets: injection
blocked, high-risk PII redacted, grounding enforced for LLM answers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid")

Mode = Literal["enforce", "flag"]
PiiAction = Literal["block", "redact", "allow"]

DEFAULT_PII_ACTIONS: dict[str, PiiAction] = {
    "CREDIT_CARD": "redact",
    "IBAN_CODE": "redact",
    "US_SSN": "redact",
    "EMAIL_ADDRESS": "redact",
    "PHONE_NUMBER": "redact",
    "IP_ADDRESS": "redact",
    "UK_NINO": "redact",
    "US_PASSPORT": "redact",
    "CRYPTO": "redact",
}
"""Presidio entity type -> action on the question. Types not listed are detected and reported but allowed."""

OUTPUT_PII_ACTIONS: dict[str, PiiAction] = {
    "CREDIT_CARD": "redact",
    "IBAN_CODE": "redact",
    "US_SSN": "redact",
    "UK_NINO": "redact",
    "US_PASSPORT": "redact",
    "CRYPTO": "redact",
}
"""On answers only high-risk types are redacted: e-mail addresses and phone numbers in answers are normally the
company's own contacts quoted from the documents (a support line), and redacting them would break the answer."""


class _Check(BaseModel):
    model_config = _FROZEN

    enabled: bool = True
    mode: Mode = Field(default="enforce", description="'flag' reports what enforce would do but never blocks/redacts.")


class NormaliseConfig(BaseModel):
    """Normalisation runs before any check (NFKC, invisible characters, homoglyphs; decoding for detection)."""

    model_config = _FROZEN

    enabled: bool = True
    decode: bool = Field(default=True, description="Also scan base64, hex and rot13 readings of the text.")


class InjectionConfig(_Check):
    """Prompt injection and jailbreak: phrase/structure rules, then the trained classifier when the stack names one."""

    rules: bool = True
    model_uri: str | None = Field(
        default=None,
        pattern=r"^models:/[A-Za-z0-9._-]+/[0-9]+$",
        description="models:/injection-classifier/N from `ragops guardrails train`; None runs the rules only.",
    )
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Classifier score that blocks; None uses the one chosen in training."
    )


class TopicConfig(_Check):
    """Questions far from the corpus (and from allowed topics), or close to a denied topic, are refused early."""

    min_similarity: float = Field(
        default=0.08, ge=-1.0, le=1.0, description="Refuse below this cosine to the nearest corpus vector."
    )
    allowed_topics: tuple[str, ...] = ()
    denied_topics: tuple[str, ...] = ()
    denied_similarity: float = Field(default=0.55, ge=-1.0, le=1.0)


class PiiConfig(_Check):
    """PII detection with Presidio pattern recognizers (checksums where the format has one) and per-type actions."""

    actions: dict[str, PiiAction] = Field(default_factory=lambda: dict(DEFAULT_PII_ACTIONS))
    min_score: float = Field(
        default=0.35, ge=0.0, le=1.0, description="Presidio score a span needs (validated phone numbers score 0.4)."
    )
    phone_regions: tuple[str, ...] = ("US", "GB", "DE", "FR", "AT", "CH", "IT", "ES", "NL")


class ModerationConfig(_Check):
    """An optional OpenAI-compatible ``/v1/moderations`` endpoint; off unless ``base_url`` is set."""

    enabled: bool = False
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=2.0, gt=0.0)


class GroundingConfig(_Check):
    """Every answer sentence must be supported by the retrieved text (verbatim, or MiniLM cosine >= threshold)."""

    threshold: float = Field(default=0.6, ge=-1.0, le=1.0)
    min_supported: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Abstain when less than this share of sentences is supported."
    )
    extractive: bool = Field(default=False, description="Also check extractive answers (they copy the text anyway).")


class FormatConfig(_Check):
    """A JSON schema structured answers must satisfy (one LLM repair attempt, then a clear failure)."""

    json_schema: str | None = Field(default=None, description="The schema as JSON text; None disables the check.")


class SafetyConfig(_Check):
    """Harmful or abusive content in answers, by rules (no offline classifier installs here)."""


class BusinessRulesConfig(_Check):
    """A YAML rules file kept in the stack: deny patterns, required disclaimers, allowed link domains, max length."""

    yaml: str | None = Field(default=None, description="The rules file's text; None disables the check.")


class GuardrailsConfig(BaseModel):
    """Every guardrail of a stack. The defaults are on and sensible."""

    model_config = _FROZEN

    schema_version: Literal[1] = 1
    normalise: NormaliseConfig = Field(default_factory=NormaliseConfig)
    injection: InjectionConfig = Field(default_factory=InjectionConfig)
    topic: TopicConfig = Field(default_factory=TopicConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    moderation: ModerationConfig = Field(default_factory=ModerationConfig)
    grounding: GroundingConfig = Field(default_factory=GroundingConfig)
    format: FormatConfig = Field(default_factory=FormatConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    output_pii: PiiConfig = Field(default_factory=lambda: PiiConfig(actions=dict(OUTPUT_PII_ACTIONS)))
    business_rules: BusinessRulesConfig = Field(default_factory=BusinessRulesConfig)

    @field_validator("pii", "output_pii")
    @classmethod
    def _upper_types(cls, value: PiiConfig) -> PiiConfig:
        bad = [key for key in value.actions if key != key.upper()]
        if bad:
            raise ValueError(f"PII types are Presidio entity names in upper case, got {bad}")
        return value
