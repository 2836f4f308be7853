"""Ingestion as plain steps: discover -> plan -> read -> chunk -> validate -> embed -> upsert -> delete stale ->
publish -> report.

Each step is a function over frozen values so the Prefect flow (``flows/ingest.py``) can run every step as a task
with retries, and ``run_ingest`` can chain the same steps in-process when no orchestration server is configured.

Documents are keyed by id within a collection, and an id names one source's document: an item whose id the
manifest records for another source is quarantined by ``plan`` (reason names the owner), never written over it
(tenants' folders get distinct ids from discovery, see :mod:`pipelines.sources`).

Incremental by construction: discovery hashes every item, ``plan`` compares the hashes with the published
version's manifest, and only new or changed documents are read, chunked and embedded. Within a changed document,
chunks whose deterministic id already exists keep their vector (only the payload is rewritten). An unchanged source
opens no writer at all: no embedding, no new version, nothing written. A killed run leaves only a staging copy that
the next run deletes, so the next run starts from the last published version and converges to exactly the right
set of points.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipelines.chunk import Chunker
from pipelines.embed import Embedder
from pipelines.erasure import erased_items, tombstone_file, tombstones
from pipelines.errors import DocumentRejected, FailureThresholdExceeded
from pipelines.index import DocEntry, IndexVersion, IndexWriter, Manifest, VectorIndex
from pipelines.quality import ChunkValidator, ValidationReport
from pipelines.quarantine import Quarantine
from pipelines.settings import PipelineSettings
from pipelines.sources import Discovery, discover
from pipelines.sparse import Bm25Encoder, SparseVector
from pipelines.types import Chunk, Document, QuarantineRecord, SourceItem

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """Where long steps report progress (a rich progress bar in the CLI, Prefect logs in flows)."""

    def start(self, stage: str, total: int) -> None:
        """A stage begins with ``total`` units of work."""

    def advance(self, stage: str, amount: int) -> None:
        """``amount`` more units are done."""


class NoProgress:
    """The silent default."""

    def start(self, stage: str, total: int) -> None:
        """Ignore."""

    def advance(self, stage: str, amount: int) -> None:
        """Ignore."""


class LogProgress:
    """Progress as log lines: one when a stage starts, then one per further tenth of it (flows, benchmarks)."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self._log = log
        self._totals: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def start(self, stage: str, total: int) -> None:
        """A stage begins."""
        self._totals[stage], self._done[stage], self._started[stage] = max(total, 1), 0, time.perf_counter()
        self._log.info("%s: %d to do", stage, total)

    def advance(self, stage: str, amount: int) -> None:
        """Log at each further tenth."""
        total, before = self._totals.get(stage, 1), self._done.get(stage, 0)
        after = before + amount
        self._done[stage] = after
        if after * 10 // total > before * 10 // total:
            elapsed = time.perf_counter() - self._started.get(stage, time.perf_counter())
            self._log.info("%s: %d/%d (%.0f s)", stage, after, total, elapsed)


@dataclass(frozen=True)
class Plan:
    """What this run has to do, from comparing the source with the published manifest."""

    discovery: Discovery
    base: Manifest | None
    todo: tuple[SourceItem, ...]
    unchanged: tuple[str, ...]
    deleted: tuple[DocEntry, ...]
    conflicts: tuple[QuarantineRecord, ...] = ()
    """Items whose id already belongs to another source: refused, so no ingestion overwrites another's documents."""

    @property
    def nothing_to_do(self) -> bool:
        """True when the index already matches the source (quarantined items are retried every run)."""
        return not self.todo and not self.deleted


@dataclass(frozen=True)
class Embedded:
    """Chunks with their vectors; ``reused`` counts vectors carried over from the previous version."""

    chunks: tuple[Chunk, ...]
    dense: np.ndarray
    sparse: tuple[SparseVector, ...]
    computed: int
    reused: int


@dataclass(frozen=True)
class IngestReport:
    """The outcome of one run (``ragops ingest --json`` prints :meth:`to_json`)."""

    run_id: str
    source: str
    collection: str
    documents_seen: int
    documents_new: int
    documents_changed: int
    documents_unchanged: int
    documents_deleted: int
    documents_failed: int
    chunks_upserted: int
    chunks_deleted: int
    chunks_truncated: int
    embeddings_computed: int
    embeddings_reused: int
    points_total: int
    index_version: int | None
    published: bool
    seconds: float
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    quarantined: tuple[QuarantineRecord, ...] = ()
    validation: tuple[ValidationReport, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Flat JSON with the counters first (the CLI's --json contract)."""
        skip = ("quarantined", "validation", "stage_seconds")
        data: dict[str, Any] = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in skip}
        data["seconds"] = round(self.seconds, 3)
        data["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        data["quarantined"] = [asdict(q) for q in self.quarantined]
        data["validation"] = [v.to_json() for v in self.validation]
        return data


class IngestContext:
    """The heavy components of a run, created lazily and shared by its steps."""

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        collection: str | None = None,
        progress: Progress | None = None,
        index: VectorIndex | None = None,
    ):
        self.settings = settings
        self.collection = index.collection if index else (collection or settings.qdrant.collection)
        if index is not None:
            self.__dict__["index"] = index  # pre-seed the cached property (e.g. a server-mode index)
        self.progress: Progress = progress or NoProgress()
        self.stage_seconds: dict[str, float] = {}

    @cached_property
    def embedder(self) -> Embedder:
        """The embedding model (loaded on first use)."""
        embedder = Embedder(self.settings.embedder, cache_dir=self.settings.cache_dir)
        embedder.warm_up()
        return embedder

    @cached_property
    def chunker(self) -> Chunker:
        """The splitter bound to the embedder's tokenizer."""
        chunker = Chunker(self.settings.chunking, self.embedder)
        chunker.warm_up()
        return chunker

    @cached_property
    def validator(self) -> ChunkValidator:
        """The great-expectations suite."""
        validator = ChunkValidator(self.settings.quality)
        validator.warm_up()
        return validator

    @cached_property
    def index(self) -> VectorIndex:
        """The versioned collection."""
        return VectorIndex(self.settings, collection=self.collection)

    @cached_property
    def quarantine(self) -> Quarantine:
        """Where rejected documents are recorded."""
        return Quarantine(self.settings.quarantine_dir, self.collection)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Accumulate wall time per stage for the report."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------ steps
def discover_step(ctx: IngestContext, source: Path, *, tenant: str | None = None) -> Discovery:
    """List the source's items with their content hashes."""
    with ctx.timed("discover"):
        return discover(source, settings=ctx.settings.ingest, tenant=tenant)


def plan_step(ctx: IngestContext, discovery: Discovery) -> Plan:
    """Compare the source with the published manifest."""
    with ctx.timed("plan"):
        base = ctx.index.manifest()
        known = dict(base.docs) if base else {}
        todo: list[SourceItem] = []
        unchanged: list[str] = []
        conflicts: list[QuarantineRecord] = []
        erased = erased_items(discovery.items, tombstones(ctx.settings, ctx.collection))
        if erased:
            logger.warning(
                "skipping erased documents still in the source; remove their lines from the tombstone file to "
                "ingest them again",
                extra={
                    "collection": ctx.collection,
                    "documents": len(erased),
                    "example": sorted(erased)[0],
                    "tombstones": str(tombstone_file(ctx.settings)),
                },
            )
        for item in discovery.items:
            if item.doc_id in erased:
                continue
            entry = known.get(item.doc_id)
            if entry is not None and entry.source_key != discovery.source_key:
                conflicts.append(_conflict(item, entry))
            elif entry is not None and entry.content_hash == item.content_hash:
                unchanged.append(item.doc_id)
            else:
                todo.append(item)
        present = {i.doc_id for i in discovery.items} | {r.doc_id for r in discovery.rejected}
        deleted = [e for e in known.values() if e.source_key == discovery.source_key and e.doc_id not in present]
        return Plan(
            discovery=discovery,
            base=base,
            todo=tuple(todo),
            unchanged=tuple(unchanged),
            deleted=tuple(deleted),
            conflicts=tuple(conflicts),
        )


def _conflict(item: SourceItem, owner: DocEntry) -> QuarantineRecord:
    return QuarantineRecord(
        doc_id=item.doc_id,
        source=item.source,
        stage="plan",
        reason=(
            f"document id {item.doc_id!r} already belongs to source {owner.source_key!r} in this collection; "
            "ingest this source with its own --tenant (ids are then prefixed with it) or into another collection"
        ),
        content_hash=item.content_hash,
    )


def read_step(ctx: IngestContext, items: Sequence[SourceItem]) -> tuple[list[Document], list[QuarantineRecord]]:
    """Turn items into documents (files through unstructured); every failure becomes a quarantine record."""
    with ctx.timed("partition"):
        return read_items(
            items,
            max_bytes=ctx.settings.ingest.max_file_bytes,
            encodings=ctx.settings.ingest.text_encodings,
            on_file=lambda: ctx.progress.advance("partition", 1),
        )


def read_items(
    items: Sequence[SourceItem],
    *,
    max_bytes: int,
    encodings: Sequence[str],
    on_file: Callable[[], None] | None = None,
) -> tuple[list[Document], list[QuarantineRecord]]:
    """:func:`read_step` without the run's context: plain values in and out, so another process (a Dask worker)
    can run it. ``on_file`` is called after each file."""
    from pipelines.partition import partition_file

    docs: list[Document] = []
    rejected: list[QuarantineRecord] = []
    for item in items:
        try:
            if item.kind == "record":
                text = (item.text or "").strip()
                if not text:
                    raise DocumentRejected("record has empty text", stage="read")
                docs.append(_document(item, title=item.title or "", text=text, file_type="jsonl"))
                continue
            assert item.path is not None
            part = partition_file(item.path, max_bytes=max_bytes, encodings=list(encodings))
            docs.append(_document(item, title=part.title or item.path.stem, text=part.text, file_type=part.file_type))
        except DocumentRejected as exc:
            rejected.append(_reject(item, exc.reason, exc.stage))
        except Exception as exc:
            logger.exception("unexpected failure reading a document", extra={"doc_id": item.doc_id})
            rejected.append(_reject(item, f"unexpected error: {type(exc).__name__}: {exc}", "partition"))
        if item.kind == "file" and on_file is not None:
            on_file()
    return docs, rejected


def _document(item: SourceItem, *, title: str, text: str, file_type: str) -> Document:
    return Document(
        doc_id=item.doc_id,
        source=item.source,
        title=title,
        text=text,
        content_hash=item.content_hash,
        metadata=item.metadata,
        file_type=file_type,
    )


def _reject(item: SourceItem | Document, reason: str, stage: str) -> QuarantineRecord:
    return QuarantineRecord(
        doc_id=item.doc_id, source=item.source, stage=stage, reason=reason, content_hash=item.content_hash
    )


def chunk_step(ctx: IngestContext, docs: Sequence[Document]) -> tuple[list[Chunk], list[QuarantineRecord]]:
    """Split documents into window-sized chunks; a document the splitter cannot handle is quarantined."""
    with ctx.timed("chunk"):
        ctx.progress.start("chunk", len(docs))
        chunks: list[Chunk] = []
        rejected: list[QuarantineRecord] = []
        for start in range(0, len(docs), 256):
            batch = docs[start : start + 256]
            try:
                chunks.extend(ctx.chunker.chunk_many(batch))
            except Exception:  # isolate the failing document(s) one by one
                for doc in batch:
                    try:
                        chunks.extend(ctx.chunker.chunk(doc))
                    except Exception as exc:  # one bad document must never stop the batch
                        rejected.append(_reject(doc, f"could not be chunked: {type(exc).__name__}: {exc}", "chunk"))
            ctx.progress.advance("chunk", len(batch))
        return chunks, rejected


def validate_step(
    ctx: IngestContext, chunks: Sequence[Chunk], docs: Sequence[Document]
) -> tuple[list[Chunk], list[QuarantineRecord], ValidationReport]:
    """Run the great-expectations suite; documents with failing chunks go to the quarantine."""
    with ctx.timed("validate"):
        kept, report = ctx.validator.validate(chunks)
        by_id = {d.doc_id: d for d in docs}
        chunked = {c.doc_id for c in chunks}
        rejected = [_reject(by_id[doc_id], reason, "validate") for doc_id, reason in report.rejected.items()]
        # A document that produced no chunk at all would silently vanish: reject it explicitly.
        rejected += [
            _reject(d, "no chunks (no text after splitting)", "chunk") for d in docs if d.doc_id not in chunked
        ]
        return kept, rejected, report


def embed_step(ctx: IngestContext, chunks: Sequence[Chunk], writer: IndexWriter | None) -> Embedded:
    """Embed chunks that are not in the index yet; reuse stored vectors for chunk ids that are."""
    with ctx.timed("embed"):
        reuse: dict[str, np.ndarray] = {}
        if writer is not None and writer.base is not None and chunks:
            existing = {cid for e in writer.base.docs.values() for cid in e.chunk_ids}
            wanted = [c.chunk_id for c in chunks if c.chunk_id in existing]
            reuse = writer.vectors(wanted)
        fresh = [c for c in chunks if c.chunk_id not in reuse]
        dense = np.empty((len(chunks), ctx.embedder.identity.dim), dtype=np.float32)
        if fresh:
            ctx.progress.start("embed", len(fresh))
            vectors = ctx.embedder.encode(
                [c.embed_text for c in fresh], progress=lambda n: ctx.progress.advance("embed", n)
            )
            fresh_rows = {c.chunk_id: v for c, v in zip(fresh, vectors, strict=True)}
        else:
            fresh_rows = {}
        for row, chunk in enumerate(chunks):
            dense[row] = reuse[chunk.chunk_id] if chunk.chunk_id in reuse else fresh_rows[chunk.chunk_id]
        avgdl = writer.avgdl if writer is not None else 200.0
        bm25 = Bm25Encoder(avgdl=avgdl)
        sparse = tuple(bm25.encode_document(c.embed_text) for c in chunks)
        return Embedded(chunks=tuple(chunks), dense=dense, sparse=sparse, computed=len(fresh), reused=len(reuse))


def upsert_step(ctx: IngestContext, writer: IndexWriter, embedded: Embedded, *, source_key: str) -> int:
    """Write the new points into the staged version."""
    with ctx.timed("upsert"):
        return writer.upsert(embedded.chunks, embedded.dense, embedded.sparse, source_key=source_key)


def delete_stale_step(
    ctx: IngestContext, writer: IndexWriter, plan: Plan, landed: Mapping[str, DocEntry]
) -> tuple[int, dict[str, DocEntry]]:
    """Remove chunks of deleted documents and the old chunks of changed ones; return the new document map."""
    with ctx.timed("delete"):
        docs = dict(plan.base.docs) if plan.base else {}
        stale: set[str] = set()
        for entry in plan.deleted:
            stale.update(entry.chunk_ids)
            docs.pop(entry.doc_id, None)
        for doc_id, entry in landed.items():
            old = docs.get(doc_id)
            if old is not None:
                stale.update(set(old.chunk_ids) - set(entry.chunk_ids))
            docs[doc_id] = entry
        deleted = writer.delete(sorted(stale)) if stale else 0
        return deleted, docs


def landed_entries(chunks: Sequence[Chunk], docs: Sequence[Document], source_key: str) -> dict[str, DocEntry]:
    """Manifest entries for the documents whose chunks passed validation."""
    by_doc: dict[str, list[str]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk.chunk_id)
    return {
        d.doc_id: DocEntry(
            doc_id=d.doc_id,
            content_hash=d.content_hash,
            source_key=source_key,
            source=d.source,
            title=d.title,
            chunk_ids=tuple(by_doc[d.doc_id]),
        )
        for d in docs
        if d.doc_id in by_doc
    }


def check_failure_share(plan: Plan, failed: int, max_share: float) -> None:
    """Fail the run (nothing published) when too many documents were rejected."""
    seen = len(plan.discovery.items) + len(plan.discovery.rejected)
    if seen and failed / seen > max_share:
        raise FailureThresholdExceeded(
            f"{failed} of {seen} documents failed ({failed / seen:.0%} > {max_share:.0%} allowed by "
            "RAGOPS_INGEST__MAX_FAILURE_SHARE); nothing was published, see `ragops quarantine`"
        )


def record_rejections(
    ctx: IngestContext, rejected: Sequence[QuarantineRecord], *, run_id: str, source_key: str
) -> list[QuarantineRecord]:
    """Write this run's quarantine records for the source, replacing its earlier ones.

    Called before anything can fail the run, so no reason is ever lost.
    """
    stamped = [replace(r, run_id=run_id, source_key=source_key) for r in rejected]
    ctx.quarantine.put(stamped)
    ctx.quarantine.retain(source_key, {(r.doc_id, r.source) for r in stamped})
    for record in stamped:
        logger.warning(
            "quarantined %s",
            record.source,
            extra={"source": record.source, "doc_id": record.doc_id, "stage": record.stage, "reason": record.reason},
        )
    return stamped


def begin_step(
    ctx: IngestContext, chunks: Sequence[Chunk], *, run_id: str, base: Manifest | None = None
) -> IndexWriter:
    """Open the next index version (a first version takes its BM25 avgdl from this batch); ``base`` is the
    manifest the plan compared against, reused while it is still the published one."""
    with ctx.timed("begin"):
        # avgdl is fixed when a collection is first built; later versions keep it, so only measure it then.
        first = ctx.index.current_version() is None
        avgdl = Bm25Encoder().average_length([c.embed_text for c in chunks[:5000]]) if first else 0.0
        return ctx.index.begin(
            embedder=ctx.embedder.identity, chunking=ctx.chunker.params, avgdl=avgdl, run_id=run_id, known=base
        )


def publish_step(ctx: IngestContext, writer: IndexWriter, docs: Mapping[str, DocEntry]) -> IndexVersion:
    """Atomically make the staged version current; the writer then drops versions beyond the keep-last-N policy
    (a second ``gc()`` here opened the shard again: 0.2 s of a small run's 0.5 s of index time)."""
    with ctx.timed("publish"):
        return writer.publish(docs)


@dataclass(frozen=True)
class RunOutcome:
    """What a run that opened a writer produced."""

    version: IndexVersion
    landed: Mapping[str, DocEntry]
    embedded: Embedded
    upserted: int
    deleted: int
    validation: tuple[ValidationReport, ...]


def finish_run(
    ctx: IngestContext,
    plan: Plan,
    *,
    run_id: str,
    started: float,
    rejected: Sequence[QuarantineRecord],
    outcome: RunOutcome | None,
) -> IngestReport:
    """Release quarantine entries of documents that landed and build the report."""
    with ctx.timed("report"):
        stamped = list(rejected)
        landed = outcome.landed if outcome else {}
        for entry in landed.values():
            ctx.quarantine.release(entry.doc_id, entry.source)
        base_docs = plan.base.docs if plan.base else {}
        new = sum(1 for d in landed if d not in base_docs)
        current = outcome.version if outcome else (plan.base.version if plan.base else None)
    return IngestReport(
        run_id=run_id,
        source=plan.discovery.source_key,
        collection=ctx.collection,
        documents_seen=len(plan.discovery.items) + len(plan.discovery.rejected),
        documents_new=new,
        documents_changed=len(landed) - new,
        documents_unchanged=len(plan.unchanged),
        documents_deleted=len(plan.deleted) if outcome else 0,
        documents_failed=len(stamped),
        chunks_upserted=outcome.upserted if outcome else 0,
        chunks_deleted=outcome.deleted if outcome else 0,
        chunks_truncated=sum(1 for c in outcome.embedded.chunks if c.truncated) if outcome else 0,
        embeddings_computed=outcome.embedded.computed if outcome else 0,
        embeddings_reused=outcome.embedded.reused if outcome else 0,
        points_total=current.points if current else 0,
        index_version=current.version if current else None,
        published=outcome is not None,
        seconds=time.perf_counter() - started,
        stage_seconds=dict(ctx.stage_seconds),
        quarantined=tuple(stamped),
        validation=outcome.validation if outcome else (),
    )


# ---------------------------------------------------------------------------------------------------- the run
ReadResult = tuple[list[Document], list[QuarantineRecord]]
READ_BATCH = 16


def read_batches_inline(ctx: IngestContext, batches: Sequence[Sequence[SourceItem]]) -> list[ReadResult]:
    """Read batches one after another (the flow maps them over a thread pool instead)."""
    return [read_step(ctx, batch) for batch in batches]


@dataclass(frozen=True)
class StepRunner:
    """How each step is executed: plain calls by default; the Prefect flow passes its tasks (same signatures).

    Keeping the sequence in :func:`run_ingest` alone means the CLI's in-process run and the orchestrated flow can
    never drift apart.
    """

    discover: Callable[..., Discovery] = discover_step
    plan: Callable[..., Plan] = plan_step
    read_batches: Callable[..., list[ReadResult]] = read_batches_inline
    chunk: Callable[..., tuple[list[Chunk], list[QuarantineRecord]]] = chunk_step
    validate: Callable[..., tuple[list[Chunk], list[QuarantineRecord], ValidationReport]] = validate_step
    embed: Callable[..., Embedded] = embed_step
    upsert: Callable[..., int] = upsert_step
    delete_stale: Callable[..., tuple[int, dict[str, DocEntry]]] = delete_stale_step
    publish: Callable[..., IndexVersion] = publish_step


def run_ingest(
    settings: PipelineSettings,
    source: Path,
    *,
    collection: str | None = None,
    tenant: str | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    runner: StepRunner | None = None,
    index: VectorIndex | None = None,
) -> IngestReport:
    """Ingest ``source`` into ``collection``: the whole run, with each step executed by ``runner``.

    ``index`` replaces the collection's default :class:`VectorIndex` (e.g. one with an injected server client).

    Raises:
        SourceError: The source cannot be listed.
        FailureThresholdExceeded: Too many documents failed; their quarantine records are written, nothing is
            published; the exception's ``report`` says what the run saw.
    """
    steps = runner or StepRunner()
    started = time.perf_counter()
    ctx = IngestContext(settings, collection=collection, progress=progress, index=index)
    run_id = run_id or uuid.uuid4().hex
    discovery = steps.discover(ctx, source, tenant=tenant)
    plan = steps.plan(ctx, discovery)
    batches = [list(plan.todo[i : i + READ_BATCH]) for i in range(0, len(plan.todo), READ_BATCH)]
    docs: list[Document] = []
    rejected: list[QuarantineRecord] = [*discovery.rejected, *plan.conflicts]
    files = sum(1 for item in plan.todo if item.kind == "file")
    if files:
        ctx.progress.start("partition", files)
    for batch_docs, batch_rejects in steps.read_batches(ctx, batches) if batches else []:
        docs += batch_docs
        rejected += batch_rejects
    kept: list[Chunk] = []
    validation: tuple[ValidationReport, ...] = ()
    if docs:
        chunks, chunk_rejects = steps.chunk(ctx, docs)
        rejected += chunk_rejects
        failed = {r.doc_id for r in chunk_rejects}
        docs = [d for d in docs if d.doc_id not in failed]
        kept, validate_rejects, report = steps.validate(ctx, chunks, docs)
        rejected += validate_rejects
        validation = (report,)
    rejected = record_rejections(ctx, rejected, run_id=run_id, source_key=discovery.source_key)
    try:
        check_failure_share(plan, len(rejected), settings.ingest.max_failure_share)
    except FailureThresholdExceeded as exc:
        summary = finish_run(ctx, plan, run_id=run_id, started=started, rejected=rejected, outcome=None)
        raise FailureThresholdExceeded(str(exc), report=summary) from None
    if not kept and not plan.deleted:
        return finish_run(ctx, plan, run_id=run_id, started=started, rejected=rejected, outcome=None)
    writer = begin_step(ctx, kept, run_id=run_id, base=plan.base)
    try:
        embedded = steps.embed(ctx, kept, writer)
        upserted = steps.upsert(ctx, writer, embedded, source_key=discovery.source_key)
        landed = landed_entries(kept, docs, discovery.source_key)
        deleted, manifest_docs = steps.delete_stale(ctx, writer, plan, landed)
        version = steps.publish(ctx, writer, manifest_docs)
    except BaseException:
        writer.abort()
        raise
    outcome = RunOutcome(
        version=version, landed=landed, embedded=embedded, upserted=upserted, deleted=deleted, validation=validation
    )
    return finish_run(ctx, plan, run_id=run_id, started=started, rejected=rejected, outcome=outcome)
