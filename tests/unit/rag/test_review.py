"""The review queue: each queueing rule, label checks, the queue in a real request store (SQLite), and the export
as a test set and training pairs with no question on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.review import export_reviewed, side
from evaluation.testsets import load_testset
from evaluation.trainset import load_labelled
from rag.errors import BadQuery
from rag.feedback import CitedChunk, UnknownRequest
from rag.review import ReviewLabel, ReviewSettings, queue_reasons
from rag.store import RequestRecord, RequestStore

RULES = ReviewSettings(sample_rate=0.1, low_support=0.4)


def reasons(**kwargs: object) -> tuple[str, ...]:
    base: dict[str, object] = {"answered": True, "support": 0.9, "guardrail_triggered": False, "draw": 0.5}
    return queue_reasons(RULES, **{**base, **kwargs})  # type: ignore[arg-type]


def test_each_rule_queues_for_its_own_reason() -> None:
    assert reasons() == ()
    assert reasons(support=0.2) == ("low_support",)
    assert reasons(guardrail_triggered=True) == ("guardrail",)
    assert reasons(draw=0.05) == ("sampled",)
    assert reasons(support=0.1, guardrail_triggered=True, draw=0.0) == ("low_support", "guardrail", "sampled")
    # a refused request has no answer to sample or to judge for support, but its guardrail verdict is reviewable
    assert reasons(answered=False, support=None, guardrail_triggered=True, draw=0.0) == ("guardrail",)
    off = ReviewSettings(enabled=False)
    assert queue_reasons(off, answered=True, support=0.0, guardrail_triggered=True, draw=0.0) == ()
    quiet = ReviewSettings(guardrails=False, sample_rate=0.0)
    assert queue_reasons(quiet, answered=True, support=0.9, guardrail_triggered=True, draw=0.0) == ()


def test_labels_are_checked_against_the_answer() -> None:
    def label(**kwargs: object) -> ReviewLabel:
        return ReviewLabel.checked(reviewer="ops", at=1.0, cited=("c1", "c2"), **kwargs)  # type: ignore[arg-type]

    assert label(verdict="correct", relevant_chunk_ids=["c2", "c2"]).relevant_chunk_ids == ("c2",)
    assert label(verdict="incorrect", right_answer=" 2014 ").right_answer == "2014"
    with pytest.raises(BadQuery, match="verdict must be one of"):
        label(verdict="maybe")
    with pytest.raises(BadQuery, match="needs the right answer"):
        label(verdict="incorrect")
    with pytest.raises(BadQuery, match="not cited: c9"):
        label(verdict="correct", relevant_chunk_ids=["c9"])
    with pytest.raises(BadQuery, match="no relevant chunks"):
        label(verdict="unanswerable", relevant_chunk_ids=["c1"])
    with pytest.raises(BadQuery, match="must be text"):
        label(verdict="incorrect", right_answer=5)


def record(n: int, question: str, *, review: tuple[str, ...] = (), at: float = 100.0) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{n}",
        at=at + n,
        principal="alice",
        question=question,
        stack_version=1,
        index_version=1,
        answer=f"answer {n}",
        citations=(
            CitedChunk(1, f"c{n}a", f"doc{n}a.md", "A", "a.md", "text a"),
            CitedChunk(2, f"c{n}b", f"doc{n}b.md", "B", "b.md", "text b"),
        ),
        review=review,
    )


@pytest.fixture
def store(tmp_path: Path) -> RequestStore:
    return RequestStore(f"sqlite:///{tmp_path / 'requests.db'}", retention_days=None, purge_interval_s=None)


def test_the_queue_in_the_request_store(store: RequestStore) -> None:
    with store:
        store.record(record(1, "Who founded Northwind?", review=("sampled",)))
        store.record(record(2, "Where is the Reno plant?"))
        store.record(record(3, "What is the NR-200 warranty?", review=("low_support", "guardrail")))
        store.flush()
        assert [i.request_id for i in store.review_items()] == ["r1", "r3"]  # queued with their records
        assert store.queue_review("r1", ("thumbs_down",)) is False  # merged into the queued item
        assert store.queue_review("r2", ("thumbs_down",)) is True
        assert store.review_item("r1").reasons == ("thumbs_down", "sampled")  # type: ignore[union-attr]
        with pytest.raises(UnknownRequest):
            store.queue_review("nope", ("thumbs_down",))
        item = store.review_item("r3")
        assert item is not None and item.question.startswith("What is") and item.cited_chunk_ids == ("c3a", "c3b")

        _, label = store.label_review("r3", verdict="correct", reviewer="acme/ops", relevant_chunk_ids=["c3b"])
        assert label.relevant_chunk_ids == ("c3b",)
        assert store.review_counts() == {"pending": 2, "labelled": 1}
        assert [i.request_id for i in store.review_items(status="labelled")] == ["r3"]
        with pytest.raises(UnknownRequest):
            store.label_review("r9", verdict="correct", reviewer="ops")
        with pytest.raises(BadQuery):
            store.review_items(status="open")

        # an erased request leaves the queue with it
        assert store.erase(["doc3b.md"]) == ("r3",)
        assert store.review_item("r3") is None and store.review_counts()["labelled"] == 0
        # and so does a purged one
        assert store.purge(older_than=102.5) == 2
        assert store.purge(older_than=102.5) == 0  # already gone: r1 and r2 were purged just above
        assert store.review_items(status=None) == []


def test_the_export_splits_by_question_and_reads_back(store: RequestStore, tmp_path: Path) -> None:
    questions = [f"Question number {n} about the product?" for n in range(40)]
    with store:
        for n, q in enumerate(questions):
            store.record(record(n, q, review=("sampled",)))
        store.record(record(40, questions[0].upper() + "  ", review=("sampled",)))  # the same question again
        store.flush()
        for n in range(41):
            if n % 4 == 0:
                store.label_review(f"r{n}", verdict="incorrect", reviewer="ops", right_answer=f"fact {n}")
            elif n % 4 == 1:
                store.label_review(f"r{n}", verdict="unanswerable", reviewer="ops")
            else:
                store.label_review(f"r{n}", verdict="correct", reviewer="ops", relevant_chunk_ids=[f"c{n}a"])
        items = store.labelled_reviews()
    result = export_reviewed(items, tmp_path / "out")
    testset = load_testset(result.testset)
    assert testset.name == "reviewed" and testset.sha256 == result.testset_sha256
    assert result.testset_items == len(testset.items) > 0 and result.train_pairs > 0
    pairs = load_labelled(result.train)
    assert len(pairs) == result.train_pairs
    tested = {" ".join(i.question.lower().split()) for i in testset.items}
    trained = {" ".join(p.query.lower().split()) for p in pairs}
    assert not tested & trained  # no question on both sides
    assert {side(questions[0], 0.5)} == {side(questions[0].upper() + "  ", 0.5)}
    by_id = {i.id: i for i in testset.items}
    unanswerable = [i for i in testset.items if "unanswerable" in i.tags]
    assert all(i.unanswerable for i in unanswerable)
    assert all(p.positive_doc_ids for p in pairs)
    assert any(i.answers for i in by_id.values()) and any(i.relevant for i in by_id.values())
    again = export_reviewed(items, tmp_path / "again")
    assert again.testset_sha256 == result.testset_sha256  # the same labels, the same versioned set
    assert json.loads(Path(result.train).read_text().splitlines()[0])["query"]


def test_the_cli_lists_and_exports(settings: object, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from evaluation.monitor import open_store
    from flows.cli import app

    with open_store(settings) as store:  # type: ignore[arg-type]
        for n in range(6):
            store.record(record(n, f"Which part number {n} fits?", review=("sampled",)))
        store.flush()
        for n in range(4):
            store.label_review(f"r{n}", verdict="correct", reviewer="ops", relevant_chunk_ids=[f"c{n}a"])
    runner = CliRunner()
    listed = runner.invoke(app, ["review", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    body = json.loads(listed.stdout)
    assert body["counts"] == {"pending": 2, "labelled": 4} and [i["request_id"] for i in body["items"]] == ["r4", "r5"]
    text = runner.invoke(app, ["review", "list", "--status", "all"])
    assert text.exit_code == 0 and "2 pending, 4 labelled" in text.stdout and "r0" in text.stdout
    assert runner.invoke(app, ["review", "list", "--status", "done"]).exit_code == 2
    exported = runner.invoke(app, ["review", "export", "--out", str(tmp_path / "x"), "--json"])
    assert exported.exit_code == 0, exported.output
    result = json.loads(exported.stdout)
    assert result["labelled"] == 4 and result["testset_items"] + result["train_pairs"] == 4
    assert Path(result["testset"]).is_file() and Path(result["train"]).is_file()
