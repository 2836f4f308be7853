"""Training data: loading labels, excluding every test question, synthetic pairs, and the great-expectations check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evaluation.errors import BadTrainingSet
from evaluation.testsets import EvalItem, TestSet, load_beir
from evaluation.trainset import (
    Exclusions,
    LabelledQuery,
    TrainingSet,
    TrainPair,
    deduplicate,
    default_training_data,
    exclude,
    load_labelled,
    validate_training_set,
)
from pipelines.reembed import StoredChunk

TESTSET = TestSet(
    name="t",
    kind="qa",
    items=(
        EvalItem(id="q1", question="When did Mount Kerrigan last erupt?", answers=("1847",)),
        EvalItem(id="q2", question="Which day is the bakery closed?", answers=("Monday",)),
    ),
    source="memory",
)


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_load_labelled_jsonl(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "train.jsonl",
        [
            {"query": "eruption year", "positive_doc_id": "a.md"},
            {"id": "x7", "query": "closing day", "positive_doc_ids": ["b.md", "c.md"], "negative_doc_ids": ["d.md"]},
        ],
    )
    first, second = load_labelled(path)
    assert first == LabelledQuery("train:1", "eruption year", ("a.md",))
    assert second == LabelledQuery("x7", "closing day", ("b.md", "c.md"), ("d.md",))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "", "positive_doc_id": "a"}', r"train.jsonl:2: 'query' must be a non-empty string"),
        ('{"query": "q"}', r"train.jsonl:2: 'positive_doc_id' is required"),
        ('{"query": "q", "positive_doc_id": {"a": 1}}', r"train.jsonl:2: 'positive_doc_id' must be a document id"),
        ("[1, 2]", r"train.jsonl:2: expected a JSON object"),
        ("{oops", r"train.jsonl:2: invalid JSON"),
    ],
)
def test_malformed_training_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"query": "fine", "positive_doc_id": "a"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(BadTrainingSet, match=message):
        load_labelled(path)


def test_load_labelled_beir_keeps_positive_grades_only(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t0\n2\td3\t2\n")
    _jsonl(tmp_path / "queries.jsonl", [{"_id": "1", "text": "one"}, {"_id": "2", "text": "two"}, {"_id": "3"}])
    assert load_labelled(tmp_path) == [LabelledQuery("1", "one", ("d1",)), LabelledQuery("2", "two", ("d3",))]
    with pytest.raises(BadTrainingSet, match="no qrels/dev.tsv"):
        load_labelled(tmp_path, split="dev")
    with pytest.raises(BadTrainingSet, match="neither a BEIR folder nor a JSONL file"):
        load_labelled(tmp_path / "missing")


def test_default_training_data_is_the_configured_one_else_the_beir_test_folder(tmp_path: Path) -> None:
    assert default_training_data("mine.jsonl", str(tmp_path), "train") == "mine.jsonl"
    assert default_training_data(None, "demo_qa", "train") is None
    assert default_training_data(None, str(tmp_path), "train") is None  # no train split
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "train.tsv").write_text("")
    assert default_training_data(None, str(tmp_path), "train") == str(tmp_path)


def test_exclusions_catch_test_ids_and_reworded_punctuation_of_test_questions() -> None:
    exclusions = Exclusions.from_testset(TESTSET)
    assert exclusions.reason("q1", "anything") == "test-set id"
    assert exclusions.reason("other", "  when did mount kerrigan LAST erupt ") == "test-set question text"
    assert exclusions.reason("other", "When did Mount Kerrigan first erupt?") is None
    dropped: Counter[str] = Counter()
    pairs = [
        TrainPair("When did Mount Kerrigan last erupt?", "p", origin="feedback", query_id="req-1"),
        TrainPair("bakery opening year", "p", origin="labelled", query_id="q2"),
        TrainPair("bakery opening year", "p", origin="labelled", query_id="ok"),
        TrainPair("Bakery opening year.", "p", origin="synthetic", query_id="ok2"),
    ]
    kept = deduplicate(exclude(pairs, exclusions, dropped), dropped)
    assert [p.query_id for p in kept] == ["ok"]
    assert dropped == Counter({"feedback: test-set question text": 1, "labelled: test-set id": 1, "duplicate pair": 1})


def _chunk(doc: str, position: int, title: str, text: str) -> StoredChunk:
    return StoredChunk(f"{doc}-{position}", doc, title, text, position, {}, None)


def test_validation_passes_a_clean_set_and_names_leaks_and_duplicates() -> None:
    exclusions = Exclusions.from_testset(TESTSET)
    clean = TrainingSet(
        pairs=(TrainPair("lava", "a passage", query_id="t1"), TrainPair("bread", "another", query_id="t2"))
    )
    report = validate_training_set(clean, exclusions)
    assert report.success and report.pairs == 2 and not report.failures()
    # Bypassing `exclude` (a bug, or a hand-written set): the suite still refuses it.
    leaky = TrainingSet(
        pairs=(
            TrainPair("Which day is the bakery closed?", "x", query_id="t3"),
            TrainPair("lava", "a passage", query_id="q1"),
            TrainPair("lava", "a passage", query_id="t4"),
            TrainPair("", "empty query", query_id="t5"),
        )
    )
    failures = " | ".join(validate_training_set(leaky, exclusions).failures())
    assert "not_be_in_set(query_id): 1 of 4" in failures
    assert "not_be_in_set(query_norm): 1 of 4" in failures
    assert "compound_columns_to_be_unique(query_norm,positive)" in failures
    assert "value_lengths_to_be_between(query)" in failures


def test_shuffled_labels_keep_queries_and_permute_positives() -> None:
    pairs = tuple(TrainPair(f"q{i}", f"p{i}", ("n",), query_id=str(i)) for i in range(20))
    shuffled = TrainingSet(pairs=pairs).shuffled_labels(seed=1)
    assert [p.query for p in shuffled.pairs] == [p.query for p in pairs]
    assert sorted(p.positive for p in shuffled.pairs) == sorted(p.positive for p in pairs)
    assert sum(p.positive != f"p{p.query_id}" for p in shuffled.pairs) >= 15
    assert all(not p.negatives for p in shuffled.pairs)


@pytest.mark.shared
def test_scifact_training_split_never_contains_a_test_claim(scifact: Path) -> None:
    """SciFact's train split repeats two test claims word for word under other ids; both are excluded."""
    test = load_beir(scifact, split="test")
    exclusions = Exclusions.from_testset(test)
    labelled = load_labelled(scifact, split="train")
    leaked = {q.query_id: exclusions.reason(q.query_id, q.query) for q in labelled}
    leaked = {k: v for k, v in leaked.items() if v}
    assert leaked == {"871": "test-set question text", "1291": "test-set question text"}
    assert len(labelled) >= 800
