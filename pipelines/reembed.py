"""Shadow indexes: a published collection re-embedded by another embedder, written as a collection of its own.

Retraining changes the embedder, and vectors of two models never share a collection (every version records its
:class:`~pipelines.embed.EmbedderIdentity`). Everything else about a chunk does not depend on the embedder: its
id, text, payload and BM25 vector. So a shadow build reads the points of the source's published version and
computes only the dense vectors again, with the title fitted exactly as at ingestion: no partitioning, chunking or
validation, and the source collection is only read (a reader's private copy), so the champion keeps serving from it.

The target is an ordinary versioned collection (versions, manifest, pointer, atomic publish), so ingestion into it,
rollback to it and garbage collection need nothing special. Re-running a build publishes a new version of the target
that again mirrors the source exactly (points missing from the source are deleted).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.chunk import Chunker
from pipelines.errors import IndexError_
from pipelines.index import IndexReader, IndexVersion, VectorIndex
from pipelines.settings import ChunkingSettings, PipelineSettings
from pipelines.sparse import SparseVector

if TYPE_CHECKING:
    from pipelines.embed import Embedder

logger = logging.getLogger(__name__)

_SCROLL = 512


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored in a published version: what re-embedding and training-pair mining read."""

    chunk_id: str
    doc_id: str
    title: str
    text: str
    position: int
    payload: Mapping[str, Any]
    sparse: SparseVector | None


@dataclass(frozen=True)
class ShadowBuild:
    """What :func:`build_shadow_index` published."""

    source: str
    source_version: int
    target: IndexVersion
    embedded: int
    deleted: int
    seconds: float


def _text(payload: Mapping[str, Any]) -> str:
    raw = payload.get("_node_content")
    if isinstance(raw, str):
        try:
            node = json.loads(raw)
        except ValueError:
            node = {}
        if isinstance(node, dict) and isinstance(node.get("text"), str):
            return str(node["text"])
    return str(payload.get("text", ""))


def iter_chunks(reader: IndexReader, *, with_sparse: bool = True) -> Iterator[StoredChunk]:
    """Every point of the reader's version, in storage order."""
    for point in reader.scroll(sparse=with_sparse, payload=True):
        payload = dict(point.payload or {})
        sparse = None
        if point.sparse is not None:
            pairs = sorted(zip(point.sparse.indices, point.sparse.values, strict=True))
            sparse = SparseVector(indices=[i for i, _ in pairs], values=[v for _, v in pairs])
        yield StoredChunk(
            chunk_id=point.id,
            doc_id=str(payload.get("doc_id", "")),
            title=str(payload.get("title", "")),
            text=_text(payload),
            position=int(payload.get("position", 0) or 0),
            payload=payload,
            sparse=sparse,
        )


def build_shadow_index(
    settings: PipelineSettings,
    *,
    source: str,
    target: str,
    embedder: Embedder,
    run_id: str,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ShadowBuild:
    """Publish a version of ``target`` holding ``source``'s current points re-embedded by ``embedder``.

    Args:
        source: Collection read (its published version; never written).
        target: Collection written; created on first use, must have been built by ``embedder`` if it exists.
        embedder: The new model (its tokenizer fits titles exactly as the source's chunker did).
        run_id: Recorded with the new version (e.g. the retraining run).
        progress: Called with the number of chunks embedded after each batch.
        on_total: Called once with the number of chunks to embed (to size a progress bar).

    Raises:
        IndexError_: ``source`` has nothing published, or ``target`` was built by another embedder.
    """
    if source == target:
        raise IndexError_(f"a shadow index needs a collection other than its source {source!r}")
    started = time.perf_counter()
    src = VectorIndex(settings, collection=source)
    manifest = src.manifest()
    if manifest is None:
        raise IndexError_(f"collection {source!r} has no published version to re-embed; run `ragops ingest` first")
    chunking = manifest.version.chunking
    chunker = Chunker(ChunkingSettings(chunk_size=chunking.chunk_size, chunk_overlap=chunking.chunk_overlap), embedder)
    with src.reader(manifest.version.version) as reader:
        chunks = list(iter_chunks(reader))
    missing = [c.chunk_id for c in chunks if c.sparse is None]
    if missing:
        raise IndexError_(
            f"collection {source!r} has {len(missing)} points without a sparse vector (e.g. {missing[0]})"
        )
    texts = [chunker.embed_text_of(c.title, c.text) for c in chunks]
    if on_total:
        on_total(len(texts))
    dense = embedder.encode(texts, progress=progress) if texts else np.empty((0, embedder.identity.dim), np.float32)
    dst = VectorIndex(settings, collection=target)
    writer = dst.begin(embedder=embedder.identity, chunking=chunking, avgdl=manifest.version.avgdl, run_id=run_id)
    try:
        writer.upsert_points(
            [c.chunk_id for c in chunks],
            dense,
            [c.sparse for c in chunks if c.sparse is not None],
            [c.payload for c in chunks],
        )
        keep = {c.chunk_id for c in chunks}
        stale = [cid for entry in (writer.base.docs.values() if writer.base else ()) for cid in entry.chunk_ids]
        deleted = writer.delete([cid for cid in stale if cid not in keep])
        version = writer.publish(manifest.docs)
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - started
    logger.info(
        "shadow index published",
        extra={"source": source, "target": target, "version": version.version, "chunks": len(chunks)},
    )
    return ShadowBuild(
        source=source,
        source_version=manifest.version.version,
        target=version,
        embedded=len(chunks),
        deleted=deleted,
        seconds=seconds,
    )
