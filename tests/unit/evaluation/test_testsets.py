"""Test-set loading: both formats, clear errors for malformed files, and a hash that tracks the content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.errors import BadTestSet
from evaluation.testsets import load_beir, load_qa, load_testset


def _qa(path: Path, items: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n", encoding="utf-8")
    return path


GOOD = [
    {"id": "a", "question": "When?", "answers": ["1847"], "relevant_doc_ids": ["x.md"], "tags": ["factoid"]},
    {"id": "b", "question": "Revenue?", "answers": [], "relevant_doc_ids": [], "tags": ["unanswerable"]},
]


def test_bundled_demo_qa_loads_with_its_tags() -> None:
    testset = load_testset("demo_qa")
    assert testset.kind == "qa" and len(testset.items) >= 200
    counts = testset.tag_counts()
    assert counts["unanswerable"] >= 20 and counts["adversarial"] >= 10 and counts["ambiguous"] >= 10
    assert all(item.unanswerable for item in testset.items if "unanswerable" in item.tags)
    assert len(testset.sha256) == 64 and testset.sha256 == load_testset("demo_qa").sha256


def test_hash_changes_when_any_item_changes(tmp_path: Path) -> None:
    first = load_qa(_qa(tmp_path / "a.jsonl", GOOD))
    edited = [dict(GOOD[0], answers=["1848"]), GOOD[1]]
    second = load_qa(_qa(tmp_path / "b.jsonl", edited))
    assert first.sha256 != second.sha256
    assert load_qa(_qa(tmp_path / "c.jsonl", GOOD)).sha256 == first.sha256  # the file name is not content


def test_qa_items_keep_fields_and_unanswerable_flag(tmp_path: Path) -> None:
    testset = load_qa(_qa(tmp_path / "set.jsonl", GOOD))
    assert testset.items[0].relevant == {"x.md": 1} and testset.items[0].answers == ("1847",)
    assert not testset.items[0].unanswerable and testset.items[1].unanswerable
    assert testset.qrels() == {"a": {"x.md": 1}}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "question": "q"}', "{not json"], "invalid JSON"),
        (['{"id": "a", "question": "q"}', '{"id": "a", "question": "r"}'], "duplicate id 'a'"),
        (['{"id": "a"}'], "'question' must be a non-empty string"),
        (['{"id": "a", "question": "q", "answers": "1847"}'], "'answers' must be a list of strings"),
        (["[1, 2]"], "expected a JSON object"),
        ([""], "no test items"),
    ],
)
def test_malformed_qa_files_say_where(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BadTestSet, match=message):
        load_qa(path)


def test_unknown_reference_lists_bundled_names(tmp_path: Path) -> None:
    with pytest.raises(BadTestSet, match="demo_qa"):
        load_testset(str(tmp_path / "nothing-here"))


def test_beir_keeps_judged_queries_with_grades(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    queries = [{"_id": "1", "text": "first"}, {"_id": "2", "text": "second"}, {"_id": "3", "text": "unjudged"}]
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries), encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n1\td1\t2\n1\td2\t1\n2\td3\t0\n", encoding="utf-8"
    )
    testset = load_beir(tmp_path)
    assert [i.id for i in testset.items] == ["1"]  # query 2 has only a zero grade, query 3 no judgement
    assert testset.items[0].relevant == {"d1": 2, "d2": 1} and testset.kind == "beir"
    with pytest.raises(BadTestSet, match="split 'dev'"):
        load_beir(tmp_path, split="dev")


def test_beir_scifact_test_split(scifact: Path) -> None:
    testset = load_testset(scifact)
    assert testset.kind == "beir" and len(testset.items) == 300
    assert all(item.relevant for item in testset.items)
