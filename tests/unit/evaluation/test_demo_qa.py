"""The demo QA set: well-formed, covers every tag it promises, and every reference answer is grounded in its documents.

Document ids are paths relative to a corpus built with :func:`pipelines.demo.build_demo_corpus`. Grounding is checked
against the sources: ``.md``/``.txt`` as written, ``.html`` with the tags removed, and generated ``.pdf``/``.docx``
through their ``_pdf_src``/``_docx_src`` Markdown (matched by file stem). Comparison is case-insensitive, with runs of
whitespace collapsed and Markdown emphasis markers (``**``, backticks) dropped, since they are markup, not text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import evaluation
from pipelines.demo import (
    DEMO_CORPUS_DIR,
    DOCX_SOURCE_DIR,
    PDF_SOURCE_DIR,
    build_demo_corpus,
)

QA_PATH = Path(evaluation.__file__).resolve().parent / "testsets" / "demo_qa.jsonl"
KEYS = {"id", "question", "answers", "relevant_doc_ids", "tags"}
KNOWN_TAGS = {
    "factoid",
    "unanswerable",
    "ambiguous",
    "adversarial",
    "multi_doc",
    "edge",
}
TAG_MINIMUMS = {
    "unanswerable": 25,
    "ambiguous": 15,
    "adversarial": 15,
    "multi_doc": 20,
    "edge": 5,
}


class _TextOnly(HTMLParser):
    """Collects the character data of an HTML page (entities already decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("**", "").replace("`", "")).strip().casefold()


def _source_text(doc_id: str) -> str:
    """The normalised text of a built document, read from its source in the package."""
    path = Path(doc_id)
    if path.suffix == ".pdf":
        source = DEMO_CORPUS_DIR / PDF_SOURCE_DIR / f"{path.stem}.md"
    elif path.suffix == ".docx":
        source = DEMO_CORPUS_DIR / DOCX_SOURCE_DIR / f"{path.stem}.md"
    else:
        source = DEMO_CORPUS_DIR / path
    text = source.read_text(encoding="utf-8")
    if path.suffix == ".html":
        parser = _TextOnly()
        parser.feed(text)
        parser.close()
        text = " ".join(parser.parts)
    return _normalise(text)


@pytest.fixture(scope="module")
def items() -> list[dict[str, Any]]:
    with QA_PATH.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def doc_ids(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    root = tmp_path_factory.mktemp("demo_corpus")
    return {path.relative_to(root).as_posix() for path in build_demo_corpus(root)}


def _answerable(item: dict[str, Any]) -> bool:
    return bool(item["answers"])


def test_has_at_least_200_items_with_unique_ids(items: list[dict[str, Any]]) -> None:
    assert len(items) >= 200
    ids = [item["id"] for item in items]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"q\d{3,}", item_id) for item_id in ids)


def test_items_are_well_formed(items: list[dict[str, Any]]) -> None:
    for item in items:
        assert set(item) == KEYS, item["id"]
        assert isinstance(item["question"], str) and item["question"].strip(), item["id"]
        assert all(isinstance(a, str) and a.strip() for a in item["answers"]), item["id"]
        assert len(set(item["relevant_doc_ids"])) == len(item["relevant_doc_ids"]), item["id"]
        assert item["tags"] and set(item["tags"]) <= KNOWN_TAGS, item["id"]
        # An answer comes from somewhere; a question without one cites nothing.
        assert bool(item["answers"]) == bool(item["relevant_doc_ids"]), item["id"]


def test_tag_minimums(items: list[dict[str, Any]]) -> None:
    counts = Counter(tag for item in items for tag in item["tags"])
    for tag, minimum in TAG_MINIMUMS.items():
        assert counts[tag] >= minimum, f"{tag}: {counts[tag]} < {minimum}"
    assert counts.most_common(1)[0][0] == "factoid"


def test_tags_match_the_shape_of_the_item(items: list[dict[str, Any]]) -> None:
    for item in items:
        tags = set(item["tags"])
        if "unanswerable" in tags:
            assert item["answers"] == [] and item["relevant_doc_ids"] == [], item["id"]
        else:
            assert _answerable(item) or tags == {"adversarial"}, item["id"]
        if "multi_doc" in tags:
            assert len(item["relevant_doc_ids"]) >= 2, item["id"]
        if "ambiguous" in tags:
            assert len(item["answers"]) >= 2, item["id"]


def test_relevant_docs_exist_in_the_built_corpus(items: list[dict[str, Any]], doc_ids: set[str]) -> None:
    missing = {(item["id"], doc) for item in items for doc in item["relevant_doc_ids"] if doc not in doc_ids}
    assert not missing


def test_every_corpus_document_is_the_target_of_some_question(items: list[dict[str, Any]], doc_ids: set[str]) -> None:
    cited = {doc for item in items for doc in item["relevant_doc_ids"]}
    assert doc_ids <= cited, sorted(doc_ids - cited)


def test_every_answer_appears_in_a_relevant_document(
    items: list[dict[str, Any]],
) -> None:
    texts: dict[str, str] = {}
    ungrounded: list[tuple[str, str]] = []
    for item in filter(_answerable, items):
        docs = [texts.setdefault(doc, _source_text(doc)) for doc in item["relevant_doc_ids"]]
        for answer in item["answers"]:
            if not any(_normalise(answer) in text for text in docs):
                ungrounded.append((item["id"], answer))
    assert not ungrounded
