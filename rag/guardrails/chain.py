"""The input and output chains a stack's guardrails config builds; everything heavy is built once in ``build``.

Input, in two phases around the one embedding of the question::

    guard = InputGuard.build(stack.guardrails, settings=settings, embedder=embedder, corpus=profile)
    prepared = guard.prepare(question)          # normalise + PII (redact/block): before embedding
    if not prepared.blocked:
        vector = embedder.encode([prepared.text])[0]   # the service batches this; retrieval reuses it
    result = guard.check(prepared, vector)      # injection, topic, moderation: after embedding

``prepared.text`` (normalised, PII redacted) is the text that is embedded, retrieved with, sent to the LLM, logged
and stored with feedback. ``check(text: str, None)`` runs both phases and embeds itself (the CLI and tests).

A check in ``flag`` mode reports what it detected with verdict ``flag`` but never blocks or redacts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from rag.guardrails.config import GuardrailsConfig, Mode, PiiConfig
from rag.guardrails.normalise import normalise
from rag.guardrails.pii import PiiDetector, PiiHit, redact, to_spans
from rag.guardrails.rules import InjectionRules
from rag.guardrails.safety import SafetyRules
from rag.guardrails.topic import CorpusProfile, best_similarity
from rag.guardrails.types import (
    REFUSAL_TEXT,
    Action,
    GuardStage,
    InputResult,
    OutputResult,
    PreparedInput,
    Span,
    StreamStep,
    Verdict,
)

if TYPE_CHECKING:
    from pipelines.embed import Embedder
    from rag.guardrails.business import BusinessRules
    from rag.guardrails.classifier import InjectionClassifier
    from rag.guardrails.moderation import ModerationClient
    from rag.settings import RagSettings
    from rag.types import Answer, RetrievedChunk

__all__ = ["CorpusProfile", "InputGuard", "OutputGuard", "StreamGuard"]

logger = logging.getLogger(__name__)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _act(mode: Mode, action: Action) -> Action:
    """What a check does in ``mode``: ``flag`` mode turns block/redact into flag."""
    return "flag" if mode == "flag" and action in ("block", "redact") else action


def _pii_verdict(
    name: str, stage: GuardStage, config: PiiConfig, hits: Sequence[PiiHit], ms: float, spans: tuple[Span, ...]
) -> tuple[Verdict, list[PiiHit]]:
    """The verdict for ``hits`` and the hits to redact (none in flag mode or when blocking)."""
    actions = {hit.type: config.actions.get(hit.type, "allow") for hit in hits}
    types = ", ".join(sorted(set(actions))) or "none"
    if any(a == "block" for a in actions.values()):
        blocking = sorted(t for t, a in actions.items() if a == "block")
        verdict: Action = _act(config.mode, "block")
        return Verdict(name, stage, verdict, f"PII that blocks: {', '.join(blocking)}", ms, spans=spans), []
    to_redact = [hit for hit in hits if actions[hit.type] == "redact"]
    if to_redact:
        verdict = _act(config.mode, "redact")
        reason = f"redacted {len(to_redact)} PII span(s): {', '.join(sorted({h.type for h in to_redact}))}"
        if verdict == "flag":
            reason = f"would redact {len(to_redact)} PII span(s) (flag mode): {types}"
        return Verdict(name, stage, verdict, reason, ms, spans=spans), to_redact if verdict == "redact" else []
    reason = f"PII allowed by the stack: {types}" if hits else "no PII detected"
    return Verdict(name, stage, "allow", reason, ms, spans=spans), []


def _blocked_by(verdicts: Sequence[Verdict]) -> str | None:
    return next((v.name for v in verdicts if v.verdict == "block"), None)


class InputGuard:
    """The input chain: normalisation, PII, injection (rules + classifier), topic/scope, moderation."""

    def __init__(
        self,
        config: GuardrailsConfig,
        *,
        embedder: Embedder,
        pii: PiiDetector | None,
        rules: InjectionRules | None,
        classifier: InjectionClassifier | None,
        classifier_embedder: Embedder | None,
        classifier_note: str,
        corpus: CorpusProfile | None,
        allowed: np.ndarray | None,
        denied: np.ndarray | None,
        moderation: ModerationClient | None,
    ) -> None:
        self.config = config
        self._embedder = embedder
        self._pii = pii
        self._rules = rules
        self._classifier = classifier
        self._classifier_embedder = classifier_embedder
        self._classifier_note = classifier_note
        self._corpus = corpus
        self._allowed = allowed
        self._denied = denied
        self._moderation = moderation

    @classmethod
    def build(
        cls,
        config: GuardrailsConfig,
        *,
        settings: RagSettings,
        embedder: Embedder,
        corpus: CorpusProfile | None,
    ) -> InputGuard:
        """Build every enabled input check (Presidio, rules, classifier, topic vectors, moderation client)."""
        pii = (
            PiiDetector(phone_regions=config.pii.phone_regions, min_score=config.pii.min_score)
            if config.pii.enabled
            else None
        )
        injection = config.injection
        rules = InjectionRules() if injection.enabled and injection.rules else None
        classifier = classifier_embedder = None
        note = ""
        if injection.enabled and injection.model_uri:
            from rag.guardrails.registry import load_classifier

            classifier = load_classifier(settings, injection.model_uri)
            classifier_embedder, note = _classifier_embedder(settings, embedder, classifier)
            if classifier_embedder is None:
                classifier = None
        topic = config.topic
        allowed = embedder.encode(list(topic.allowed_topics)) if topic.enabled and topic.allowed_topics else None
        denied = embedder.encode(list(topic.denied_topics)) if topic.enabled and topic.denied_topics else None
        moderation = None
        if config.moderation.enabled and config.moderation.base_url:
            from rag.guardrails.moderation import ModerationClient

            moderation = ModerationClient(config.moderation)
        return cls(
            config,
            embedder=embedder,
            pii=pii,
            rules=rules,
            classifier=classifier,
            classifier_embedder=classifier_embedder,
            classifier_note=note,
            corpus=corpus if topic.enabled else None,
            allowed=allowed,
            denied=denied,
            moderation=moderation,
        )

    def prepare(self, text: str) -> PreparedInput:
        """Phase one, before embedding: normalise, then detect PII and redact or block per type."""
        verdicts: list[Verdict] = []
        start = time.perf_counter()
        norm = normalise(text, decode=self.config.normalise.decode) if self.config.normalise.enabled else None
        plain = norm.text if norm else text
        if norm is not None:
            changed = len(text) - len(plain)
            reason = (
                "text unchanged" if plain == text else f"normalised (NFKC, invisible, homoglyphs; {changed:+d} chars)"
            )
            if len(norm.decoded) > 1:  # rot13 is always read; more means base64, hex, leetspeak or spaced letters
                reason += f"; {len(norm.decoded)} decoded reading(s) scanned"
            verdicts.append(Verdict("normalise", "input", "allow", reason, _ms(start)))
        passed = plain
        if self._pii is not None:
            start = time.perf_counter()
            hits = self._pii.detect(plain)
            spans = tuple(
                Span(h.type, *(norm.original_span(h.start, h.end) if norm else (h.start, h.end)), h.score) for h in hits
            )
            verdict, to_redact = _pii_verdict("pii", "input", self.config.pii, hits, _ms(start), spans)
            verdicts.append(verdict)
            passed = redact(plain, to_redact)
        return PreparedInput(
            original=text,
            normalised=plain,
            text=passed,
            decoded=norm.decoded if norm else (),
            verdicts=tuple(verdicts),
            blocked_by=_blocked_by(verdicts),
        )

    def check(self, text: str | PreparedInput, vector: np.ndarray | None) -> InputResult:
        """Phase two, after embedding ``prepared.text`` into ``vector`` (embedded here when None)."""
        prepared = text if isinstance(text, PreparedInput) else self.prepare(text)
        verdicts = list(prepared.verdicts)
        if prepared.blocked:
            return InputResult(prepared.text, tuple(verdicts), prepared.blocked_by)
        if vector is None and (self._classifier is not None or self._corpus is not None or self._allowed is not None):
            vector = self._embedder.encode([prepared.text])[0]
        if self.config.injection.enabled:
            verdicts.append(self._injection(prepared, vector))
        if self.config.topic.enabled and vector is not None:
            topic = self._topic(vector)
            if topic is not None:
                verdicts.append(topic)
        if self._moderation is not None:
            verdicts.append(_moderate(self._moderation, prepared.text, "input", self.config.moderation.mode))
        return InputResult(prepared.text, tuple(verdicts), _blocked_by(verdicts))

    def _injection(self, prepared: PreparedInput, vector: np.ndarray | None) -> Verdict:
        start = time.perf_counter()
        config = self.config.injection
        reasons: list[str] = []
        score: float | None = None
        spans: tuple[Span, ...] = ()
        hit = False
        if self._rules is not None:
            hits = self._rules.scan((prepared.normalised, *prepared.decoded))
            if hits:
                hit = True
                where = "the text" if hits[0].reading == 0 else "a decoded reading"
                reasons.append(f"rule {hits[0].rule} matched in {where}")
                spans = tuple(Span(f"rule:{h.rule}", h.start, h.end) for h in hits if h.reading == 0)
                score = 1.0
        if self._classifier is not None and self._classifier_embedder is not None:
            if self._classifier_embedder is not self._embedder or vector is None:
                vector = self._classifier_embedder.encode([prepared.text])[0]
            value = float(self._classifier.scores([prepared.text], vector[None, :])[0])
            threshold = config.threshold if config.threshold is not None else self._classifier.threshold
            score = max(score or 0.0, value)
            if value >= threshold:
                hit = True
                reasons.append(f"classifier score {value:.2f} >= {threshold:.2f}")
            else:
                reasons.append(f"classifier score {value:.2f} < {threshold:.2f}")
            if self._classifier_note:
                reasons.append(self._classifier_note)
        elif config.model_uri is None:
            reasons.append("no classifier configured (rules only)")
        elif self._classifier_note:
            reasons.append(self._classifier_note)
        if score is None:
            score = 0.0
        verdict: Action = _act(config.mode, "block") if hit else "allow"
        reason = (
            "; ".join(reasons) if hit else "no injection detected" + (f" ({'; '.join(reasons)})" if reasons else "")
        )
        return Verdict("injection", "input", verdict, reason, _ms(start), score=score, spans=spans)

    def _topic(self, vector: np.ndarray) -> Verdict | None:
        start = time.perf_counter()
        config = self.config.topic
        if self._denied is not None:
            index, similarity = best_similarity(vector, self._denied)
            if similarity >= config.denied_similarity:
                reason = f"denied topic {config.denied_topics[index]!r} (cosine {similarity:.2f})"
                return Verdict("topic", "input", _act(config.mode, "block"), reason, _ms(start), score=similarity)
        candidates: list[float] = []
        if self._corpus is not None:
            candidates.append(self._corpus.similarity(vector))
        if self._allowed is not None:
            candidates.append(best_similarity(vector, self._allowed)[1])
        if not candidates:
            return None
        similarity = max(candidates)
        if similarity < config.min_similarity:
            reason = f"out of scope: cosine {similarity:.2f} to the corpus/allowed topics < {config.min_similarity:.2f}"
            return Verdict("topic", "input", _act(config.mode, "block"), reason, _ms(start), score=similarity)
        return Verdict("topic", "input", "allow", f"in scope (cosine {similarity:.2f})", _ms(start), score=similarity)


def _classifier_embedder(
    settings: RagSettings, embedder: Embedder, classifier: InjectionClassifier
) -> tuple[Embedder | None, str]:
    """The embedder whose vectors the classifier was trained on: the stack's, else the base MiniLM, else none."""
    if embedder.identity.weights_sha256 == classifier.embedder_sha256:
        return embedder, ""
    from pipelines.embed import Embedder as BaseEmbedder

    base = BaseEmbedder(settings.embedder.model_copy(update={"model_path": None}), cache_dir=settings.cache_dir)
    base.warm_up()
    if base.identity.weights_sha256 == classifier.embedder_sha256:
        logger.info("injection classifier embeds with the base model (the stack's embedder differs)")
        return base, "classifier embedded separately with its base model (the stack's embedder differs)"
    logger.warning("injection classifier trained on embedder %s: not available; rules only", classifier.embedder_sha256)
    return None, "classifier skipped: trained on another embedder's vectors (rules only)"


def _moderate(client: ModerationClient, text: str, stage: GuardStage, mode: Mode) -> Verdict:
    import httpx

    start = time.perf_counter()
    try:
        result = client.moderate(text)
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        return Verdict("moderation", stage, "allow", f"moderation model unavailable ({type(exc).__name__})", _ms(start))
    if result.flagged:
        reason = f"moderation model flagged: {', '.join(result.categories) or 'unspecified'}"
        return Verdict("moderation", stage, _act(mode, "block"), reason, _ms(start), score=result.score)
    return Verdict("moderation", stage, "allow", "moderation model: not flagged", _ms(start), score=result.score)


def _sentences(text: str) -> list[str]:
    from rag.answer import split_sentences

    return [sentence for block in split_sentences(text) for sentence in block]


def _refusal() -> Answer:
    from rag.types import Answer

    return Answer(text=REFUSAL_TEXT, citations=(), abstained=True, support=0.0, sentences=(REFUSAL_TEXT,))


class OutputGuard:
    """The output chain: grounding, JSON format, PII leak, safety, business rules, moderation."""

    def __init__(
        self,
        config: GuardrailsConfig,
        *,
        embedder: Embedder,
        pii: PiiDetector | None,
        schema: dict[str, object] | None,
        rules: BusinessRules | None,
        moderation: ModerationClient | None,
        llm_repair: Callable[[str, str], str] | None,
    ) -> None:
        self.config = config
        self._embedder = embedder
        self._pii = pii
        self._schema = schema
        self._rules = rules
        self._safety = SafetyRules() if config.safety.enabled else None
        self._moderation = moderation
        self._llm_repair = llm_repair

    @classmethod
    def build(
        cls,
        config: GuardrailsConfig,
        *,
        settings: RagSettings,
        embedder: Embedder,
        llm_repair: Callable[[str, str], str] | None = None,
    ) -> OutputGuard:
        """Build every enabled output check. ``llm_repair(answer, error) -> answer`` gets one repair attempt.

        Raises:
            GuardrailError: The JSON schema or the business rules YAML is invalid.
        """
        del settings  # process settings are not needed by the output checks today; kept for a stable signature
        schema = None
        if config.format.enabled and config.format.json_schema:
            schema = _load_schema(config.format.json_schema)
        rules = None
        if config.business_rules.enabled and config.business_rules.yaml:
            from rag.guardrails.business import BusinessRules

            rules = BusinessRules.from_yaml(config.business_rules.yaml)
        pii = None
        if config.output_pii.enabled:
            pii = PiiDetector(phone_regions=config.output_pii.phone_regions, min_score=config.output_pii.min_score)
        moderation = None
        if config.moderation.enabled and config.moderation.base_url:
            from rag.guardrails.moderation import ModerationClient

            moderation = ModerationClient(config.moderation)
        return cls(
            config, embedder=embedder, pii=pii, schema=schema, rules=rules, moderation=moderation, llm_repair=llm_repair
        )

    def check(self, question: str, answer: Answer, chunks: Sequence[RetrievedChunk], *, llm: bool) -> OutputResult:
        """Run the output checks on ``answer``; returns the possibly changed answer and the verdicts."""
        verdicts: list[Verdict] = []
        if self.config.grounding.enabled and not answer.abstained and (llm or self.config.grounding.extractive):
            context = [s for chunk in chunks for s in _sentences(chunk.text)]
            answer, verdict = self.ground(answer, context, allow_abstain=True)
            verdicts.append(verdict)
        if self._schema is not None and not answer.abstained:
            answer, verdict = self._format(answer, llm=llm)
            verdicts.append(verdict)
        return self.screen(question, answer, verdicts)

    def screen(self, question: str, answer: Answer, verdicts: Sequence[Verdict] = ()) -> OutputResult:
        """The checks that need no retrieved text: PII leak, safety, moderation, business rules."""
        verdicts = list(verdicts)
        text = answer.text
        if self._pii is not None:
            start = time.perf_counter()
            hits = self._pii.detect(text)
            verdict, to_redact = _pii_verdict(
                "output_pii", "output", self.config.output_pii, hits, _ms(start), to_spans(hits)
            )
            verdicts.append(verdict)
            text = redact(text, to_redact)
        if self._safety is not None:
            verdicts.append(self._safe(text))
        if self._moderation is not None:
            verdicts.append(_moderate(self._moderation, text, "output", self.config.moderation.mode))
        if self._rules is not None:
            from rag.guardrails.business import apply_rules

            start = time.perf_counter()
            outcome = apply_rules(self._rules, question, text)
            mode = self.config.business_rules.mode
            if outcome.blocked_by:
                action = _act(mode, "block")
                verdicts.append(Verdict(outcome.blocked_by, "output", action, "deny pattern matched", _ms(start)))
            for name in outcome.fired:
                if not name.startswith("deny:"):
                    action = _act(mode, "redact")
                    verdicts.append(Verdict(name, "output", action, "business rule applied", _ms(start)))
            if mode == "enforce" and not outcome.blocked_by:
                text = outcome.text
            if not outcome.fired:
                verdicts.append(Verdict("business_rules", "output", "allow", "no rule fired", _ms(start)))
        blocked = _blocked_by(verdicts)
        if blocked is not None:
            return OutputResult(_refusal(), tuple(verdicts), blocked)
        if text != answer.text:
            answer = replace(answer, text=text, sentences=tuple(_sentences(text)))
        return OutputResult(answer, tuple(verdicts), None)

    def ground(self, answer: Answer, context: Sequence[str], *, allow_abstain: bool) -> tuple[Answer, Verdict]:
        """Drop (or flag) sentences the ``context`` sentences do not support; abstain below ``min_supported``."""
        from rag.grounding import sentence_support, supported
        from rag.types import ABSTAIN_TEXT, Answer

        start = time.perf_counter()
        config = self.config.grounding
        sentences = list(answer.sentences) or _sentences(answer.text)
        support = sentence_support(sentences, context, self._embedder.encode, config.threshold)
        kept = [s for s, value in zip(sentences, support, strict=True) if supported(value, config.threshold)]
        share = len(kept) / len(sentences) if sentences else 1.0
        spans = tuple(
            Span("unsupported_sentence", i, i + 1, value)
            for i, value in enumerate(support)
            if not supported(value, config.threshold)
        )
        if len(kept) == len(sentences):
            return answer, Verdict(
                "grounding",
                "output",
                "allow",
                f"all {len(sentences)} sentence(s) supported",
                _ms(start),
                score=share,
                spans=spans,
            )
        if config.mode == "flag":
            reason = f"{len(sentences) - len(kept)} of {len(sentences)} sentence(s) unsupported (flag mode)"
            return answer, Verdict("grounding", "output", "flag", reason, _ms(start), score=share, spans=spans)
        if allow_abstain and share < config.min_supported:
            abstained = Answer(text=ABSTAIN_TEXT, citations=(), abstained=True, support=0.0, sentences=(ABSTAIN_TEXT,))
            reason = f"abstained: only {len(kept)} of {len(sentences)} sentence(s) supported by the retrieved text"
            return abstained, Verdict("grounding", "output", "redact", reason, _ms(start), score=share, spans=spans)
        reason = f"dropped {len(sentences) - len(kept)} unsupported sentence(s) of {len(sentences)}"
        changed = replace(answer, text=" ".join(kept), sentences=tuple(kept))
        return changed, Verdict("grounding", "output", "redact", reason, _ms(start), score=share, spans=spans)

    def _format(self, answer: Answer, *, llm: bool) -> tuple[Answer, Verdict]:
        start = time.perf_counter()
        mode = self.config.format.mode
        error = _schema_error(self._schema or {}, answer.text)
        if error is None:
            return answer, Verdict("format", "output", "allow", "answer matches the JSON schema", _ms(start))
        if llm and self._llm_repair is not None and mode == "enforce":
            repaired = self._llm_repair(answer.text, error)
            second = _schema_error(self._schema or {}, repaired)
            if second is None:
                fixed = replace(answer, text=repaired, sentences=(repaired,))
                return fixed, Verdict("format", "output", "redact", f"repaired by the LLM after: {error}", _ms(start))
            error = f"{error}; the repair attempt also failed: {second}"
        return answer, Verdict(
            "format", "output", _act(mode, "block"), f"answer does not match the JSON schema: {error}", _ms(start)
        )

    def _safe(self, text: str) -> Verdict:
        start = time.perf_counter()
        assert self._safety is not None
        hits = self._safety.scan(text)
        if not hits:
            return Verdict("safety", "output", "allow", "no harmful content detected", _ms(start))
        spans = tuple(Span(f"safety:{name}", s, e) for name, s, e in hits)
        reason = f"harmful content: {', '.join(name for name, _, _ in hits)}"
        return Verdict(
            "safety", "output", _act(self.config.safety.mode, "block"), reason, _ms(start), score=1.0, spans=spans
        )

    def stream(self, question: str, chunks: Sequence[RetrievedChunk]) -> StreamGuard:
        """A sentence-buffered guard for a token stream of an LLM answer to ``question`` over ``chunks``."""
        return StreamGuard(self, question, chunks)


def _load_schema(text: str) -> dict[str, object]:
    import json

    import jsonschema

    from rag.errors import GuardrailError

    try:
        schema = json.loads(text)
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except (json.JSONDecodeError, jsonschema.SchemaError) as exc:
        raise GuardrailError(f"format.json_schema is not a valid JSON schema: {exc}") from exc
    if not isinstance(schema, dict):
        raise GuardrailError("format.json_schema must be a JSON object")
    return schema


def _schema_error(schema: dict[str, object], text: str) -> str | None:
    import json

    import jsonschema

    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        jsonschema.validate(json.loads(body), schema)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg} at {exc.pos})"
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"{where}: {exc.message}"
    return None


@dataclass
class StreamGuard:
    """Checks a token stream sentence by sentence: a sentence is released only once complete and checked.

    Each complete sentence is checked for grounding (unsupported ones are withheld in enforce mode), PII (redacted),
    safety and deny rules (the stream stops with ``blocked_by``).
    """

    guard: OutputGuard
    question: str
    chunks: Sequence[RetrievedChunk]

    def __post_init__(self) -> None:
        self._buffer = ""
        self._stopped: str | None = None
        self._context = [s for chunk in self.chunks for s in _sentences(chunk.text)]

    def feed(self, delta: str) -> StreamStep:
        """Add ``delta``; release the complete sentences it finishes, checked."""
        if self._stopped:
            return StreamStep("", (), self._stopped)
        self._buffer += delta
        import re

        ends = list(re.finditer(r"[.!?][\"')\]]*\s+", self._buffer))
        if not ends:
            return StreamStep("", (), None)
        cut = ends[-1].end()
        ready, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return self._check(ready)

    def finish(self) -> StreamStep:
        """Check and release what remains in the buffer."""
        if self._stopped or not self._buffer.strip():
            return StreamStep("", (), self._stopped)
        ready, self._buffer = self._buffer, ""
        return self._check(ready)

    def _check(self, text: str) -> StreamStep:
        from rag.types import Answer

        sentences = _sentences(text)
        answer = Answer(text=text.strip(), citations=(), abstained=False, support=1.0, sentences=tuple(sentences))
        config = self.guard.config
        verdicts: list[Verdict] = []
        if config.grounding.enabled and sentences:
            answer, verdict = self.guard.ground(answer, self._context, allow_abstain=False)
            verdicts.append(verdict)
        result = self.guard.screen(self.question, answer, verdicts)
        verdicts = list(result.verdicts)
        if result.blocked_by:
            self._stopped = result.blocked_by
            return StreamStep("", tuple(verdicts), result.blocked_by)
        released = result.answer.text
        return StreamStep(released + (" " if released else ""), tuple(verdicts), None)
