"""Reviewed answers as a test set and as training pairs (``ragops review export``).

A labelled item of the review queue (:mod:`rag.review`) is a question with a human's judgement: which documents
answer it (the cited chunks marked relevant), what the right answer is (when the served one was wrong), or that the
corpus cannot answer it. That is what a QA test item and a labelled training query are made of, so the export
writes both:

* ``reviewed.jsonl``: the ``reviewed`` QA test set (the format of ``demo_qa``; :func:`evaluation.testsets.load_qa`
  reads it and names it by its hash like every test set), for ``ragops eval --testset <dir>/reviewed.jsonl``.
* ``reviewed_train.jsonl``: labelled queries (``query``, ``positive_doc_ids``) that ``ragops retrain --train`` reads.

No leakage: each *question* (normalised) goes to exactly one side, by a hash of its text, so a question users asked
twice cannot be trained on and tested with; the retraining flow also drops any training query that matches the gate's
test set. Refused requests (a guardrail blocked them) are not exported: they have no answer to judge.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.testsets import UNANSWERABLE_TAG, load_qa
from evaluation.trainset import normalize_query
from rag.review import ReviewItem

TESTSET_FILE = "reviewed.jsonl"
TRAIN_FILE = "reviewed_train.jsonl"


@dataclass(frozen=True)
class ReviewExport:
    """What an export wrote."""

    testset: str
    testset_sha256: str
    testset_items: int
    train: str
    train_pairs: int
    labelled: int
    skipped: dict[str, int]

    def to_json(self) -> dict[str, object]:
        """The ``--json`` output."""
        return asdict(self)


def side(question: str, test_share: float) -> str:
    """``test`` or ``train`` for a question: a stable hash of its normalised text against ``test_share``."""
    digest = hashlib.sha256(normalize_query(question).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_share else "train"


def _relevant_docs(item: ReviewItem) -> list[str]:
    assert item.label is not None
    docs = (item.doc_of(chunk) for chunk in item.label.relevant_chunk_ids)
    return list(dict.fromkeys(d for d in docs if d))


def qa_item(item: ReviewItem) -> dict[str, object] | None:
    """The QA test item of a labelled answer, or None when the label gives nothing to score against."""
    label = item.label
    assert label is not None
    tags = ["reviewed", label.verdict]
    if label.verdict == "unanswerable":
        return {"id": f"r-{item.request_id}", "question": item.question, "tags": [*tags, UNANSWERABLE_TAG]}
    answers = [label.right_answer] if label.verdict == "incorrect" and label.right_answer else []
    relevant = _relevant_docs(item)
    if not answers and not relevant:
        return None
    return {
        "id": f"r-{item.request_id}",
        "question": item.question,
        "answers": answers,
        "relevant_doc_ids": relevant,
        "tags": tags,
    }


def export_reviewed(items: Sequence[ReviewItem], out: Path, *, test_share: float = 0.5) -> ReviewExport:
    """Write the labelled ``items`` as the ``reviewed`` test set and as training pairs under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tests: list[dict[str, object]] = []
    pairs: list[dict[str, object]] = []
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    labelled = [i for i in items if i.label is not None]
    for item in sorted(labelled, key=lambda i: (i.queued_at, i.request_id)):
        if item.blocked:
            skip("refused by a guardrail")
            continue
        if side(item.question, test_share) == "test":
            found = qa_item(item)
            if found is None:
                skip("test side: no relevant chunk and no right answer")
            else:
                tests.append(found)
            continue
        relevant = _relevant_docs(item)
        if not relevant:
            skip("train side: no relevant chunk")
            continue
        pairs.append({"id": f"r-{item.request_id}", "query": item.question, "positive_doc_ids": relevant})
    testset_path, train_path = out / TESTSET_FILE, out / TRAIN_FILE
    testset_path.write_text("".join(json.dumps(t) + "\n" for t in tests), encoding="utf-8")
    train_path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    sha = load_qa(testset_path).sha256 if tests else hashlib.sha256(b"").hexdigest()
    return ReviewExport(
        testset=str(testset_path),
        testset_sha256=sha,
        testset_items=len(tests),
        train=str(train_path),
        train_pairs=len(pairs),
        labelled=len(labelled),
        skipped=skipped,
    )
