"""The great-expectations gate on chunk batches: what passes, what is rejected, and how the reasons read.

One warmed :class:`ChunkValidator` is shared by the module because importing GX and building its context takes
seconds; every test only calls ``validate``, which is what production does per batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import pytest

from pipelines import quality
from pipelines.errors import ConfigError
from pipelines.quality import ChunkValidator, ValidationReport
from pipelines.settings import QualitySettings
from pipelines.types import Chunk, MetadataValue

SETTINGS = QualitySettings(
    min_chars=1,
    max_chars=500,
    min_printable_ratio=0.95,
    max_duplicate_share=0.5,
    allowed_metadata_keys=["tenant", "lang", "tags"],
)

EXPECTATIONS = (
    "expect_column_values_to_not_be_null(text)",
    "expect_column_value_lengths_to_be_between(text)",
    "expect_column_values_to_be_unique(chunk_id)",
    "expect_column_values_to_be_in_set(metadata_ok)",
    "expect_column_values_to_be_between(printable_ratio)",
    "expect_column_proportion_of_unique_values_to_be_between(text_hash)",
)


def make_chunk(
    doc_id: str,
    position: int,
    text: str | None = None,
    *,
    chunk_id: str | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> Chunk:
    """A chunk with distinct, clean text unless told otherwise."""
    body = text if text is not None else f"Paragraph {position} of document {doc_id} explains one distinct idea."
    return Chunk(
        chunk_id=chunk_id or f"{doc_id}:{position}",
        doc_id=doc_id,
        position=position,
        text=body,
        embed_text=f"{doc_id}\n{body}",
        n_tokens=12,
        truncated=False,
        source=f"/data/{doc_id}.txt",
        title=doc_id,
        doc_hash=f"hash-{doc_id}",
        metadata=metadata if metadata is not None else {"tenant": "acme", "lang": "en"},
    )


def clean_doc(doc_id: str, n_chunks: int = 2) -> list[Chunk]:
    return [make_chunk(doc_id, position) for position in range(n_chunks)]


def outcome_of(report: ValidationReport, expectation: str) -> bool:
    return next(outcome.success for outcome in report.expectations if outcome.expectation == expectation)


def kept_docs(kept: list[Chunk]) -> set[str]:
    return {chunk.doc_id for chunk in kept}


@pytest.fixture(scope="module")
def validator() -> Iterator[ChunkValidator]:
    checker = ChunkValidator(SETTINGS)
    checker.warm_up()
    yield checker


# --- clean batches ----------------------------------------------------------------------------------------------------


def test_clean_batch_passes_every_expectation(validator: ChunkValidator) -> None:
    chunks = clean_doc("a") + clean_doc("b", 3) + clean_doc("c", 1)

    kept, report = validator.validate(chunks)

    assert kept == chunks
    assert report.success
    assert report.batch_size == len(chunks)
    assert report.rejected == {}
    assert tuple(outcome.expectation for outcome in report.expectations) == EXPECTATIONS
    assert all(outcome.success and outcome.unexpected_count == 0 for outcome in report.expectations)


def test_empty_batch_returns_empty_report_without_great_expectations() -> None:
    cold = ChunkValidator(SETTINGS)

    kept, report = cold.validate([])

    assert kept == []
    assert report.success and report.batch_size == 0 and report.rejected == {}
    assert not cold.is_warm


def test_validator_is_built_once_and_keeps_no_results(validator: ChunkValidator) -> None:
    context = validator._context
    validator.validate(clean_doc("a"))
    validator.validate(clean_doc("b"))

    assert validator._context is context
    assert context is not None
    assert context.validation_results_store.list_keys() == []


# --- row-level failures map back to whole documents -------------------------------------------------------------------


def test_empty_text_rejects_that_document_only(validator: ChunkValidator) -> None:
    bad = [make_chunk("b", 0), make_chunk("b", 1, "")]
    chunks = clean_doc("a") + bad + clean_doc("c")

    kept, report = validator.validate(chunks)

    assert kept_docs(kept) == {"a", "c"}
    assert not any(chunk.doc_id == "b" for chunk in kept), "every chunk of a failing document is dropped"
    assert dict(report.rejected) == {"b": "chunk 1: empty text"}
    assert not report.success
    assert not outcome_of(report, "expect_column_value_lengths_to_be_between(text)")


def test_too_long_text_is_rejected(validator: ChunkValidator) -> None:
    chunks = [*clean_doc("a"), make_chunk("long", 0, "word " * 200)]

    kept, report = validator.validate(chunks)

    assert kept_docs(kept) == {"a"}
    assert report.rejected["long"] == "chunk 0: text too long (1,000 characters > 500)"


def test_missing_text_is_rejected(validator: ChunkValidator) -> None:
    chunks = [*clean_doc("a"), make_chunk("none", 0, None)]
    broken = Chunk(**{**chunks[-1].__dict__, "text": None})  # type: ignore[arg-type]  # a buggy upstream step

    kept, report = validator.validate([*chunks[:-1], broken])

    assert kept_docs(kept) == {"a"}
    assert "text is missing" in report.rejected["none"]
    assert not outcome_of(report, "expect_column_values_to_not_be_null(text)")


@pytest.mark.parametrize(
    "garbage",
    [
        "\x00\x01\x02\x03\x04\x05\x06\x07\x08 readable tail",
        "\ufffd" * 40 + " ok",
    ],
    ids=["control-bytes", "replacement-chars"],
)
def test_garbled_chunk_is_rejected_as_unprintable(validator: ChunkValidator, garbage: str) -> None:
    chunks = [*clean_doc("a"), make_chunk("pdf", 0), make_chunk("pdf", 1, garbage)]

    kept, report = validator.validate(chunks)

    assert kept_docs(kept) == {"a"}
    reason = report.rejected["pdf"]
    assert reason.startswith("chunk 1: printable characters ")
    assert "< 95% (garbled extraction?)" in reason
    printable = next(o for o in report.expectations if o.expectation.endswith("(printable_ratio)"))
    assert not printable.success and printable.unexpected_count == 1
    assert printable.details == "1 of 4 chunks have printable_ratio < 0.95"


def test_disallowed_metadata_key_is_named(validator: ChunkValidator) -> None:
    leaky = {"tenant": "acme", "ssn": "123-45-6789"}
    chunks = [*clean_doc("a"), make_chunk("hr", 0, metadata=leaky), make_chunk("hr", 1, metadata=leaky)]

    kept, report = validator.validate(chunks)

    assert kept_docs(kept) == {"a"}
    assert report.rejected["hr"] == "chunks 0, 1: metadata key not allowed: 'ssn'"
    metadata = next(o for o in report.expectations if o.expectation.endswith("(metadata_ok)"))
    assert not metadata.success and metadata.unexpected_count == 2
    assert "ssn" in metadata.details


def test_reason_lists_every_failed_check_of_a_document(validator: ChunkValidator) -> None:
    chunks = [
        make_chunk("messy", 0, ""),
        make_chunk("messy", 1, "\x00" * 30, metadata={"tenant": "acme", "owner": "bob"}),
        *clean_doc("a"),
    ]

    kept, report = validator.validate(chunks)

    assert kept_docs(kept) == {"a"}
    reason = report.rejected["messy"]
    assert "chunk 0: empty text" in reason
    assert "chunk 1: metadata key not allowed: 'owner'" in reason
    assert "chunk 1: printable characters 0% < 95%" in reason
    assert reason.count("; ") == 2


def test_duplicate_chunk_ids_fail_uniqueness(validator: ChunkValidator) -> None:
    chunks = [*clean_doc("a"), make_chunk("b", 0, chunk_id="same-id"), make_chunk("c", 0, chunk_id="same-id")]

    kept, report = validator.validate(chunks)

    assert not outcome_of(report, "expect_column_values_to_be_unique(chunk_id)")
    assert kept_docs(kept) == {"a"}
    assert report.rejected["b"] == "chunk 0: chunk id 'same-id' is not unique in the batch"
    assert set(report.rejected) == {"b", "c"}


# --- batch-level duplicate content ------------------------------------------------------------------------------------


DUP_EXPECTATION = "expect_column_proportion_of_unique_values_to_be_between(text_hash)"
BOILERPLATE = "This page intentionally left blank. Copyright ACME Corp, all rights reserved."


def test_duplicate_content_above_threshold_rejects_later_copies(validator: ChunkValidator) -> None:
    # 5 chunks, 2 distinct contents: 40% distinct < 50% required. The variant differs only in case and spacing.
    variant = "  this page intentionally left blank.\nCopyright ACME   Corp, all rights reserved. "
    chunks = [
        make_chunk("first", 0, BOILERPLATE),
        make_chunk("copy1", 0, BOILERPLATE),
        make_chunk("copy2", 0, variant),
        make_chunk("copy3", 0, BOILERPLATE),
        make_chunk("other", 0),
    ]

    kept, report = validator.validate(chunks)

    assert not outcome_of(report, DUP_EXPECTATION)
    assert kept_docs(kept) == {"first", "other"}, "the first occurrence is kept"
    assert set(report.rejected) == {"copy1", "copy2", "copy3"}
    for reason in report.rejected.values():
        assert reason == "duplicate content: chunk 0 repeats chunk 0 of document 'first'"
    dup = next(o for o in report.expectations if o.expectation == DUP_EXPECTATION)
    assert dup.unexpected_count == 3
    assert dup.details.startswith("distinct content share 40% (< required 50%)")


def test_duplicate_content_below_threshold_passes(validator: ChunkValidator) -> None:
    # 4 chunks, 3 distinct: 75% distinct >= 50%.
    chunks = [
        make_chunk("first", 0, BOILERPLATE),
        make_chunk("copy", 0, BOILERPLATE),
        make_chunk("x", 0),
        make_chunk("y", 0),
    ]

    kept, report = validator.validate(chunks)

    assert report.success
    assert kept == chunks
    assert report.rejected == {}


def test_repeats_inside_one_document_do_not_reject_it(validator: ChunkValidator) -> None:
    # The share is exceeded (2 distinct of 5), but every repeat's first occurrence is in the same document.
    chunks = [make_chunk("table", position, "| row | row | row |") for position in range(4)] + [make_chunk("b", 0)]

    kept, report = validator.validate(chunks)

    assert not report.success and not outcome_of(report, DUP_EXPECTATION)
    assert kept == chunks
    assert report.rejected == {}


def test_document_rejected_for_another_reason_does_not_own_content(validator: ChunkValidator) -> None:
    chunks = [
        make_chunk("bad", 0, BOILERPLATE, metadata={"secret": "x"}),
        make_chunk("bad", 1, BOILERPLATE + " again"),
        make_chunk("copy1", 0, BOILERPLATE),
        make_chunk("copy2", 0, BOILERPLATE + " again"),
        make_chunk("copy3", 0, BOILERPLATE),
    ]

    kept, report = validator.validate(chunks)

    assert "secret" in report.rejected["bad"]
    assert "copy1" not in report.rejected, "its content's first occurrence was in a rejected document"
    assert report.rejected["copy3"] == "duplicate content: chunk 0 repeats chunk 0 of document 'copy1'"
    assert kept_docs(kept) == {"copy1", "copy2"}


# --- the report -------------------------------------------------------------------------------------------------------


def test_report_to_json_is_serialisable_and_lists_every_expectation(validator: ChunkValidator) -> None:
    chunks = [*clean_doc("a"), make_chunk("b", 0, "")]

    _, report = validator.validate(chunks)
    payload = report.to_json()
    decoded = json.loads(json.dumps(payload))

    assert decoded["batch_size"] == 3
    assert decoded["success"] is False
    assert decoded["n_rejected_documents"] == 1
    assert decoded["rejected"] == {"b": "chunk 0: empty text"}
    assert [item["expectation"] for item in decoded["expectations"]] == list(EXPECTATIONS)
    fields = {"expectation", "success", "unexpected_count", "details"}
    assert all(set(item) == fields for item in decoded["expectations"])


def test_rejected_documents_are_reported_in_batch_order(validator: ChunkValidator) -> None:
    chunks = [make_chunk("z", 0, "\x00" * 20), make_chunk("m", 0, ""), make_chunk("a", 0, metadata={"bad": "1"})]

    _, report = validator.validate(chunks)

    assert list(report.rejected) == ["z", "m", "a"]


# --- configuration and set-up -----------------------------------------------------------------------------------------


def test_two_validators_keep_their_own_thresholds(validator: ChunkValidator) -> None:
    strict = ChunkValidator(QualitySettings(max_chars=20, allowed_metadata_keys=["tenant", "lang"]))
    strict.warm_up()
    chunks = [make_chunk("a", 0, "x" * 100)]

    assert strict.validate(chunks)[1].rejected == {"a": "chunk 0: text too long (100 characters > 20)"}
    assert validator.validate(chunks)[1].success


def test_inverted_length_bounds_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="min_chars"):
        ChunkValidator(QualitySettings(min_chars=100, max_chars=10))


def test_constructing_a_validator_does_not_import_great_expectations() -> None:
    code = (
        "import sys\n"
        "from pipelines.quality import ChunkValidator\n"
        "from pipelines.settings import QualitySettings\n"
        "ChunkValidator(QualitySettings())\n"
        "assert 'great_expectations' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "error"})


def test_a_thousand_chunks_validate_quickly(validator: ChunkValidator) -> None:
    body = "lorem ipsum dolor sit amet " * 12
    chunks = [make_chunk(f"doc{i // 4}", i % 4, f"Chunk {i}: {body}") for i in range(1000)]

    started = time.perf_counter()
    kept, report = validator.validate(chunks)
    elapsed = time.perf_counter() - started

    assert report.success and len(kept) == 1000
    # Target is well under 0.5 s; the bound is loose so a busy CI machine does not flake, while re-building the GX
    # context per batch (seconds) would still fail it.
    assert elapsed < 2.0


# --- measurements ---------------------------------------------------------------------------------------------------


def test_printable_ratio() -> None:
    assert quality.printable_ratio("Plain text,\twith tabs\nand\u00a0non-breaking spaces.") == 1.0
    assert quality.printable_ratio("") == 1.0
    assert quality.printable_ratio(None) == 1.0
    assert quality.printable_ratio("ab\x00\x01") == 0.5
    assert quality.printable_ratio("ab\ufffd\ufffd") == 0.5
    # C0 separators count as whitespace to str.isspace, but in extracted text they are garbage.
    assert quality.printable_ratio("ab\x1c\x1d") == 0.5
    assert quality.printable_ratio("Grüße, 東京, emoji 🙂") == 1.0


def test_content_hash_ignores_case_and_spacing() -> None:
    assert quality.content_hash("Hello  World\n") == quality.content_hash("hello world")
    assert quality.content_hash("hello world") != quality.content_hash("hello world!")
    assert quality.content_hash(None) is None
