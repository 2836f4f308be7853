"""Answering from retrieved chunks without an LLM: pick the sentences that best answer the question and cite them.

How the extractive answerer decides (no model call, no download; about 2 ms for five chunks never seen before, under
1 ms for chunks seen before, because parsed chunks are cached by their content-derived id):

1. **Split** every retrieved chunk into sentences: lines first (partitioned documents put headings, list items and
   paragraphs on their own lines), then a sentence regex that leaves abbreviations ("Dr.", "e.g.", "Inc."),
   initials and decimals alone. Fragments that chunk overlap cut mid-sentence are dropped, sentences repeated by
   overlapping chunks of one document are kept once, FAQ question lines become context for the answer below them,
   and long unpunctuated lines (flattened tables) are answered with the 20-word window that holds the question.
2. **Score** each sentence against the question with the BM25 analyser the index uses (lower case, stop words out,
   Snowball stems; near forms such as "weigh"/"weight" and one-letter typos count as the question's word).
   ``coverage`` is the share of the question's IDF mass that the sentence contains, the IDF computed over the
   retrieved sentences: a question word found nowhere in them weighs most, so a question about something the
   documents never mention cannot reach full coverage. Words found only in the sentence's context (document title,
   the heading or FAQ question above it, the sentence before it) count half. The sentence score blends coverage with
   the chunk's dense cosine similarity, small bonuses for a block's first sentence and for definitions
   ("X is ...", "Top speed: ..."), a length prior, and a penalty when a how-many/when question meets a sentence
   without a number.
3. **Support** is ``0.5 * coverage + 0.5 * similarity`` of the best sentence, in [0, 1], lowered when a numeric
   question gets no number and when the question names an identifier (a model or version number) that appears in no
   retrieved text. Below ``min_support`` the answerer abstains with :data:`rag.types.ABSTAIN_TEXT`.
4. **Select** the best sentence and up to ``max_sentences - 1`` more that score at least 75% of it, match a question
   word and do not repeat a selected one; group them by chunk (best chunk first) in text order, and number the
   chunks as citations ``[1]``, ``[2]``.

Calibrated on the demo QA set (351 questions over the demo corpus, top 5): with dense retrieval 80% of answerable
questions get an answer holding the reference fact (86% with hybrid; 93%/96% of the facts are in the retrieved text at
all), and the default ``min_support`` of 0.35 abstains on 44% (dense) / 47% (hybrid) of the unanswerable ones while
answering 94% / 97% of the answerable ones. Paraphrases with no shared word ("fast" vs "top speed") are its limit.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipelines.sparse import Bm25Encoder
from rag.errors import BadQuery
from rag.types import ABSTAIN_TEXT, Answer, AnswererConfig, Citation, RetrievedChunk

# Abbreviations after which a full stop does not end a sentence (lower-cased, without the final dot).
ABBREVIATIONS = frozenset(
    {
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "no",
        "nos",
        "vs",
        "etc",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "fig",
        "figs",
        "eq",
        "eqs",
        "approx",
        "est",
        "al",
        "e.g",
        "i.e",
        "cf",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "min",
        "max",
        "ca",
        "resp",
        "vol",
        "pp",
        "art",
        "sec",
        "ch",
        "b.v",
        "u.s",
        "u.k",
    }
)
_SPLIT = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_LAST_WORD = re.compile(r"(\S+)$")
_TERMINAL = re.compile(r"[.!?][\"'”’)\]]*$")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_WORD = re.compile(r"[^\W_]+")
_PDF_GLYPH = re.compile(r"\(cid:\d+\)\s*")  # undecoded PDF bullet glyphs, e.g. "(cid:127) Payload: 200 kg"
_DIGIT = re.compile(r"\d")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_DEFINITION_QUESTION = re.compile(r"^\s*(what|who|which)\b", re.IGNORECASE)
_COPULA = frozenset({"is", "are", "was", "were", "means", "—", "–", "-", ":", "="})
_NUMERIC_QUESTION = re.compile(
    r"^\s*(how\s+(many|much|long|large|big|fast|heavy|far|old|often|loud|high|wide|tall|quickly|soon|deep)\b"
    r"|when\b|(in\s+)?(what|which)\s+(year|month|date|day|percentage|price|speed|temperature)\b)"
    r"|\b(cost|price|weigh|weight|speed|percent|percentage|how many|how much|number of|version)\b",
    re.IGNORECASE,
)
_QUESTION_WORDS = frozenset({"did", "doe", "do", "mean", "kind", "happen"})
_LONG_LINE_WORDS = 40  # longer unpunctuated lines (flattened tables) are answered with a window around the match
_WINDOW_WORDS = 20

_W_COVERAGE = 0.55
_W_SIMILARITY = 0.35
_W_FIRST_IN_BLOCK = 0.05
_W_DEFINITION = 0.06
_CONTEXT_CREDIT = 0.5
_NO_NUMBER_FACTOR = 0.8  # a "how many / when / how much" question answered by a sentence without any digit
_UNKNOWN_NAME_FACTOR = 0.7
_KEEP_RATIO = 0.75  # a further sentence must score at least this share of the best one
_MAX_OVERLAP = 0.6  # Jaccard overlap of terms above which a sentence repeats a selected one


@dataclass(frozen=True)
class _Sentence:
    text: str
    terms: frozenset[str]
    context: frozenset[str]
    block_start: bool
    n_words: int
    numbers: frozenset[str]
    words: tuple[str, ...] = ()  # only for long table-like lines: their words and each word's terms
    word_terms: tuple[frozenset[str], ...] = ()


@dataclass(frozen=True)
class _Scored:
    text: str
    terms: frozenset[str]
    chunk_rank: int
    index: int  # order within the chunk
    score: float
    coverage: float
    similarity: float
    new_terms: frozenset[str]
    has_number: bool


@dataclass(frozen=True)
class RankedSentence:
    """One sentence of a retrieved chunk with the extractive scorer's score for a question."""

    chunk_rank: int
    index: int  # order within the chunk
    text: str
    score: float


class Answerer(Protocol):
    """What the service and the pyfunc model need from any answerer."""

    def answer(self, question: str, chunks: Sequence[RetrievedChunk]) -> Answer:
        """The full answer with citations."""
        ...

    def stream(self, question: str, chunks: Sequence[RetrievedChunk]) -> Iterator[str]:
        """The answer in pieces: sentences to join with single spaces (extractive) or token deltas to concatenate
        (:mod:`rag.llm`, whose pieces may also carry a bracketed fallback notice)."""
        ...


@functools.cache
def _analyser() -> Bm25Encoder:
    """The index's term analyser (``terms`` does not depend on avgdl, so one shared instance serves all)."""
    return Bm25Encoder()


def split_sentences(text: str) -> list[list[str]]:
    """Blocks (lines) of ``text``, each a list of sentences, empty pieces removed."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        line = _BULLET.sub("", _PDF_GLYPH.sub("", line)).strip()
        if not line:
            continue
        sentences: list[str] = []
        start = 0
        for match in _SPLIT.finditer(line):
            piece = line[start : match.start()].strip()
            last = _LAST_WORD.search(piece)
            word = last.group(1).rstrip(".!?").lower() if last else ""
            if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue  # "Dr. Okafor", "J. Smith": not a sentence end
            sentences.append(piece)
            start = match.end()
        tail = line[start:].strip()
        if tail:
            sentences.append(tail)
        if sentences:
            blocks.append(sentences)
    return blocks


@functools.lru_cache(maxsize=8192)
def _parse_chunk(chunk_id: str, text: str, title: str, position: int) -> tuple[_Sentence, ...]:
    """Sentences of one chunk with their terms and context terms (cached: chunk ids are content-derived)."""
    analyser = _analyser()
    title_terms = frozenset(analyser.terms(title))
    blocks = split_sentences(text)
    if position > 0 and blocks and blocks[0] and blocks[0][0][:1].islower():
        blocks[0] = blocks[0][1:]  # chunk overlap cut this sentence: its head is in the previous chunk
    if blocks and blocks[-1] and not _TERMINAL.search(blocks[-1][-1]) and len(blocks[-1][-1].split()) <= 2:
        blocks[-1] = blocks[-1][:-1]  # a trailing fragment such as "Dr." where the chunk was cut
    out: list[_Sentence] = []
    heading: frozenset[str] = frozenset()
    for block in blocks:
        previous: frozenset[str] = frozenset()
        if len(block) == 1 and block[0].endswith("?"):
            heading = frozenset(analyser.terms(block[0]))  # an FAQ question: context for the answer below it
            continue
        for i, sentence in enumerate(block):
            terms = frozenset(analyser.terms(sentence))
            n_words = len(_WORD.findall(sentence))
            if n_words == 0 or sentence.endswith("?"):
                previous = terms
                continue
            words: tuple[str, ...] = ()
            word_terms: tuple[frozenset[str], ...] = ()
            if n_words > _LONG_LINE_WORDS and (not _TERMINAL.search(sentence) or n_words > 2 * _LONG_LINE_WORDS):
                words = tuple(sentence.split())
                word_terms = tuple(frozenset(analyser.terms(w)) for w in words)
            out.append(
                _Sentence(
                    text=sentence,
                    terms=terms,
                    context=(title_terms | heading | previous) - terms,
                    block_start=i == 0,
                    n_words=n_words,
                    numbers=frozenset(_NUMBER.findall(sentence)),
                    words=words,
                    word_terms=word_terms,
                )
            )
            previous = terms
        if len(block) == 1 and not _TERMINAL.search(block[0]) and len(block[0].split()) <= 8:
            heading = frozenset(analyser.terms(block[0]))
    return tuple(out)


@functools.lru_cache(maxsize=65536)
def _word_terms(word: str) -> frozenset[str]:
    return frozenset(_analyser().terms(word))


def _defines(text: str, wanted: frozenset[str]) -> bool:
    """True for ``"<question term> is|:|— ..."`` near the start: "Your buddy is ...", "Top speed: 1.5 m/s"."""
    words = text.split()[:9]
    for i, word in enumerate(words[:6]):
        if _word_terms(word) & wanted:
            if word.endswith(":"):
                return True
            follow = words[i + 1 : i + 4]
            return any(w.lower() in _COPULA or w.endswith(":") for w in follow)
    return False


def _near(a: str, b: str) -> bool:
    """Stems that differ by a short suffix ("weigh"/"weight") or one typo ("warrenti"/"warranti")."""
    if a == b or min(len(a), len(b)) < 4:
        return False
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    if long_.startswith(short) and len(long_) - len(short) <= 2:
        return True
    if len(short) < 5 or len(long_) - len(short) > 1 or a[0] != b[0]:
        return False
    if len(short) == len(long_):
        return sum(x != y for x, y in zip(short, long_, strict=True)) == 1
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def _excerpt(
    sentence: _Sentence, alias: dict[str, str], idf: dict[str, float]
) -> tuple[str, frozenset[str], frozenset[str]]:
    """The window of a long table-like line that holds most of the question: text, terms, numbers.

    ``alias`` maps every form of a question term found in the text to that question term.
    """
    hits = [i for i, terms in enumerate(sentence.word_terms) if not terms.isdisjoint(alias)]
    if not hits:
        return sentence.text, sentence.terms, sentence.numbers
    best: tuple[float, int, int, frozenset[str]] | None = None
    for hit in hits:
        start = max(0, hit - 2)
        end = min(len(sentence.words), start + _WINDOW_WORDS)
        terms = frozenset().union(*sentence.word_terms[start:end])
        value = sum(idf[q] for q in {alias[t] for t in terms if t in alias})
        if best is None or value > best[0] + 1e-9:
            best = (value, start, end, terms)
    assert best is not None
    _, start, end, terms = best
    text = " ".join(sentence.words[start:end])
    text = ("… " if start > 0 else "") + text + (" …" if end < len(sentence.words) else "")
    return text, terms, frozenset(_NUMBER.findall(text))


def _length_prior(words: int) -> float:
    if words < 3:
        return 0.75
    if words > 60:
        return 0.85
    return 1.0


def cite_sentence(sentence: str, n: int) -> str:
    """``"It weighs 8 kg [1]."``: the marker goes before the final punctuation when there is one."""
    match = _TERMINAL.search(sentence)
    if match:
        return f"{sentence[: match.start()].rstrip()} [{n}]{sentence[match.start() :]}"
    return f"{sentence} [{n}]"


class ExtractiveAnswerer:
    """Answers with the retrieved sentences that best cover the question, with numbered citations.

    Usage example::

        answerer = ExtractiveAnswerer(AnswererConfig(max_sentences=2, min_support=0.3))
        answer = answerer.answer("How large is the Reno plant?", retriever.retrieve("How large is the Reno plant?"))
        answer.text        # "The plant covers 14,000 square metres and can build up to 3,000 robots per year [1]."
        answer.citations   # (Citation(n=1, doc_id="company/company-overview.md", ...),)
    """

    def __init__(self, config: AnswererConfig | None = None) -> None:
        self.config = config or AnswererConfig()

    def warm_up(self) -> None:
        """Load the stemmer and stop-word list now rather than on the first question (idempotent)."""
        _analyser().terms("warm up")

    def answer(self, question: str, chunks: Sequence[RetrievedChunk]) -> Answer:
        """Select, order and cite sentences; abstain when the best support is below ``min_support``."""
        if not isinstance(question, str) or not question.strip():
            raise BadQuery("question is empty")
        scored, support = self._score(question, chunks)
        if not scored or support < self.config.min_support:
            return Answer(text=ABSTAIN_TEXT, citations=(), abstained=True, support=support, sentences=(ABSTAIN_TEXT,))
        chosen = self._select(scored)
        # Group by chunk (chunk of the best sentence first), sentences in their order within the chunk.
        chunk_order: list[int] = []
        for item in chosen:
            if item.chunk_rank not in chunk_order:
                chunk_order.append(item.chunk_rank)
        numbers = {rank: n for n, rank in enumerate(chunk_order, start=1)}
        ordered = sorted(chosen, key=lambda s: (chunk_order.index(s.chunk_rank), s.index))
        pieces = tuple(cite_sentence(s.text, numbers[s.chunk_rank]) for s in ordered)
        citations = tuple(
            Citation(
                n=numbers[rank],
                doc_id=chunks[rank].doc_id,
                source=chunks[rank].source,
                chunk_id=chunks[rank].chunk_id,
                position=chunks[rank].position,
                score=chunks[rank].score,
                title=chunks[rank].title,
            )
            for rank in chunk_order
        )
        return Answer(text=" ".join(pieces), citations=citations, abstained=False, support=support, sentences=pieces)

    def stream(self, question: str, chunks: Sequence[RetrievedChunk]) -> Iterator[str]:
        """Yield the answer's sentences one at a time (an abstention is one piece)."""
        yield from self.answer(question, chunks).sentences

    def rank_sentences(self, question: str, chunks: Sequence[RetrievedChunk]) -> list[RankedSentence]:
        """Every sentence of ``chunks``, best first, scored as the answer chooses them (what context fitting
        keeps when the chunks alone do not fit a token budget)."""
        scored, _ = self._score(question, chunks)
        return [RankedSentence(s.chunk_rank, s.index, s.text, s.score) for s in scored]

    # ---------------------------------------------------------------------------------------------- internals
    def _score(self, question: str, chunks: Sequence[RetrievedChunk]) -> tuple[list[_Scored], float]:
        query = set(_analyser().terms(question)) - _QUESTION_WORDS
        if not query or not chunks:
            return [], 0.0
        parsed: list[tuple[int, int, _Sentence]] = []
        seen: set[tuple[str, str]] = set()
        vocabulary: set[str] = set()
        for rank, chunk in enumerate(chunks):
            for index, sentence in enumerate(_parse_chunk(chunk.chunk_id, chunk.text, chunk.title, chunk.position)):
                key = (chunk.doc_id, sentence.text)
                if key in seen:  # the same sentence in two overlapping chunks of one document
                    continue
                seen.add(key)
                parsed.append((rank, index, sentence))
                vocabulary |= sentence.terms
        if not parsed:
            return [], 0.0
        # Each question term also matches near forms in the retrieved text (suffix variants, one-letter typos).
        by_initial: dict[str, list[str]] = {}
        for term in vocabulary:
            by_initial.setdefault(term[0], []).append(term)
        variants = {q: frozenset({q, *(t for t in by_initial.get(q[0], ()) if _near(q, t))}) for q in query}
        # Unify near forms to the question's own term, so every sentence is compared with question terms only.
        alias = {t: q for q, forms in variants.items() for t in forms}
        canon = [(rank, index, s, frozenset(alias.get(t, t) for t in s.terms)) for rank, index, s in parsed]
        n = len(canon)
        idf: dict[str, float] = {}
        for term in query:
            df = sum(1 for *_, terms in canon if term in terms)
            idf[term] = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        total = sum(idf.values())
        wants_number = bool(_NUMERIC_QUESTION.search(question))
        asked_numbers = frozenset(_NUMBER.findall(question))
        definitional = bool(_DEFINITION_QUESTION.search(question))
        all_forms = frozenset(alias)
        scored: list[_Scored] = []
        for rank, index, sentence, terms in canon:
            text, numbers, n_words = sentence.text, sentence.numbers, sentence.n_words
            if sentence.words:
                text, raw_terms, numbers = _excerpt(sentence, alias, idf)
                terms = frozenset(alias.get(t, t) for t in raw_terms)
                n_words = min(n_words, _WINDOW_WORDS)
            context = frozenset(alias.get(t, t) for t in sentence.context)
            matched = query & terms
            hinted = (query & context) - matched
            coverage = (sum(idf[t] for t in matched) + _CONTEXT_CREDIT * sum(idf[t] for t in hinted)) / total
            similarity = _similarity(chunks[rank])
            score = _W_COVERAGE * coverage + _W_SIMILARITY * similarity
            score += _W_FIRST_IN_BLOCK if sentence.block_start else 0.0
            if definitional and matched and _defines(text, all_forms):
                score += _W_DEFINITION
            score *= _length_prior(n_words)
            has_number = bool(numbers - asked_numbers)
            if wants_number and not has_number:
                score *= _NO_NUMBER_FACTOR
            scored.append(
                _Scored(text, terms, rank, index, score, coverage, similarity, frozenset(matched), has_number)
            )
        scored.sort(key=lambda s: (-s.score, s.chunk_rank, s.index))
        best = scored[0]
        support = 0.5 * best.coverage + 0.5 * best.similarity
        if not best.new_terms:
            support = min(support, 0.5 * best.similarity)  # nothing of the question in the text itself
        if wants_number and not best.has_number:
            support *= _NO_NUMBER_FACTOR
        named = {t for t in query if _DIGIT.search(t)}
        if named and not any(t in terms for *_, terms in canon for t in named):
            support *= _UNKNOWN_NAME_FACTOR  # the question names a model/version/number the text never mentions
        return scored, max(0.0, min(1.0, support))

    def _select(self, scored: list[_Scored]) -> list[_Scored]:
        best = scored[0]
        chosen = [best]
        for item in scored[1:]:
            if len(chosen) >= self.config.max_sentences or item.score < _KEEP_RATIO * best.score:
                break
            if not item.new_terms:
                continue
            if any(_jaccard(item.terms, c.terms) > _MAX_OVERLAP for c in chosen):
                continue
            chosen.append(item)
        return chosen


def _similarity(chunk: RetrievedChunk) -> float:
    value = chunk.similarity if chunk.similarity is not None else chunk.score
    return max(0.0, min(1.0, float(value)))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)
