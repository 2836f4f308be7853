"""FeedbackStore: ratings kept with the request they judge, turned into training pairs. (The service finds the rated
request in the request store: tests/unit/rag/test_record.py.)"""

from __future__ import annotations

import sqlite3
import threading
import uuid

import pytest

from flows.settings import Settings
from rag.errors import BadQuery
from rag.feedback import (
    MAX_COMMENT_CHARS,
    CitedChunk,
    FeedbackError,
    FeedbackPair,
    FeedbackStore,
    RequestSnapshot,
    normalise_rating,
)


def snapshot(
    question: str = "How large is the Reno plant?", *, texts: tuple[str | None, ...] = ("a", "b")
) -> RequestSnapshot:
    request_id = uuid.uuid4().hex
    return RequestSnapshot(
        request_id=request_id,
        at=1_700_000_000.0,
        question=question,
        answer="It covers 41,500 square metres [1].",
        abstained=not texts,
        stack_version=3,
        stack_name="dense-v1",
        index_version=7,
        citations=tuple(
            CitedChunk(
                n=n,
                chunk_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{request_id}/{n}")),
                doc_id=f"doc-{n}.md",
                title=f"Doc {n}",
                source=f"/corpus/doc-{n}.md",
                text=text,
            )
            for n, text in enumerate(texts, start=1)
        ),
    )


@pytest.fixture
def store(settings: Settings) -> FeedbackStore:
    return FeedbackStore(settings)


# ------------------------------------------------------------------------------------------------------- store
def test_training_pairs_label_every_cited_text_of_a_rated_answer(store: FeedbackStore) -> None:
    liked = snapshot("How large is the Reno plant?", texts=("Reno covers 41,500 m2.", "Reno employs 730."))
    disliked = snapshot("How much is the kettle?", texts=("The Lumen library closes at 8 pm.",))
    abstained = snapshot("Who won in 1954?", texts=())
    store.record(liked, "up", now=10.0)
    store.record(disliked, -1, now=20.0)
    store.record(abstained, "down", now=30.0)

    pairs = store.training_pairs()

    assert pairs == [
        FeedbackPair(
            question="How large is the Reno plant?",
            chunk_id=liked.citations[0].chunk_id,
            doc_id="doc-1.md",
            text="Reno covers 41,500 m2.",
            label="positive",
            request_id=liked.request_id,
        ),
        FeedbackPair(
            question="How large is the Reno plant?",
            chunk_id=liked.citations[1].chunk_id,
            doc_id="doc-2.md",
            text="Reno employs 730.",
            label="positive",
            request_id=liked.request_id,
        ),
        FeedbackPair(
            question="How much is the kettle?",
            chunk_id=disliked.citations[0].chunk_id,
            doc_id="doc-1.md",
            text="The Lumen library closes at 8 pm.",
            label="negative",
            request_id=disliked.request_id,
        ),
    ]  # the abstention cites nothing, so it is stored (see list) but gives no pair
    with pytest.raises(AttributeError):
        pairs[0].label = "negative"  # type: ignore[misc]  # frozen: what crosses into retraining is fixed


def test_pairs_skip_chunks_whose_text_is_unknown(store: FeedbackStore) -> None:
    old = snapshot(texts=("known text", None))  # an old request log record, its second chunk gone from the index
    store.record(old, "up")
    assert [p.text for p in store.training_pairs()] == ["known text"]
    stored = store.get(old.request_id)
    assert stored is not None and stored.request.citations[1].text is None  # the rating itself is kept


def test_repeated_feedback_replaces_the_earlier_rating(store: FeedbackStore) -> None:
    request = snapshot()
    first = store.record(request, "up", comment="great", now=100.0)
    assert (first.replaced, first.previous_rating, first.record.revisions) == (False, None, 1)

    second = store.record(request, "down", now=200.0)

    assert (second.replaced, second.previous_rating, second.record.revisions) == (True, "up", 2)
    record = second.record
    assert record.rating == "down" and record.comment is None  # replaced wholesale, comment included
    assert (record.created_at, record.updated_at) == (100.0, 200.0)
    assert store.count() == 1
    assert {p.label for p in store.training_pairs()} == {"negative"}


def test_record_keeps_the_whole_request_and_list_is_newest_first(store: FeedbackStore, settings: Settings) -> None:
    a, b, c = snapshot("first?"), snapshot("second?"), snapshot("third?")
    store.record(a, "up", now=1.0)
    store.record(b, "down", comment="  wrong plant  ", now=2.0)
    store.record(c, "up", now=3.0)
    store.record(a, "down", now=4.0)  # re-rated: now the most recent

    listed = store.list(limit=2)

    assert [r.request_id for r in listed] == [a.request_id, c.request_id]
    assert [r.request_id for r in store.list()] == [a.request_id, c.request_id, b.request_id]
    kept = store.get(b.request_id)
    assert kept is not None and kept.comment == "wrong plant" and kept.request == b  # the snapshot round-trips
    # Durable: a new store over the same file (another process, a restart) sees everything.
    assert FeedbackStore(settings).get(a.request_id) == store.get(a.request_id)
    assert (settings.feedback_dir / "feedback.db").is_file()
    with sqlite3.connect(settings.feedback_dir / "feedback.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(BadQuery, match="limit"):
        store.list(limit=0)


@pytest.mark.parametrize(("given", "expected"), [("up", "up"), ("down", "down"), (1, "up"), (-1, "down")], ids=str)
def test_ratings_accepted(given: object, expected: str) -> None:
    assert normalise_rating(given) == expected


@pytest.mark.parametrize("given", [True, False, 0, 2, "UP", "+1", "1", None, 1.0, "thumbs up"], ids=repr)
def test_ratings_refused(store: FeedbackStore, given: object) -> None:
    with pytest.raises(BadQuery, match='"up" or "down"'):
        store.record(snapshot(), given)
    assert store.count() == 0


def test_comment_limits(store: FeedbackStore) -> None:
    store.record(snapshot(), "up", comment="x" * MAX_COMMENT_CHARS)
    with pytest.raises(BadQuery, match=str(MAX_COMMENT_CHARS)):
        store.record(snapshot(), "up", comment="x" * (MAX_COMMENT_CHARS + 1))
    with pytest.raises(BadQuery, match="not valid Unicode"):
        store.record(snapshot(), "up", comment="bad \udc00 text")
    blank = store.record(snapshot(), "up", comment="   ")
    assert blank.record.comment is None


def test_concurrent_ratings_of_one_request_count_every_revision(store: FeedbackStore) -> None:
    request = snapshot()
    errors: list[BaseException] = []

    def rate(i: int) -> None:
        try:
            store.record(request, "up" if i % 2 else "down")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rate, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    record = store.get(request.request_id)
    assert record is not None and record.revisions == 8 and store.count() == 1


def test_a_newer_schema_is_refused(settings: Settings) -> None:
    FeedbackStore(settings)
    with sqlite3.connect(settings.feedback_dir / "feedback.db") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(FeedbackError, match="schema version 99"):
        FeedbackStore(settings)
