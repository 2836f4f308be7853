"""The extractive answerer: sentence choice, citations, abstention, streaming, speed."""

from __future__ import annotations

import time

import pytest

from pipelines.embed import Embedder
from pipelines.index import IndexReader
from rag.answer import ExtractiveAnswerer, _parse_chunk, split_sentences
from rag.errors import BadQuery
from rag.retrieve import Retriever
from rag.types import ABSTAIN_TEXT, AnswererConfig, RetrievalConfig, RetrievedChunk
from tests.fixtures.chunks import make_chunk


def chunk(n: int, doc_id: str, title: str, text: str, similarity: float, position: int = 0) -> RetrievedChunk:
    return make_chunk(n, doc_id, title, text, similarity, position)


CHUNKS = [
    chunk(
        1,
        "products/nr-500.md",
        "NR-500 Hauler",
        "The NR-500 Hauler is a mid-size robot.\n\nSpecifications\n\nIt carries up to 500 kg. "
        "Its top speed is 1.2 m/s. The battery lasts 10 hours on one charge.",
        0.62,
    ),
    chunk(
        2,
        "company/overview.md",
        "Company overview",
        "Northwind Robotics was founded in 2014 by Dr. Amara Okafor and Tobias Lindqvist. "
        "The company is based in Pittsburgh.",
        0.31,
    ),
    chunk(
        3,
        "support/faq.md",
        "FAQ",
        "How long does delivery take?\n\nDelivery takes 8 to 10 weeks after the order. "
        "Which languages does the user interface support?\n\nThe interface supports English, German and Japanese.",
        0.28,
    ),
]


class TestSplitting:
    def test_abbreviations_initials_and_decimals_do_not_end_sentences(self) -> None:
        blocks = split_sentences("Dr. Okafor met J. Smith at 3.5 km. It rained, e.g. all day. Then it stopped!")
        assert blocks == [["Dr. Okafor met J. Smith at 3.5 km.", "It rained, e.g. all day.", "Then it stopped!"]]

    def test_lines_are_blocks_and_bullets_lose_their_marker(self) -> None:
        assert split_sentences("Title\n\n- first item\n* second item\n\n1. third") == [
            ["Title"],
            ["first item"],
            ["second item"],
            ["third"],
        ]

    def test_fragment_left_by_chunk_overlap_is_dropped(self) -> None:
        parsed = _parse_chunk("x", "opens its office in Eindhoven.\n\nThe plant covers 14,000 square metres.", "T", 3)
        assert [s.text for s in parsed] == ["The plant covers 14,000 square metres."]


class TestAnswering:
    def test_answer_holds_the_fact_and_cites_its_chunk(self) -> None:
        answer = ExtractiveAnswerer().answer("What top speed does the NR-500 reach?", CHUNKS)
        assert not answer.abstained
        assert "1.2 m/s" in answer.text
        assert answer.citations[0].n == 1 and answer.citations[0].doc_id == "products/nr-500.md"
        assert "[1]" in answer.text
        assert answer.citations[0].chunk_id == CHUNKS[0].chunk_id and answer.citations[0].score == 0.62
        assert 0.0 < answer.support <= 1.0

    def test_citations_are_numbered_in_order_of_appearance(self) -> None:
        answer = ExtractiveAnswerer(AnswererConfig(max_sentences=3, min_support=0.0)).answer(
            "Who founded Northwind Robotics and when?", CHUNKS
        )
        assert "2014" in answer.text and "Okafor" in answer.text
        numbers = [c.n for c in answer.citations]
        assert numbers == list(range(1, len(numbers) + 1))
        assert answer.citations[0].doc_id == "company/overview.md"
        for citation in answer.citations:
            assert f"[{citation.n}]" in answer.text

    def test_faq_question_lines_are_context_not_answers(self) -> None:
        answer = ExtractiveAnswerer().answer("Which languages does the interface support?", CHUNKS)
        assert "English, German and Japanese" in answer.text
        assert "?" not in answer.text

    def test_unrelated_question_abstains_without_citations(self) -> None:
        answer = ExtractiveAnswerer().answer("What is the boiling point of mercury?", CHUNKS)
        assert answer.abstained
        assert "not found in the indexed documents" in answer.text
        assert answer.text == ABSTAIN_TEXT and answer.citations == ()
        assert answer.support < AnswererConfig().min_support

    def test_no_chunks_abstains(self) -> None:
        answer = ExtractiveAnswerer().answer("How fast is the NR-500?", [])
        assert answer.abstained and answer.support == 0.0

    def test_question_naming_an_unknown_model_scores_lower(self) -> None:
        answerer = ExtractiveAnswerer(AnswererConfig(min_support=0.0))
        known = answerer.answer("What is the top speed of the NR-500?", CHUNKS)
        unknown = answerer.answer("What is the top speed of the NR-900?", CHUNKS)
        assert unknown.support < known.support

    def test_max_sentences_is_respected(self) -> None:
        answer = ExtractiveAnswerer(AnswererConfig(max_sentences=1, min_support=0.0)).answer(
            "NR-500 speed battery payload", CHUNKS
        )
        assert len(answer.sentences) == 1

    def test_stream_yields_the_sentences_of_the_answer(self) -> None:
        answerer = ExtractiveAnswerer()
        pieces = list(answerer.stream("How long does delivery take?", CHUNKS))
        assert " ".join(pieces) == answerer.answer("How long does delivery take?", CHUNKS).text
        assert "8 to 10 weeks" in pieces[0]

    def test_empty_question_is_rejected(self) -> None:
        with pytest.raises(BadQuery):
            ExtractiveAnswerer().answer("  ", CHUNKS)

    def test_adds_well_under_five_milliseconds_per_query(self) -> None:
        chunks = [
            chunk(i, f"doc{i}.md", f"Document {i}", " ".join([CHUNKS[i % 3].text] * 2), 0.5 - i / 20) for i in range(5)
        ]
        answerer = ExtractiveAnswerer()
        answerer.warm_up()
        timings = []
        for _ in range(20):
            _parse_chunk.cache_clear()  # the worst case: chunks never seen before
            start = time.perf_counter()
            answerer.answer("What is the top speed and battery life of the NR-500 Hauler?", chunks)
            timings.append(time.perf_counter() - start)
        assert sorted(timings)[len(timings) // 2] < 0.005


@pytest.mark.slow
class TestOnTheIndex:
    @pytest.mark.parametrize("mode", ["dense", "hybrid"])
    def test_answer_contains_the_fact_and_cites_the_right_document(
        self, reader: IndexReader, embedder: Embedder, mode: str
    ) -> None:
        retriever = Retriever(reader, embedder, RetrievalConfig(mode=mode, top_k=5))  # type: ignore[arg-type]
        question = "In which year did Mount Kerrigan last erupt?"
        answer = ExtractiveAnswerer().answer(question, retriever.retrieve(question))
        assert not answer.abstained, answer
        assert "1847" in answer.text
        first = answer.text.index("1847")
        marker = answer.text.index("[", first)
        n = int(answer.text[marker + 1 : answer.text.index("]", marker)])
        cited = next(c for c in answer.citations if c.n == n)
        assert cited.doc_id == "acme/volcano.md"
        assert cited.title == "Mount Kerrigan" and cited.source.endswith("volcano.md")

    @pytest.mark.parametrize(
        "question", ["What is the population of Tokyo?", "Which programming language is Linux written in?"]
    )
    def test_unanswerable_question_abstains(self, reader: IndexReader, embedder: Embedder, question: str) -> None:
        retriever = Retriever(reader, embedder, RetrievalConfig(top_k=5))
        answer = ExtractiveAnswerer().answer(question, retriever.retrieve(question))
        assert answer.abstained, answer
        assert "not found in the indexed documents" in answer.text
