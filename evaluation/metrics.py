"""Per-example evaluation metrics: retrieval (TREC measures via ``ir_measures``), answers, abstention, latency.

Every metric is computed **per example** and kept per example (:class:`PerQuery`), because the promotion decision is a
paired comparison of two systems on the same examples (:mod:`evaluation.significance`): means alone cannot tell an
improvement from noise.

Retrieval
    nDCG, recall, MRR, hit rate and precision come from ``ir_measures`` backed by ``pytrec_eval`` (the reference
    ``trec_eval`` code), not from hand-written formulas, so figures are comparable with published BEIR/TREC numbers
    (nDCG uses linear gains, i.e. the qrels grade, and log2 discounts). Three choices are ours:

    * The run is ranked by **position**. Scores are replaced by ``len - rank`` before evaluation: ``trec_eval`` sorts
      by score and breaks ties by document id, and in ir-measures 0.4.3 ``RR@k`` (msmarco provider) and ``nDCG@k``
      (pytrec_eval) even break ties in opposite directions, so equal scores would make MRR and nDCG disagree about
      the same ranking. A document repeated in a run counts at its first (best) position only.
    * Queries without any relevant document (no grade > 0) are **excluded**: no system can score on them, and
      pytrec_eval reports them as 0, which would drag every system's mean down by the same unexplained amount.
    * Queries that have relevant documents but are missing from the run (or whose ranked list is empty) score **0**
      on every measure: a system that returns nothing must not look better than one that returns something wrong.

Answers
    SQuAD exact match and token F1 over normalised text (lower case, punctuation and the articles a/an/the removed,
    citation markers ``[n]`` removed), plus *containment*: the reference appears in the answer as whole tokens, which
    suits the extractive answerer's sentence-length answers where exact match is hopeless. Groundedness is offline and
    embedding-based (no LLM judge): an answer sentence counts as supported when some context sentence is close to it.

Undefined is not zero: precision with no abstentions, groundedness of an empty answer and citation validity with no
citations are ``None``, and ``PerQuery`` leaves such examples out rather than averaging in a made-up 0.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rag.answer import ABBREVIATIONS
from rag.grounding import sentence_support, supported

if TYPE_CHECKING:
    import numpy as np

RETRIEVAL_METRICS: tuple[str, ...] = ("ndcg@10", "recall@5", "recall@10", "recall@100", "mrr@10", "hit_rate@10")
"""The retrieval metrics computed when none are named."""

_IR_MEASURE_NAMES: dict[str, str] = {
    "ndcg": "nDCG",
    "recall": "R",
    "mrr": "RR",
    "hit_rate": "Success",
    "precision": "P",
}
"""Our metric family -> the ir_measures measure it maps to (``<family>@<k>``)."""

_METRIC_NAME = re.compile(r"^(?P<family>[a-z_]+)@(?P<k>[1-9]\d*)$")


# --------------------------------------------------------------------------------------------------------------------
# Per-example results
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerQuery:
    """Per-example values of several metrics: ``values[metric][example_id] -> value``.

    An example with an undefined value (e.g. groundedness of an abstention) is simply absent from that metric, so
    means and paired tests only ever see defined values. The mappings are copied on construction: mutating the dicts
    passed in does not change a result that may already have been logged.
    """

    values: Mapping[str, Mapping[str, float]]

    def __post_init__(self) -> None:
        copied = {metric: {qid: float(value) for qid, value in per.items()} for metric, per in self.values.items()}
        for metric, per in copied.items():
            bad = [qid for qid, value in per.items() if not math.isfinite(value)]
            if bad:  # one NaN would turn the mean into NaN and no gate can compare against that
                raise ValueError(f"{metric} is not a finite number for {len(bad)} example(s), e.g. {bad[0]!r}")
        object.__setattr__(self, "values", copied)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names, in insertion order (including metrics that have no values)."""
        return tuple(self.values)

    def mean(self, metric: str) -> float | None:
        """Mean of ``metric`` over the examples that have a value; ``None`` when there are none (or no such metric)."""
        per = self.values.get(metric)
        if not per:
            return None
        return math.fsum(per.values()) / len(per)

    def means(self) -> dict[str, float]:
        """Mean of every metric that has at least one value."""
        out: dict[str, float] = {}
        for metric in self.values:
            value = self.mean(metric)
            if value is not None:
                out[metric] = value
        return out

    def merged(self, other: PerQuery) -> PerQuery:
        """Both results in one, e.g. retrieval and answer metrics of one run.

        A metric present in both is the union of its examples. The same example with two different values for the
        same metric raises ``ValueError``: silently keeping one of them would hide a bookkeeping error.
        """
        combined: dict[str, dict[str, float]] = {metric: dict(per) for metric, per in self.values.items()}
        for metric, per in other.values.items():
            target = combined.setdefault(metric, {})
            for qid, value in per.items():
                if qid in target and target[qid] != value:
                    raise ValueError(f"{metric} for {qid!r} is {target[qid]} in one result and {value} in the other")
                target[qid] = value
        return PerQuery(combined)


# --------------------------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------------------------


def _ir_measure(name: str) -> str:
    """The ir_measures spelling of one of our metric names (``ndcg@10`` -> ``nDCG@10``); ValueError when unknown."""
    match = _METRIC_NAME.match(name)
    family = match.group("family") if match else None
    if match is None or family not in _IR_MEASURE_NAMES:
        known = ", ".join(f"{known_family}@k" for known_family in _IR_MEASURE_NAMES)
        raise ValueError(f"unknown retrieval metric {name!r}; known: {known} (k a positive integer)")
    return f"{_IR_MEASURE_NAMES[family]}@{match.group('k')}"


def retrieval_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Sequence[tuple[str, float]]],
    metrics: Sequence[str] = RETRIEVAL_METRICS,
) -> PerQuery:
    """Per-query retrieval metrics, computed by ``ir_measures`` (pytrec_eval).

    Args:
        qrels: Query id -> document id -> graded relevance; a grade > 0 is relevant, higher is better (nDCG gain).
        run: Query id -> ranked ``(document id, score)`` list, best first. Only the order is used; scores are ignored.
        metrics: Names such as ``ndcg@10``, ``recall@5``, ``mrr@10``, ``hit_rate@10``, ``precision@5``.

    Returns:
        One value per metric for every query that has a relevant document; queries absent from ``run`` score 0.

    Raises:
        ValueError: An unknown metric name.
    """
    names = list(dict.fromkeys(metrics))
    measure_names = {name: _ir_measure(name) for name in names}  # validate before doing any work

    judged = {
        qid: {doc_id: int(grade) for doc_id, grade in grades.items()}
        for qid, grades in qrels.items()
        if any(grade > 0 for grade in grades.values())
    }
    ranked: dict[str, dict[str, float]] = {}
    for qid, results in run.items():
        if qid not in judged:
            continue
        scores: dict[str, float] = {}
        for doc_id, _score in results:
            if doc_id not in scores:  # a repeated document counts at its first position
                scores[doc_id] = float(len(results) - len(scores))
        if scores:
            ranked[qid] = scores

    values: dict[str, dict[str, float]] = {name: {} for name in names}
    if not judged or not names:
        return PerQuery(values)

    import ir_measures

    measures = {name: ir_measures.parse_measure(spelling) for name, spelling in measure_names.items()}
    by_measure = {str(measure): name for name, measure in measures.items()}
    for metric in ir_measures.iter_calc(list(measures.values()), judged, ranked):
        name = by_measure.get(str(metric.measure))
        if name is not None and metric.query_id in judged:
            values[name][metric.query_id] = float(metric.value)
    # pytrec_eval leaves out queries missing from the run (ir-measures 0.4.3 adds them back as 0, but that is its
    # implementation, not a documented contract): they retrieved nothing, so they score 0.
    for per in values.values():
        for qid in judged:
            per.setdefault(qid, 0.0)
    return PerQuery(values)


# --------------------------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------------------------

_CITATION = re.compile(r"\s*\[\d+(?:\s*[,;\u2013-]\s*\d+)*\]")
"""Citation markers ``[1]``, ``[12]``, ``[1, 2]``, ``[1-3]`` and the space before them."""
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _is_punctuation(char: str) -> bool:
    """SQuAD's ASCII punctuation plus Unicode punctuation (curly quotes, dashes), which documents often contain."""
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def strip_citations(text: str) -> str:
    """``text`` without citation markers (``[1]``, ``[1, 2]``, ``[1-3]``) and the space before them."""
    return _CITATION.sub("", text)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation, also dropping citation markers.

    Lower case, citation markers ``[n]`` removed, punctuation removed (not replaced: "NR-200" -> "nr200", as in
    SQuAD), articles a/an/the removed, whitespace collapsed.
    """
    text = _CITATION.sub(" ", text).lower()
    text = "".join(char for char in text if not _is_punctuation(char))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str):  # a str is a Sequence[str]: "640" would be read as "6", "4", "0"
        raise TypeError("references must be a sequence of strings, not a single string")
    if not references:
        raise ValueError("no reference answers: an unanswerable example has no exact match or F1 to compute")


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    _check_references(references)
    normalized = normalize_answer(prediction)
    return 1.0 if any(normalized == normalize_answer(reference) for reference in references) else 0.0


def _f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
    if not prediction_tokens or not reference_tokens:
        return float(prediction_tokens == reference_tokens)  # SQuAD v2: both empty is a match
    same = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token-overlap F1 between the normalised prediction and the best-matching reference."""
    _check_references(references)
    tokens = normalize_answer(prediction).split()
    return max(_f1(tokens, normalize_answer(reference).split()) for reference in references)


def _contains(tokens: list[str], needle: list[str]) -> bool:
    if not needle:
        return not tokens  # an empty reference is contained only in an empty answer, never in everything
    width = len(needle)
    return any(tokens[start : start + width] == needle for start in range(len(tokens) - width + 1))


def containment(prediction: str, references: Sequence[str]) -> float:
    """1.0 when some normalised reference occurs in the normalised prediction as whole tokens ("64" not in "640")."""
    _check_references(references)
    tokens = normalize_answer(prediction).split()
    return 1.0 if any(_contains(tokens, normalize_answer(reference).split()) for reference in references) else 0.0


@dataclass(frozen=True)
class AbstentionScores:
    """How well the system declines unanswerable questions; "positive" means abstained.

    ``precision``: share of abstentions that were on unanswerable questions (``None`` when it never abstained).
    ``recall``: share of unanswerable questions it abstained on (``None`` when none were unanswerable).
    ``f1``: their harmonic mean (``None`` when either is undefined; 0.0 when both are 0).
    """

    precision: float | None
    recall: float | None
    f1: float | None
    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int


def abstention_scores(abstained: Sequence[bool], unanswerable: Sequence[bool]) -> AbstentionScores:
    """Precision, recall and F1 of abstaining, one flag pair per example (same order in both sequences)."""
    if len(abstained) != len(unanswerable):
        raise ValueError(f"{len(abstained)} abstention flags for {len(unanswerable)} examples")
    pairs = Counter((bool(a), bool(u)) for a, u in zip(abstained, unanswerable, strict=True))
    tp, fp = pairs[(True, True)], pairs[(True, False)]
    fn, tn = pairs[(False, True)], pairs[(False, False)]
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1: float | None = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return AbstentionScores(precision, recall, f1, tp, fp, fn, tn)


# The answerer's list: the evaluation splits sentences the way the answers were cut.
_ABBREVIATIONS = ABBREVIATIONS
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+")
_ALNUM = re.compile(r"[^\W_]")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, citation markers removed; no NLP model (nltk and spaCy download data).

    Lines are split first (list items and headings stand alone), list bullets dropped, then a line is cut after
    ``.``/``!``/``?`` followed by whitespace and a capital or digit, except after an abbreviation ("e.g.", "Dr.") or an
    initial ("J. Smith"). "3.5", "v1.2.3" and "e.g. this" have no such boundary and stay whole. Pieces without a letter
    or digit are dropped.
    """
    sentences: list[str] = []
    for raw_line in _CITATION.sub("", text).splitlines():
        line = _BULLET.sub("", raw_line).strip()
        start = 0
        for boundary in _SENTENCE_END.finditer(line):
            piece = line[start : boundary.start()].strip()
            words = piece.split()
            if piece.endswith(".") and words:
                word = words[-1].rstrip(".").lower()
                if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                    continue  # "Dr. Okafor", "J. Smith": not a sentence end
            sentences.append(piece)
            start = boundary.end()
        sentences.append(line[start:].strip())
    return [sentence for sentence in sentences if _ALNUM.search(sentence)]


def groundedness(
    answer_sentences: Sequence[str],
    context_sentences: Sequence[str],
    encode: Callable[[Sequence[str]], np.ndarray],
    threshold: float = 0.6,
) -> float | None:
    """Share of answer sentences supported by the context: max cosine to a context sentence ``>= threshold``.

    Offline (an embedding model, no LLM judge), so it measures closeness, not entailment: it catches answers made up
    from nothing, not subtle contradictions. A sentence copied verbatim from the context always counts as supported.

    Args:
        answer_sentences: The answer, split with :func:`split_sentences`; blank entries are ignored.
        context_sentences: The retrieved text, split the same way.
        encode: Texts -> one embedding row each (rows are re-normalised here, so any scale works).
        threshold: Minimum cosine similarity for a sentence to count as supported, in [-1, 1].

    Returns:
        The supported share, or ``None`` when the answer has no sentence (nothing to judge). With no context at all
        every sentence is unsupported (0.0).
    """
    answers = [sentence for sentence in answer_sentences if sentence.strip()]
    if not answers:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
        return None
    support = sentence_support(answers, context_sentences, encode, threshold)
    return sum(supported(value, threshold) for value in support) / len(answers)


def citation_validity(cited_ids: Sequence[str], retrieved_ids: Collection[str]) -> float | None:
    """Share of the distinct cited ids that were actually retrieved; ``None`` when nothing was cited."""
    distinct = list(dict.fromkeys(cited_ids))
    if not distinct:
        return None
    retrieved = set(retrieved_ids)
    return sum(cited in retrieved for cited in distinct) / len(distinct)


@dataclass(frozen=True)
class FormatCheck:
    """Whether an answer is well-formed, and every problem found (empty when ``ok``)."""

    ok: bool
    problems: tuple[str, ...]


_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_TEMPLATE_LEFTOVERS = ("Context:", "{question}", "{context}")


def format_compliance(text: str, n_citations: int, abstained: bool, *, max_chars: int = 4000) -> FormatCheck:
    """Check the answer's form: not empty, not too long, citation markers that point at a returned citation.

    Args:
        text: The answer text as served.
        n_citations: How many citations the response returned; a marker ``[n]`` must satisfy ``1 <= n <= n_citations``.
        abstained: Whether the system declined to answer (an abstention must not cite anything).
        max_chars: Longest acceptable answer.
    """
    if n_citations < 0:
        raise ValueError(f"n_citations must be >= 0, got {n_citations}")
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    if not text.strip():
        return FormatCheck(ok=False, problems=("empty answer",))
    problems: list[str] = []
    if len(text) > max_chars:
        problems.append(f"answer is {len(text)} characters, longer than {max_chars}")
    markers = [int(number) for group in _MARKER.findall(text) for number in group.split(",")]
    if abstained:
        if markers or n_citations:
            problems.append("abstention carries citations")
    else:
        if not markers:
            problems.append("answer has no citation marker [n]")
        for number in sorted(set(markers)):
            if not 1 <= number <= n_citations:
                problems.append(f"citation marker [{number}] outside 1..{n_citations}")
    problems.extend(
        f"prompt template text left in answer: {leftover!r}" for leftover in _TEMPLATE_LEFTOVERS if leftover in text
    )
    return FormatCheck(ok=not problems, problems=tuple(problems))


# --------------------------------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySummary:
    """Latency percentiles in milliseconds (numpy's linear interpolation) over ``n`` requests."""

    p50: float
    p95: float
    p99: float
    mean: float
    max: float
    n: int


def latency_summary(values_ms: Sequence[float]) -> LatencySummary:
    """Percentiles, mean and maximum of request latencies in milliseconds; ValueError when empty or not finite."""
    import numpy as np

    values = np.asarray(values_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latencies to summarise")
    if values.ndim != 1 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("latencies must be a flat sequence of finite, non-negative milliseconds")
    p50, p95, p99 = (float(value) for value in np.percentile(values, [50, 95, 99], method="linear"))
    return LatencySummary(
        p50=p50, p95=p95, p99=p99, mean=float(values.mean()), max=float(values.max()), n=int(values.size)
    )
