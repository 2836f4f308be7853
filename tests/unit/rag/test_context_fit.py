"""Context fitting: over budget, the lowest-ranked chunks go first, then the best chunk is cut to its best
sentences, whole sentences only, in their own order."""

from __future__ import annotations

from collections.abc import Sequence

from rag.context_fit import fit_context
from tests.fixtures.chunks import make_chunk

QUESTION = "When did Mount Kerrigan last erupt?"
VOLCANO = (
    "Mount Kerrigan is a dormant volcano in the Aldren Range. "
    "Its last eruption happened in 1847 and covered the valley of Tesh in ash. "
    "The summit reaches 3,412 metres above sea level. "
    "Guided tours of the crater are offered in summer."
)
CHUNKS = [
    make_chunk(1, "volcano.md", "Mount Kerrigan", VOLCANO, 0.8),
    make_chunk(2, "hike.md", "Hiking", "The trail to the top of Mount Kerrigan starts in the village of Lorn.", 0.6),
    make_chunk(3, "bakery.md", "Bakery", "The Copper Kettle Bakery opened in 1962 on Harbour Street.", 0.2),
]


def words(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def test_within_budget_nothing_changes() -> None:
    fitted = fit_context(QUESTION, CHUNKS, budget=1000, count_tokens=words)
    assert fitted.chunks == tuple(CHUNKS) and fitted.saved == 0 and fitted.dropped == 0


def test_lowest_ranked_chunks_are_dropped_first() -> None:
    total = sum(words([c.text for c in CHUNKS]))
    fitted = fit_context(QUESTION, CHUNKS, budget=total - 1, count_tokens=words)
    assert [c.doc_id for c in fitted.chunks] == ["volcano.md", "hike.md"]
    assert fitted.dropped == 1 and fitted.trimmed == 0
    assert fitted.tokens_after <= total - 1 and fitted.saved == words([CHUNKS[2].text])[0]


def test_the_best_chunk_alone_too_long_is_cut_to_its_best_whole_sentences() -> None:
    fitted = fit_context(QUESTION, CHUNKS, budget=16, count_tokens=words)
    assert len(fitted.chunks) == 1 and fitted.trimmed == 1
    chunk = fitted.chunks[0]
    assert chunk.chunk_id == CHUNKS[0].chunk_id  # still citable as the retrieved chunk
    assert "1847" in chunk.text and fitted.tokens_after <= 16
    sentences = [s.strip() + "." for s in VOLCANO.split(".") if s.strip()]
    kept = [s for s in sentences if s in chunk.text]
    assert kept and " ".join(kept) == chunk.text  # whole sentences, in the document's order


def test_stored_token_counts_are_used_instead_of_tokenizing() -> None:
    from dataclasses import replace

    counted: list[str] = []

    def spy(texts: Sequence[str]) -> list[int]:
        counted.extend(texts)
        return words(texts)

    stored = [replace(c, metadata={"n_tokens": 10}) for c in CHUNKS]
    fitted = fit_context(QUESTION, stored, budget=20, count_tokens=spy)
    assert counted == [] and len(fitted.chunks) == 2 and fitted.tokens_before == 30
