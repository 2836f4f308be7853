"""Great-expectations gate that every batch of chunks passes before it is embedded.

Why a gate at all: embedding is the expensive step and the index is what users query, so garbled PDF extractions,
empty or runaway chunks, metadata nobody agreed to store (ACL leaks, personal data) and mass duplicates must be
caught before they cost CPU time or pollute retrieval. Why great-expectations: the suite and its results are a
standard, inspectable artefact that is kept with the run and logged to MLflow, not ad-hoc ``if`` statements.

How it is used::

    validator = ChunkValidator(settings.quality)
    validator.warm_up()                      # once per process: imports GX (~2.5 s) and builds the suite
    kept, report = validator.validate(chunks)
    for doc_id, reason in report.rejected.items():
        ...                                  # quarantine as DataQualityError(reason)

Rejection is per *document*: a document with one bad chunk would otherwise be indexed with a hole in it, and a
later re-ingest would not notice, so all of its chunks are dropped and the reason names every failed check.

Great-expectations is imported lazily (inside :meth:`ChunkValidator.warm_up`) because its import takes seconds and
most commands of the platform (search, status, CLI help) never validate anything.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from pipelines.errors import ConfigError, IngestionError
from pipelines.settings import QualitySettings
from pipelines.types import Chunk

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.core.validation_definition import ValidationDefinition
    from great_expectations.data_context import EphemeralDataContext
    from great_expectations.expectations.expectation import Expectation

logger = logging.getLogger(__name__)

__all__ = [
    "ChunkValidator",
    "ExpectationOutcome",
    "ValidationReport",
    "content_hash",
    "import_great_expectations",
    "printable_ratio",
]

# Row key handed to GX as ``unexpected_index_column_names``. Not chunk_id: duplicate chunk ids are one of the things
# being checked, and a failing row must still map to exactly one chunk (and so to one document).
_ROW: Final = "row"

# ``exclude_unexpected_values`` keeps GX from copying the failing values (whole chunk texts, up to max_chars each)
# into the result; the row keys are all we need. ``partial_unexpected_count=0`` skips the partial lists for the same
# reason. The index query string is useless outside GX.
_RESULT_FORMAT: Final[Mapping[str, object]] = MappingProxyType(
    {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": [_ROW],
        "exclude_unexpected_values": True,
        "return_unexpected_index_query": False,
        "partial_unexpected_count": 0,
    }
)

# Names of the (ephemeral, in-memory) GX objects; they only need to be unique inside our own context.
_DATASOURCE: Final = "ragops_chunks"
_ASSET: Final = "chunk_batch"
_BATCH_DEFINITION: Final = "whole_batch"
_SUITE: Final = "ragops_chunk_quality"
_VALIDATION: Final = "ragops_chunk_validation"

# Reasons list at most this many problems (and chunk positions per problem) so a quarantine record stays readable.
_MAX_PROBLEMS_PER_DOC: Final = 6
_MAX_POSITIONS_PER_PROBLEM: Final = 8

_REPLACEMENT_CHAR: Final = "\ufffd"
# Control characters that are ordinary layout in extracted text.
_LAYOUT_CONTROLS: Final = frozenset("\t\n\r\x0b\x0c")
# Characters ``str.isspace`` accepts although they are C0/C1 controls; their presence forces the exact (slow) count.
_CONTROL_SPACES: Final = ("\x1c", "\x1d", "\x1e", "\x1f", "\x85")


# ---------------------------------------------------------------------------------------------------------------------
# Public value types
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation of the suite on one batch, reduced to what a human or a dashboard needs."""

    expectation: str
    """Expectation type and column, e.g. ``expect_column_value_lengths_to_be_between(text)``."""
    success: bool
    unexpected_count: int
    """Failing chunks; for the batch-level duplicate check, the chunks that repeat earlier content."""
    details: str
    """Short human summary, e.g. ``3 of 120 chunks have printable_ratio < 0.95``."""

    def to_json(self) -> dict[str, object]:
        """JSON-able form, used by :meth:`ValidationReport.to_json`."""
        return {
            "expectation": self.expectation,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "details": self.details,
        }


@dataclass(frozen=True)
class ValidationReport:
    """What the suite said about one batch: kept with the run report and logged to MLflow.

    ``rejected`` maps each rejected document to one sentence naming every failed check, ready to be the reason of
    a quarantine record. ``success`` is true only when every expectation passed; a failed batch-level check (too many
    duplicates) can leave ``rejected`` empty when the repeats are all inside single documents.
    """

    batch_size: int
    success: bool
    expectations: tuple[ExpectationOutcome, ...]
    rejected: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, object]:
        """A JSON-able summary (plain dicts, lists, str, int, bool) of the report."""
        return {
            "batch_size": self.batch_size,
            "success": self.success,
            "n_expectations": len(self.expectations),
            "n_failed_expectations": sum(1 for outcome in self.expectations if not outcome.success),
            "n_rejected_documents": len(self.rejected),
            "expectations": [outcome.to_json() for outcome in self.expectations],
            "rejected": dict(self.rejected),
        }


# ---------------------------------------------------------------------------------------------------------------------
# Per-chunk measurements (pure functions, also useful to callers and tests)
# ---------------------------------------------------------------------------------------------------------------------


def _is_printable_char(char: str) -> bool:
    """Whether one character is printable text or ordinary whitespace (not a control, not U+FFFD)."""
    if char == _REPLACEMENT_CHAR:
        # U+FFFD is "printable" to Python, but a text made of it is a failed decode: count it as garbage.
        return False
    if char.isprintable():
        return True
    if char in _LAYOUT_CONTROLS:
        return True
    return char.isspace() and unicodedata.category(char) != "Cc"


def printable_ratio(text: str | None) -> float:
    """Share of the characters of ``text`` that are printable or whitespace; 1.0 for empty or missing text.

    Why: a PDF or a wrongly decoded file often "extracts" into control bytes or U+FFFD replacement characters, which
    still embed (into noise) and then match nothing. Empty text scores 1.0 because the length check already rejects
    it; reporting it twice would only clutter the reason.
    """
    return _measure(text)[0]


def content_hash(text: str | None) -> str | None:
    """Hash of the text with whitespace collapsed and case folded; ``None`` for missing text.

    Why normalised: the same page extracted twice differs in line breaks and spacing, and those copies are exactly
    the duplicates the suite is meant to catch.
    """
    return _measure(text)[1]


def _measure(text: str | None) -> tuple[float, str | None]:
    """``(printable_ratio, content_hash)`` with one whitespace split shared by both (the split dominates the cost)."""
    if text is None:
        return 1.0, None
    collapsed = " ".join(text.split())
    digest = hashlib.blake2b(collapsed.casefold().encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    if not text:
        return 1.0, digest
    # Fast path in C for the common case: nothing but printable characters and whitespace.
    if _REPLACEMENT_CHAR not in text and collapsed.isprintable() and not any(char in text for char in _CONTROL_SPACES):
        return 1.0, digest
    good = sum(1 for char in text if _is_printable_char(char))
    return good / len(text), digest


def _floor_pct(ratio: float) -> str:
    """``0.949 -> '94.9%'``, ``0.41 -> '41%'``: floored so an observed value never rounds up to the threshold."""
    value = math.floor(ratio * 1000) / 10
    return f"{value:.1f}".rstrip("0").rstrip(".") + "%"


def _pct(ratio: float) -> str:
    """``0.95 -> '95%'``, ``0.955 -> '95.5%'``."""
    return f"{ratio * 100:.1f}".rstrip("0").rstrip(".") + "%"


# ---------------------------------------------------------------------------------------------------------------------
# The batch as a table
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    """One chunk batch turned into the DataFrame GX validates, plus per-row facts for writing reasons."""

    frame: pd.DataFrame
    chunks: Sequence[Chunk]
    n_chars: tuple[int, ...]
    ratios: tuple[float, ...]
    hashes: tuple[str | None, ...]
    bad_keys: tuple[tuple[str, ...], ...]


def _build_batch(chunks: Sequence[Chunk], allowed_keys: frozenset[str]) -> _Batch:
    """One row per chunk with the derived columns the suite checks (lengths, printable ratio, hash, metadata)."""
    import pandas as pd  # already imported by warm_up; local so importing this module stays cheap

    texts: list[str | None] = []
    n_chars: list[int] = []
    ratios: list[float] = []
    hashes: list[str | None] = []
    bad_keys: list[tuple[str, ...]] = []
    for chunk in chunks:
        text = chunk.text if isinstance(chunk.text, str) else None
        texts.append(text)
        n_chars.append(len(text) if text is not None else 0)
        ratio, digest = _measure(text)
        ratios.append(ratio)
        hashes.append(digest)
        metadata = chunk.metadata or {}
        bad_keys.append(tuple(sorted(str(key) for key in metadata if key not in allowed_keys)))
    frame = pd.DataFrame(
        {
            _ROW: range(len(chunks)),
            "chunk_id": [chunk.chunk_id for chunk in chunks],
            "doc_id": [chunk.doc_id for chunk in chunks],
            "position": [chunk.position for chunk in chunks],
            "text": texts,
            "n_chars": n_chars,
            "printable_ratio": ratios,
            "text_hash": hashes,
            "metadata_ok": [not keys for keys in bad_keys],
        }
    )
    return _Batch(
        frame=frame,
        chunks=chunks,
        n_chars=tuple(n_chars),
        ratios=tuple(ratios),
        hashes=tuple(hashes),
        bad_keys=tuple(bad_keys),
    )


# ---------------------------------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    """One expectation of the suite and how to explain its failures in words.

    ``problem`` turns a failing row into a phrase such as "printable characters 41% < 95% (garbled extraction?)";
    ``None`` marks the batch-level duplicate check, whose consequences are worked out separately.
    """

    name: str
    column: str
    expectation: Expectation
    noun: str
    problem: Callable[[_Batch, int], str] | None

    @property
    def label(self) -> str:
        """``expectation_type(column)``, as shown in reports."""
        return f"{self.expectation.expectation_type}({self.column})"


class ChunkValidator:
    """Runs the great-expectations suite built from :class:`QualitySettings` on chunk batches.

    Construction is free (no import of GX, no I/O) so it can live in settings-driven wiring; :meth:`warm_up` pays the
    import and builds the ephemeral context, datasource, suite and validation definition once, and every
    :meth:`validate` call reuses them. Validation is serialised by a lock because a GX context is not thread-safe.
    """

    def __init__(self, settings: QualitySettings) -> None:
        if settings.min_chars > settings.max_chars:
            raise ConfigError(
                f"quality.min_chars ({settings.min_chars}) is larger than quality.max_chars ({settings.max_chars})"
            )
        # A private copy: the suite is built from these values once, so later edits to the caller's object must not
        # make the report describe thresholds that are not the ones enforced.
        settings = settings.model_copy(deep=True)
        self._settings = settings
        self._allowed_keys = frozenset(settings.allowed_metadata_keys)
        self._lock = threading.Lock()
        self._context: EphemeralDataContext | None = None
        self._validation: ValidationDefinition | None = None
        self._checks: tuple[_Check, ...] = ()

    @property
    def settings(self) -> QualitySettings:
        """The thresholds this validator enforces."""
        return self._settings

    @property
    def is_warm(self) -> bool:
        """Whether :meth:`warm_up` has built the GX objects."""
        return self._validation is not None

    # -- set-up ------------------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Import great-expectations and build context, datasource, asset, suite and validation definition once.

        Idempotent. Analytics are switched off (``GX_ANALYTICS_ENABLED`` plus the context flag) and so are the tqdm
        progress bars GX otherwise writes to stderr on every validation.
        """
        with self._lock:
            if self._validation is not None:
                return
            started = time.perf_counter()
            import_great_expectations()
            import great_expectations as gx
            import great_expectations.expectations as gxe
            from great_expectations.data_context.types.base import ProgressBarsConfig

            import_s = time.perf_counter() - started

            context = gx.get_context(mode="ephemeral")
            context.enable_analytics(False)
            context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            batch_definition = (
                context.data_sources.add_pandas(_DATASOURCE)
                .add_dataframe_asset(_ASSET)
                .add_batch_definition_whole_dataframe(_BATCH_DEFINITION)
            )
            settings = self._settings
            checks = (
                _Check(
                    name="text_present",
                    column="text",
                    expectation=gxe.ExpectColumnValuesToNotBeNull(column="text"),
                    noun="have no text",
                    problem=lambda batch, row: "text is missing",
                ),
                _Check(
                    name="text_length",
                    column="text",
                    expectation=gxe.ExpectColumnValueLengthsToBeBetween(
                        column="text", min_value=settings.min_chars, max_value=settings.max_chars
                    ),
                    noun=f"have a text length outside {settings.min_chars:,}..{settings.max_chars:,} characters",
                    problem=self._length_problem,
                ),
                _Check(
                    name="chunk_id_unique",
                    column="chunk_id",
                    expectation=gxe.ExpectColumnValuesToBeUnique(column="chunk_id"),
                    noun="share their chunk_id with another chunk",
                    problem=lambda batch, row: f"chunk id {batch.chunks[row].chunk_id!r} is not unique in the batch",
                ),
                _Check(
                    name="metadata_allowed",
                    column="metadata_ok",
                    expectation=gxe.ExpectColumnValuesToBeInSet(column="metadata_ok", value_set=[True]),
                    noun="carry metadata keys outside the allowed set",
                    problem=self._metadata_problem,
                ),
                _Check(
                    name="printable",
                    column="printable_ratio",
                    expectation=gxe.ExpectColumnValuesToBeBetween(
                        column="printable_ratio", min_value=settings.min_printable_ratio
                    ),
                    noun=f"have printable_ratio < {settings.min_printable_ratio:g}",
                    problem=self._printable_problem,
                ),
                _Check(
                    name="unique_content",
                    column="text_hash",
                    expectation=gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
                        column="text_hash", min_value=self._min_unique_share
                    ),
                    noun="repeat earlier content",
                    problem=None,
                ),
            )
            suite = context.suites.add(gx.ExpectationSuite(name=_SUITE))
            for check in checks:
                suite.add_expectation(check.expectation)
            validation = context.validation_definitions.add(
                gx.ValidationDefinition(name=_VALIDATION, data=batch_definition, suite=suite)
            )
            self._context = context
            self._checks = checks
            self._validation = validation
            logger.info(
                "great-expectations %s ready: %d expectations, import %.2f s, set-up %.2f s",
                gx.__version__,
                len(checks),
                import_s,
                time.perf_counter() - started - import_s,
            )

    @property
    def _min_unique_share(self) -> float:
        """Smallest allowed share of distinct contents; rounded so 1 - 0.3 is 0.7 and not 0.7000000000000001."""
        return round(1.0 - self._settings.max_duplicate_share, 9)

    # -- validation --------------------------------------------------------------------------------------------------

    def validate(self, chunks: Sequence[Chunk]) -> tuple[list[Chunk], ValidationReport]:
        """Returns the chunks of documents that passed (whole documents only: if any chunk of a doc fails, all its
        chunks are dropped) and the report.

        Raises:
            IngestionError: when great-expectations itself failed to evaluate an expectation. That is a tooling fault,
                not bad data, so the run fails instead of quarantining every document of the batch.
        """
        if not chunks:
            return [], ValidationReport(batch_size=0, success=True, expectations=(), rejected=MappingProxyType({}))
        if not self.is_warm:
            logger.info("ChunkValidator used before warm_up(); warming up now")
            self.warm_up()

        started = time.perf_counter()
        batch = _build_batch(chunks, self._allowed_keys)
        prepared = time.perf_counter()
        with self._lock:
            gx_result = self._run(batch.frame)
        ran = time.perf_counter()

        outcomes, problems = self._interpret(batch, gx_result)
        unordered = self._reject_duplicates(batch, outcomes, problems)
        # Batch order, so reports and quarantine records read in the order documents were ingested.
        in_order = dict.fromkeys(chunk.doc_id for chunk in chunks)
        rejected = {doc_id: unordered[doc_id] for doc_id in in_order if doc_id in unordered}
        report = ValidationReport(
            batch_size=len(chunks),
            success=all(outcome.success for outcome in outcomes),
            expectations=tuple(outcomes),
            rejected=MappingProxyType(rejected),
        )
        kept = [chunk for chunk in chunks if chunk.doc_id not in rejected]
        logger.debug(
            "validated %d chunks: prepare %.3f s, great-expectations %.3f s, interpret %.3f s",
            len(chunks),
            prepared - started,
            ran - prepared,
            time.perf_counter() - ran,
        )
        if report.success:
            logger.info("chunk batch passed all %d expectations (%d chunks)", len(outcomes), len(chunks))
        else:
            failed = ", ".join(outcome.expectation for outcome in outcomes if not outcome.success)
            logger.warning(
                "chunk batch failed %s: %d of %d documents rejected, %d of %d chunks kept",
                failed,
                len(rejected),
                len({chunk.doc_id for chunk in chunks}),
                len(kept),
                len(chunks),
            )
        return kept, report

    def _run(self, frame: pd.DataFrame) -> ExpectationSuiteValidationResult:
        """Run the validation definition on ``frame``; callers hold the lock.

        The ephemeral context stores every validation result in memory; with one result per batch for the life of a
        service that is a leak, so the store is emptied after each run (the result is returned, not looked up).
        """
        assert self._validation is not None and self._context is not None  # warm_up ran
        try:
            return self._validation.run(batch_parameters={"dataframe": frame}, result_format=dict(_RESULT_FORMAT))
        finally:
            store = self._context.validation_results_store
            for key in store.list_keys():
                store.remove_key(key)

    def _interpret(
        self, batch: _Batch, gx_result: ExpectationSuiteValidationResult
    ) -> tuple[list[ExpectationOutcome], dict[str, dict[str, list[int]]]]:
        """Outcomes per expectation, and per document the row-level problems: ``doc_id -> problem -> positions``."""
        by_id = {
            result.expectation_config.id: result
            for result in gx_result.results
            if result.expectation_config is not None
        }
        total = len(batch.chunks)
        outcomes: list[ExpectationOutcome] = []
        problems: dict[str, dict[str, list[int]]] = {}
        for check in self._checks:
            result = by_id.get(check.expectation.id)
            if result is None:
                raise IngestionError(f"great-expectations returned no result for {check.label}")
            error = _raised_exception(result)
            if error is not None:
                raise IngestionError(f"great-expectations could not evaluate {check.label}: {error}")
            success = bool(result.success)
            if check.problem is None:
                outcomes.append(self._duplicate_outcome(check, batch, result, success))
                continue
            rows = _unexpected_rows(result) if not success else []
            unexpected = int(result.result.get("unexpected_count") or len(rows))
            if not success and not rows:
                raise IngestionError(f"{check.label} failed but great-expectations named no failing rows")
            for row in rows:
                chunk = batch.chunks[row]
                positions = problems.setdefault(chunk.doc_id, {}).setdefault(check.problem(batch, row), [])
                positions.append(chunk.position)
            details = (
                f"all {total:,} chunks pass"
                if success
                else f"{unexpected:,} of {total:,} chunks {check.noun}{self._extra_details(check, batch, rows)}"
            )
            outcomes.append(
                ExpectationOutcome(
                    expectation=check.label, success=success, unexpected_count=unexpected, details=details
                )
            )
        return outcomes, problems

    def _duplicate_outcome(
        self, check: _Check, batch: _Batch, result: ExpectationValidationResult, success: bool
    ) -> ExpectationOutcome:
        """Summary of the batch-level duplicate-content check (GX reports only the observed share)."""
        observed = result.result.get("observed_value")
        share = float(observed) if isinstance(observed, int | float) else float("nan")
        repeats = _repeat_rows(batch.hashes)
        details = (
            f"distinct content share {_floor_pct(share)} "
            f"({'>=' if success else '<'} required {_pct(self._min_unique_share)}); "
            f"{len(repeats):,} of {len(batch.chunks):,} chunks {check.noun}"
        )
        return ExpectationOutcome(
            expectation=check.label, success=success, unexpected_count=len(repeats), details=details
        )

    def _reject_duplicates(
        self,
        batch: _Batch,
        outcomes: Sequence[ExpectationOutcome],
        problems: Mapping[str, Mapping[str, Sequence[int]]],
    ) -> dict[str, str]:
        """Turn row-level problems into reasons, then, if the duplicate check failed, reject later copies.

        Documents are visited in batch order; a surviving document whose chunk repeats content of an *earlier
        surviving other* document is rejected, so the first occurrence is always kept and a document rejected for
        another reason never "owns" content. Repeats inside one document do not reject it: its first occurrence is in
        the same document, and dropping it would lose the original too.
        """
        rejected = {doc_id: _reason(doc_problems) for doc_id, doc_problems in problems.items()}
        duplicate_label = next(check.label for check in self._checks if check.problem is None)
        if all(outcome.success for outcome in outcomes if outcome.expectation == duplicate_label):
            return rejected

        owner: dict[str, tuple[str, int]] = {}  # content hash -> (doc_id, position) of its first kept occurrence
        doc_rows: dict[str, list[int]] = {}
        for row, chunk in enumerate(batch.chunks):
            doc_rows.setdefault(chunk.doc_id, []).append(row)
        for doc_id, rows in doc_rows.items():
            if doc_id in rejected:
                continue
            repeats: dict[str, list[int]] = {}
            for row in rows:
                digest = batch.hashes[row]
                first = owner.get(digest) if digest is not None else None
                if first is not None and first[0] != doc_id:
                    phrase = f"repeats chunk {first[1]} of document {first[0]!r}"
                    repeats.setdefault(phrase, []).append(batch.chunks[row].position)
            if repeats:
                rejected[doc_id] = "duplicate content: " + _reason(repeats, separator=" ")
                continue
            for row in rows:
                digest = batch.hashes[row]
                if digest is not None:
                    owner.setdefault(digest, (doc_id, batch.chunks[row].position))
        if not any(reason.startswith("duplicate content:") for reason in rejected.values()):
            logger.warning("duplicate-content share exceeded, but only by repeats within documents: none rejected")
        return rejected

    # -- wording -----------------------------------------------------------------------------------------------------

    def _length_problem(self, batch: _Batch, row: int) -> str:
        """Why a text length failed, in words."""
        n_chars = batch.n_chars[row]
        if n_chars == 0:
            return "empty text"
        if n_chars < self._settings.min_chars:
            return f"text too short ({n_chars:,} characters < {self._settings.min_chars:,})"
        if n_chars > self._settings.max_chars:
            return f"text too long ({n_chars:,} characters > {self._settings.max_chars:,})"
        return f"text length {n_chars:,} outside {self._settings.min_chars:,}..{self._settings.max_chars:,}"

    def _metadata_problem(self, batch: _Batch, row: int) -> str:
        """Which metadata keys are not allowed."""
        keys = ", ".join(repr(key) for key in batch.bad_keys[row])
        plural = "s" if len(batch.bad_keys[row]) != 1 else ""
        return f"metadata key{plural} not allowed: {keys}"

    def _printable_problem(self, batch: _Batch, row: int) -> str:
        """How garbled a chunk looks."""
        ratio = batch.ratios[row]
        return (
            f"printable characters {_floor_pct(ratio)} < {_pct(self._settings.min_printable_ratio)} "
            "(garbled extraction?)"
        )

    def _extra_details(self, check: _Check, batch: _Batch, rows: Sequence[int]) -> str:
        """A short tail for the outcome summary where the failing values themselves are informative."""
        if check.name == "metadata_allowed" and rows:
            keys = sorted({key for row in rows for key in batch.bad_keys[row]})
            return " (" + ", ".join(keys) + ")"
        return ""


# ---------------------------------------------------------------------------------------------------------------------
# Helpers around GX
# ---------------------------------------------------------------------------------------------------------------------


def import_great_expectations() -> None:
    """Import GX (seconds) with analytics off and without tripping ``-W error``.

    GX 1.24.1 imports the deprecated ``sre_constants`` and ``sre_parse`` modules at load; the DeprecationWarning is
    harmless but fatal under ``filterwarnings = error``, so exactly those two messages are ignored during the import.
    ``GX_ANALYTICS_ENABLED=False`` is GX's documented analytics switch (1.24.1 ships no analytics client, but a later
    upgrade might); an explicit user setting wins.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"module 'sre_(constants|parse)' is deprecated", category=DeprecationWarning
        )
        import great_expectations  # noqa: F401  - the import is the point: it warms sys.modules


def _raised_exception(result: ExpectationValidationResult) -> str | None:
    """The exception message if GX failed to evaluate the expectation, else ``None``.

    ``exception_info`` comes in two shapes: flat (``{"raised_exception": ..., "exception_message": ...}``) or keyed
    by metric id with one such dict per metric.
    """
    info = result.exception_info or {}
    if "raised_exception" in info:
        return str(info.get("exception_message") or "unknown error") if info.get("raised_exception") else None
    for value in info.values():
        if isinstance(value, Mapping) and value.get("raised_exception"):
            return str(value.get("exception_message") or "unknown error")
    return None


def _unexpected_rows(result: ExpectationValidationResult) -> list[int]:
    """Row keys of the failing rows, sorted.

    GX returns ``unexpected_index_list`` as ``[{"row": [1, 5]}]`` when ``exclude_unexpected_values`` is set, and as
    ``[{"text": ..., "row": 1}, {"text": ..., "row": 5}]`` without it; both are accepted.
    """
    entries = result.result.get("unexpected_index_list") or []
    rows: set[int] = set()
    for entry in entries:
        value = entry.get(_ROW) if isinstance(entry, Mapping) else entry
        if isinstance(value, list | tuple):
            rows.update(int(item) for item in value)
        elif value is not None:
            rows.add(int(value))
    return sorted(rows)


def _repeat_rows(hashes: Sequence[str | None]) -> list[int]:
    """Rows whose content already appeared earlier in the batch."""
    seen: set[str] = set()
    repeats: list[int] = []
    for row, digest in enumerate(hashes):
        if digest is None:
            continue
        if digest in seen:
            repeats.append(row)
        seen.add(digest)
    return repeats


def _reason(problems: Mapping[str, Sequence[int]], separator: str = ": ") -> str:
    """One sentence from ``problem -> chunk positions``, e.g. ``chunks 0, 1: empty text; chunk 4: ...``."""
    shown = list(problems.items())[:_MAX_PROBLEMS_PER_DOC]
    parts = [f"{_positions(positions)}{separator}{problem}" for problem, positions in shown]
    if len(problems) > _MAX_PROBLEMS_PER_DOC:
        parts.append(f"and {len(problems) - _MAX_PROBLEMS_PER_DOC} more problems")
    return "; ".join(parts)


def _positions(positions: Iterable[int]) -> str:
    """``[2] -> 'chunk 2'``, ``[0, 1] -> 'chunks 0, 1'``, long lists shortened."""
    unique = sorted(set(positions))
    shown = ", ".join(str(position) for position in unique[:_MAX_POSITIONS_PER_PROBLEM])
    if len(unique) > _MAX_POSITIONS_PER_PROBLEM:
        shown += f" (+{len(unique) - _MAX_POSITIONS_PER_PROBLEM} more)"
    return f"chunk{'s' if len(unique) > 1 else ''} {shown}"
