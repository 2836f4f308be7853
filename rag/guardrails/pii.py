"""PII detection with Presidio's pattern recognizers, offline, and per-type actions (block, redact, allow).

Presidio's default analyzer wants a spaCy model that cannot be downloaded here; it runs with its ``NoOpNlpEngine``
(no model, no tokens) and only self-contained recognizers: regexes with checksum validation (credit card with Luhn,
IBAN with mod-97, US SSN rules, IP addresses), ``phonenumbers`` for phone formats of several regions, and the
email recognizer with a public-suffix list read from tldextract's bundled snapshot (never the network). Everything is
built once; a short question costs well under a millisecond.

A type is looked for only in a text that can hold a value of it (:func:`_can_hold`): every card, IBAN, SSN, NINO and
crypto address has digits, an email address an ``@``, an IP address a digit or a ``:``, and a phone number is kept
only with :data:`_PHONE_MIN_DIGITS` digits. Most questions have none of these, and each recognizer skipped is time
off every request (phone matching, once per configured region, costs about 1 ms on a text with any digit).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rag.guardrails.types import Span

if TYPE_CHECKING:
    from rag.guardrails.config import PiiConfig

_LANGUAGE = "en"
_PHONE_MIN_DIGITS = 9
"""Phone numbers are matched as *possible* numbers (invented area codes, extensions), then kept only with this many
digits: shorter digit runs in prose are dates, versions and quantities, and real subscriber numbers are longer."""
_DIGIT_TYPES = frozenset({"CREDIT_CARD", "IBAN_CODE", "US_SSN", "UK_NINO", "CRYPTO"})
"""Types whose every value contains a digit (IBAN check digits, bitcoin addresses start with 1, 3 or bc1)."""


def _can_hold(entity: str, text: str, digits: int) -> bool:
    """Whether ``text`` (with ``digits`` digits) can contain a value of ``entity`` that :meth:`PiiDetector.detect`
    would keep; a type not known here is always looked for."""
    if entity == "PHONE_NUMBER":
        return digits >= _PHONE_MIN_DIGITS
    if entity == "EMAIL_ADDRESS":
        return "@" in text
    if entity == "IP_ADDRESS":
        return digits > 0 or ":" in text
    if entity in _DIGIT_TYPES:
        return digits > 0
    return True


@dataclass(frozen=True)
class PiiHit:
    """A detected span in the analysed text."""

    type: str
    start: int
    end: int
    score: float


def _recognizers(phone_regions: Sequence[str]) -> list[Any]:
    import tldextract
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UkNinoRecognizer,
        UsSsnRecognizer,
    )

    # Card formats Presidio's pattern misses: Mastercard 2-series, 19-digit Visa, JCB 15 (2131/1800), Maestro 12-19.
    # Still Luhn-validated by CreditCardRecognizer, so a random digit run rarely passes.
    extra_cards = [
        Pattern("card (2-series)", r"\b2[2-7]\d{2}[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b", 0.3),
        Pattern("card (19 digits)", r"\b4\d{3}[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}[- ]?\d{3}\b", 0.3),
        Pattern("card (JCB 15)", r"\b(?:2131|1800)\d{11}\b", 0.3),
        Pattern("card (Maestro)", r"\b(?:5[06-9]|6\d)\d{10,17}\b", 0.3),
    ]
    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # bundled public-suffix snapshot only

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's email recognizer, validating the domain without fetching the public-suffix list."""

        def validate_result(self, pattern_text: str) -> bool:
            return bool(offline(pattern_text).fqdn)

    return [
        OfflineEmailRecognizer(),
        CreditCardRecognizer(),
        CreditCardRecognizer(patterns=extra_cards, name="ExtraCardRecognizer"),
        IbanRecognizer(),
        UsSsnRecognizer(),
        IpRecognizer(),
        PhoneRecognizer(supported_regions=tuple(phone_regions), leniency=0),
        UkNinoRecognizer(),
        CryptoRecognizer(),
    ]


class PiiDetector:
    """A Presidio analyzer with only offline pattern recognizers; build once, call per text."""

    def __init__(self, *, phone_regions: Sequence[str], min_score: float) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine

        registry = RecognizerRegistry(supported_languages=[_LANGUAGE])
        for recognizer in _recognizers(phone_regions):
            registry.add_recognizer(recognizer)
        engine = NoOpNlpEngine(models=[{"lang_code": _LANGUAGE, "model_name": "none"}])
        self._engine = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[_LANGUAGE])
        self._min_score = min_score
        self._entities = sorted(self._engine.get_supported_entities(_LANGUAGE))
        self.detect("warm up: a@b.com 4111 1111 1111 1111, +44 20 7946 0958")

    def detect(self, text: str) -> list[PiiHit]:
        """Non-overlapping spans, the most specific type winning an overlap (higher score, then longer span)."""
        digits = sum(c.isdigit() for c in text)  # str.isdigit covers every digit a recognizer's \d or [0-9] matches
        entities = [e for e in self._entities if _can_hold(e, text, digits)]
        if not entities:
            return []
        results = self._engine.analyze(
            text=text, language=_LANGUAGE, entities=entities, score_threshold=self._min_score
        )
        ranked = sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start))
        kept: list[PiiHit] = []
        for r in ranked:
            if r.entity_type == "PHONE_NUMBER" and sum(c.isdigit() for c in text[r.start : r.end]) < _PHONE_MIN_DIGITS:
                continue  # possible-number matching (leniency 0) also takes years and version numbers
            if all(r.end <= k.start or r.start >= k.end for k in kept):
                kept.append(PiiHit(r.entity_type, r.start, r.end, float(r.score)))
        return sorted(kept, key=lambda h: h.start)


def redact(text: str, hits: Sequence[PiiHit]) -> str:
    """``text`` with each hit replaced by ``<TYPE>`` (hits must not overlap)."""
    out: list[str] = []
    last = 0
    for hit in sorted(hits, key=lambda h: h.start):
        out.append(text[last : hit.start])
        out.append(f"<{hit.type}>")
        last = hit.end
    out.append(text[last:])
    return "".join(out)


class TextRedactor:
    """Redacts stored free text (feedback comments) by the PII types of a :class:`rag.guardrails.config.PiiConfig`:
    every type whose action is not ``allow`` is replaced by ``<TYPE>`` (a type that would block a question is
    redacted here: the text is already written, and keeping the rest of it is the point).

    Why apart from the input guard: what is kept at rest must be free of PII whatever the serving stack's guardrails
    say (a stack may have none), so the policy is the platform's. The detector is built on first use (Presidio
    takes about a second to set up) and shared by the threads that call it.
    """

    def __init__(self, config: PiiConfig | None = None) -> None:
        from rag.guardrails.config import PiiConfig

        self.config = config or PiiConfig()
        self._detector: PiiDetector | None = None
        self._lock = threading.Lock()

    def __call__(self, text: str) -> str:
        """``text`` with every PII span of a non-allowed type replaced by ``<TYPE>``."""
        if self._detector is None:
            with self._lock:
                if self._detector is None:
                    self._detector = PiiDetector(
                        phone_regions=self.config.phone_regions, min_score=self.config.min_score
                    )
        hits = [h for h in self._detector.detect(text) if self.config.actions.get(h.type, "allow") != "allow"]
        return redact(text, hits) if hits else text


def to_spans(hits: Sequence[PiiHit]) -> tuple[Span, ...]:
    """Verdict spans from hits (offsets unchanged)."""
    return tuple(Span(h.type, h.start, h.end, h.score) for h in hits)
