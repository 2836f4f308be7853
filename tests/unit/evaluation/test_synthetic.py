"""Synthetic questions: the prompt built from the corpus, each filter on crafted cases, mining with the false-negative
guard, and the OpenAI-compatible generator against a real server on loopback (its error paths included)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from evaluation.errors import QuestionGenerationError
from evaluation.settings import SyntheticSettings
from evaluation.synthetic import (
    Candidate,
    EndpointQuestionLlm,
    clean_reply,
    conversation,
    distinct,
    few_shots,
    filtered,
    form_reason,
    heuristic_candidates,
    llm_candidates,
    question_llm,
    round_trip,
    with_negatives,
)
from pipelines.reembed import StoredChunk
from tests.fixtures.fake_openai import FakeOpenAI

LONG = (
    "Basaltic lava flows from the northern vent reached the Tesh valley within two days of the eruption. "
    "Ash from the 1847 eruption covered the farms below the crater for a whole season. "
    "The observatory on the rim has recorded tremors every spring since it opened. "
    "Hikers are told to carry three litres of water on the crater trail."
)


def _chunk(doc: str, position: int, title: str, text: str) -> StoredChunk:
    return StoredChunk(f"{doc}-{position}", doc, title, text, position, {}, None)


def _embed_text(chunk: StoredChunk) -> str:
    return f"{chunk.title}\n\n{chunk.text}" if chunk.title else chunk.text


CHUNKS = [
    _chunk("volcano", 0, "Lava and ash of the 1847 Kerrigan eruption", LONG),
    _chunk("volcano", 1, "Lava and ash of the 1847 Kerrigan eruption", "The crater lake froze in 1901. " * 6),
    _chunk("bakery", 0, "Rye sourdough baked in a wood-fired oven", "The bakery opens at six. " * 12),
    _chunk("notitle", 0, "", "A chunk with no title at all but enough words to be sampled here. " * 3),
]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("lava", "too short"),
        (" ".join(["word"] * 50), "too long"),
        ("1847 1901 2020 3 4 5 ?", "not language (mostly numbers or symbols)"),
        ("lava lava lava lava lava lava lava", "repetitive"),
        ("What is this text about?", "generic (about the text, not its content)"),
        ("What would you like to know about volcanoes?", "generic (about the text, not its content)"),
        ("Ash from the 1847 eruption covered the farms", "copied verbatim from its passage"),
        ("How far did the northern lava flows travel?", None),
    ],
)
def test_form_filter_on_crafted_questions(query: str, reason: str | None) -> None:
    assert form_reason(query, LONG, min_words=4, max_words=40) == reason


def test_replies_are_cleaned_to_one_line() -> None:
    assert clean_reply('Query: "How old is the crater lake?"\nExplanation: ...') == "How old is the crater lake?"
    assert clean_reply("\n\n  Question - When did it erupt?  ") == "When did it erupt?"
    assert clean_reply("") == ""


def test_the_prompt_takes_its_examples_from_the_corpus() -> None:
    shots = few_shots(CHUNKS, count=3, seed=1)
    # Only first chunks with a title of 5-20 words and 40+ words of text qualify.
    assert {s.query for s in shots} == {
        "Lava and ash of the 1847 Kerrigan eruption",
        "Rye sourdough baked in a wood-fired oven",
    }
    messages = conversation("The crater lake froze in 1901.", shots)
    assert messages[0]["role"] == "system" and messages[-1] == {
        "role": "user",
        "content": "Text: The crater lake froze in 1901.",
    }
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * len(shots)
    # A corpus without titles: a plain instruction, no examples.
    bare = conversation("x", few_shots(CHUNKS[3:], count=3, seed=1))
    assert len(bare) == 1 and "Reply with the question only" in bare[0]["content"]


def test_heuristic_candidates_drop_the_title_line_from_the_positive() -> None:
    found = heuristic_candidates(CHUNKS, embed_text=_embed_text, limit=100, seed=3)
    titles = [c for c in found if c.source == "title"]
    assert {c.query for c in titles} == {c.title for c in CHUNKS if c.title}
    for candidate in titles:
        assert candidate.query not in candidate.passage  # else the pair only teaches that a string matches itself
    cloze = [c for c in found if c.source == "ict"]
    assert cloze
    for candidate in cloze:  # a sentence of the chunk, and the chunk without that sentence
        assert candidate.query in candidate.chunk.text
        assert candidate.passage.count(candidate.query) == candidate.chunk.text.count(candidate.query) - 1
    assert heuristic_candidates(CHUNKS, embed_text=_embed_text, limit=100, seed=3) == found  # deterministic
    assert {
        c.source for c in heuristic_candidates(CHUNKS, embed_text=_embed_text, limit=9, seed=3, sources=("ict",))
    } == {"ict"}


def _candidate(query: str, chunk: StoredChunk = CHUNKS[0], source: str = "llm") -> Candidate:
    return Candidate(query, chunk, _embed_text(chunk), source)  # type: ignore[arg-type]


def test_duplicates_and_near_duplicates_keep_the_first() -> None:
    candidates = [
        _candidate("When did Kerrigan erupt?"),
        _candidate("when did kerrigan erupt"),
        _candidate("In which year did Kerrigan erupt?"),
        _candidate("How much water for the hike?"),
    ]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.141], [0.0, 1.0]], dtype=np.float32)
    dropped: Counter[str] = Counter()
    assert distinct(candidates, vectors, dropped, cosine=0.95) == [0, 3]
    assert dropped == Counter({"synthetic llm: duplicate": 1, "synthetic llm: near-duplicate": 1})


def test_round_trip_keeps_questions_whose_source_the_champion_finds() -> None:
    candidates = [_candidate("found at rank 2"), _candidate("found at rank 7"), _candidate("never found")]
    rankings = [["x", "volcano-0"], ["a", "b", "c", "d", "e", "f", "volcano-0"], ["a", "b"]]
    dropped: Counter[str] = Counter()
    assert round_trip(candidates, rankings, dropped, k=5) == [0]
    assert dropped == Counter({"synthetic llm: round trip (source not in the champion's top 5)": 2})


class Champion:
    """A champion whose embedding of a text is looked up in a table (unit vectors in 2-D)."""

    def __init__(self, vectors: dict[str, tuple[float, float]], rankings: dict[str, list[str]]) -> None:
        self.vectors = vectors
        self.rankings = rankings
        self.by_id = {c.chunk_id: c for c in CHUNKS}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.vectors.get(t, (0.0, 1.0)) for t in texts], dtype=np.float32)

    def ranked(
        self,
        queries: Sequence[str],
        *,
        vectors: np.ndarray | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        assert vectors is None or len(vectors) == len(queries)
        return [self.rankings.get(q, []) for q in queries]

    def chunk(self, chunk_id: str) -> StoredChunk:
        return self.by_id[chunk_id]

    def text(self, chunk: StoredChunk) -> str:
        return _embed_text(chunk)


def test_mining_skips_own_document_and_negatives_that_score_like_the_positive() -> None:
    query = "Where did the lava flows reach?"
    candidate = _candidate(query)
    bakery, volcano_lake = CHUNKS[2], CHUNKS[1]
    champion = Champion(
        {
            query: (1.0, 0.0),
            candidate.passage: (0.8, 0.6),  # cos 0.8 to the query
            _embed_text(bakery): (0.79, 0.613),  # cos 0.79: within the margin, a likely false negative
            _embed_text(CHUNKS[3]): (0.2, 0.98),  # cos 0.2: a real negative
        },
        {},
    )
    ranking = ["volcano-0", volcano_lake.chunk_id, "bakery-0", "notitle-0"]
    queries = champion.encode([query])
    mined, refused = with_negatives([candidate], [ranking], queries, champion, negatives=1, skip=1, margin=0.05)
    assert refused == 1
    assert mined[0].negatives == (_embed_text(CHUNKS[3]),)  # not its own document's chunk, not the false negative
    none, _ = with_negatives([candidate], [ranking], queries, champion, negatives=0, skip=1, margin=0.05)
    assert none[0].negatives == ()


def test_filters_in_order_count_every_drop() -> None:
    good, far, generic = "How far did the lava flow?", "What does the oven bake?", "What is this text about?"
    champion = Champion(
        {good: (1.0, 0.0), far: (0.0, 1.0)},
        {good: ["volcano-0"], far: ["volcano-0"]},
    )
    candidates = [_candidate(good), _candidate(generic), _candidate(far, CHUNKS[2], "title")]
    dropped: Counter[str] = Counter()
    kept, rankings, vectors = filtered(candidates, champion, SyntheticSettings(round_trip_k=3), dropped)
    assert [c.query for c in kept] == [good] and rankings == [["volcano-0"]]
    assert vectors.tolist() == [[1.0, 0.0]]  # the kept query's embedding, for mining
    assert dropped == Counter(
        {
            "synthetic llm: generic (about the text, not its content)": 1,
            "synthetic title: round trip (source not in the champion's top 3)": 1,
        }
    )


def test_llm_questions_through_an_openai_compatible_endpoint() -> None:
    with FakeOpenAI(reply=lambda prompt: 'Question: "How far did the lava flows reach?"') as fake:
        llm = EndpointQuestionLlm(fake.base_url, "gen", api_key="k", concurrency=2, max_new_tokens=16, timeout_s=5.0)
        generation = llm_candidates(CHUNKS, llm, limit=10, shots=1, seed=0, embed_text=_embed_text)
    # every chunk of 20+ words except the one used as the example is asked about, once
    assert generation.asked == 3 and len(fake.requests) == 3
    assert {c.query for c in generation.candidates} == {"How far did the lava flows reach?"}
    assert all(c.source == "llm" and c.query_id == f"llm:{c.chunk.chunk_id}" for c in generation.candidates)
    body = fake.requests[0].body
    assert body["model"] == "gen" and body["max_tokens"] == 16 and body["temperature"] == 0.0
    assert fake.requests[0].headers.get("Authorization") == "Bearer k"


def test_endpoint_errors_name_the_endpoint() -> None:
    with FakeOpenAI(fail_status=503) as fake:
        llm = EndpointQuestionLlm(fake.base_url, "gen", api_key=None, concurrency=1, max_new_tokens=8, timeout_s=5.0)
        with pytest.raises(QuestionGenerationError, match=rf"{fake.base_url} failed: HTTP 503"):
            llm.complete([[{"role": "user", "content": "x"}]])
    with FakeOpenAI(delay_s=3.0) as slow:
        llm = EndpointQuestionLlm(slow.base_url, "gen", api_key=None, concurrency=1, max_new_tokens=8, timeout_s=0.5)
        with pytest.raises(QuestionGenerationError, match="APITimeoutError"):
            llm.complete([[{"role": "user", "content": "x"}]])
    with pytest.raises(QuestionGenerationError, match="needs RAGOPS_FINETUNE__SYNTHETIC__ENDPOINT_URL"):
        from rag.settings import LocalLlmSettings

        question_llm(SyntheticSettings(questions="endpoint"), LocalLlmSettings(), cache_dir=None)  # type: ignore[arg-type]
    assert question_llm(SyntheticSettings(questions="off"), LocalLlmSettings(), cache_dir=None) is None  # type: ignore[arg-type]
