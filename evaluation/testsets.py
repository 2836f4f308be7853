"""Test sets: a fixed list of questions with what a good answer retrieves and says, identified by name and hash.

Two formats are read:

* **QA** (``.jsonl``): ``{"id", "question", "answers": [...], "relevant_doc_ids": [...], "tags": [...],
  "rubric"?}``, one object per line (see ``evaluation/testsets/README.md``). An item with no answers and no
  relevant documents is *unanswerable*: the system should abstain.
* **BEIR** (a folder with ``queries.jsonl`` and ``qrels/<split>.tsv``; the corpus is the index's business): only
  the queries that have judgements in the split are kept, with their graded relevance.

The content hash is SHA-256 over the canonical JSON of the items as evaluated (order included). Results are only
ever compared across the same hash: editing one question makes a new test set, and the gate says so instead of
comparing apples with pears.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from evaluation.errors import BadTestSet, EvaluationError

TestSetKind = Literal["qa", "beir"]

BUNDLED_DIR = Path(__file__).with_name("testsets")
BUNDLED: Mapping[str, str] = {"demo_qa": "demo_qa.jsonl"}
"""Test sets shipped with ragops, by name."""

UNANSWERABLE_TAG = "unanswerable"


@dataclass(frozen=True)
class EvalItem:
    """One question of a test set.

    ``relevant`` maps document ids to graded relevance (1 for QA sets; the qrels grade for BEIR).
    """

    id: str
    question: str
    answers: tuple[str, ...] = ()
    relevant: Mapping[str, int] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    rubric: str | None = None

    @property
    def unanswerable(self) -> bool:
        """The corpus holds no answer: the right response is to abstain."""
        return UNANSWERABLE_TAG in self.tags or (not self.answers and not self.relevant)

    def canonical(self) -> dict[str, object]:
        """The item as hashed: every field, relevance sorted."""
        return {
            "id": self.id,
            "question": self.question,
            "answers": list(self.answers),
            "relevant": dict(sorted(self.relevant.items())),
            "tags": list(self.tags),
            "rubric": self.rubric,
        }


@dataclass(frozen=True)
class TestSet:
    """A named, hashed, immutable list of :class:`EvalItem`."""

    __test__ = False  # not a pytest class, despite the name

    name: str
    kind: TestSetKind
    items: tuple[EvalItem, ...]
    source: str

    @property
    def sha256(self) -> str:
        """Content hash of the items (what results are compared across)."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps(item.canonical(), sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of :attr:`sha256`, for tags and messages."""
        return self.sha256[:12]

    def qrels(self) -> dict[str, dict[str, int]]:
        """Query id -> document id -> grade, for the items that have relevant documents."""
        return {item.id: dict(item.relevant) for item in self.items if item.relevant}

    def tag_counts(self) -> dict[str, int]:
        """How many items carry each tag."""
        counts: dict[str, int] = {}
        for item in self.items:
            for tag in item.tags:
                counts[tag] = counts.get(tag, 0) + 1
        return dict(sorted(counts.items()))

    def head(self, n: int) -> TestSet:
        """The first ``n`` items (a new test set with its own hash: for smoke runs, never for the gate)."""
        return TestSet(name=f"{self.name}[:{n}]", kind=self.kind, items=self.items[:n], source=self.source)


def load_testset(ref: str | Path, *, split: str = "test") -> TestSet:
    """A bundled test set by name (``demo_qa``), a QA ``.jsonl`` file, or a BEIR folder.

    Raises:
        BadTestSet: The reference names nothing, or the file is malformed (the message says where).
    """
    text = str(ref)
    if text in BUNDLED:
        return load_qa(BUNDLED_DIR / BUNDLED[text], name=text)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_beir(path, split=split)
    if path.is_file():
        return load_qa(path)
    known = ", ".join(sorted(BUNDLED))
    raise BadTestSet(
        f"test set {text!r} is neither a bundled name ({known}) nor an existing .jsonl file or BEIR folder"
    )


def jsonl_records(path: Path, *, error: type[EvaluationError] = BadTestSet) -> Iterator[tuple[int, dict[str, object]]]:
    """(line number, object) per non-blank line; any problem raises ``error`` naming the file and line."""
    try:
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise error(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
                if not isinstance(record, dict):
                    raise error(f"{path}:{lineno}: expected a JSON object")
                yield lineno, record
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None


def _strings(value: object, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadTestSet(f"{where}: {key!r} must be a list of strings")
    return tuple(value)


def load_qa(path: Path, *, name: str | None = None) -> TestSet:
    """A QA test set from JSONL (see the module docstring for the fields)."""
    items: list[EvalItem] = []
    seen: set[str] = set()
    for lineno, record in jsonl_records(path):
        where = f"{path}:{lineno}"
        item_id, question = record.get("id"), record.get("question")
        if not isinstance(item_id, str) or not item_id:
            raise BadTestSet(f"{where}: 'id' must be a non-empty string")
        if item_id in seen:
            raise BadTestSet(f"{where}: duplicate id {item_id!r}")
        if not isinstance(question, str) or not question.strip():
            raise BadTestSet(f"{where}: 'question' must be a non-empty string")
        rubric = record.get("rubric")
        if rubric is not None and not isinstance(rubric, str):
            raise BadTestSet(f"{where}: 'rubric' must be a string")
        seen.add(item_id)
        relevant = _strings(record.get("relevant_doc_ids"), where, "relevant_doc_ids")
        items.append(
            EvalItem(
                id=item_id,
                question=question,
                answers=_strings(record.get("answers"), where, "answers"),
                relevant={doc: 1 for doc in relevant},
                tags=_strings(record.get("tags"), where, "tags"),
                rubric=rubric,
            )
        )
    if not items:
        raise BadTestSet(f"{path}: no test items")
    return TestSet(name=name or path.stem, kind="qa", items=tuple(items), source=str(path))


def load_beir(folder: Path, *, split: str = "test") -> TestSet:
    """The judged queries of one qrels split of a BEIR folder, in qrels order."""
    queries_path, qrels_path = folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    for needed in (queries_path, qrels_path):
        if not needed.is_file():
            raise BadTestSet(f"{folder} is not a BEIR folder with split {split!r}: {needed} is missing")
    queries: dict[str, str] = {}
    for lineno, record in jsonl_records(queries_path):
        if "_id" not in record or not isinstance(record.get("text"), str):
            raise BadTestSet(f"{queries_path}:{lineno}: a query needs '_id' and a string 'text'")
        queries[str(record["_id"])] = str(record["text"])
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as handle:
        for lineno, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if not row or row[0] in ("query-id", "query_id"):
                continue
            if len(row) < 3:
                raise BadTestSet(f"{qrels_path}:{lineno}: expected query-id, corpus-id, score")
            try:
                grade = int(row[2])
            except ValueError:
                raise BadTestSet(f"{qrels_path}:{lineno}: score {row[2]!r} is not an integer") from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise BadTestSet(f"{qrels_path}: {len(missing)} judged queries are not in queries.jsonl, e.g. {missing[0]!r}")
    items = tuple(
        EvalItem(id=qid, question=queries[qid], relevant={d: g for d, g in docs.items() if g > 0})
        for qid, docs in qrels.items()
        if any(g > 0 for g in docs.values())
    )
    if not items:
        raise BadTestSet(f"{qrels_path}: no query has a relevant document")
    return TestSet(name=f"{folder.name}-{split}", kind="beir", items=items, source=str(folder))
