"""One chunk of the served index by id: what a user reads when they open a citation.

Chunk ids are UUIDs derived from (document id, position, chunk text), so an id names exactly one text: a chunk
found under a cited id is the text that was cited, even if the index has moved on since. The payload is
llama-index's node layout (see :func:`pipelines.index.point_payload`), read back with llama-index's own decoder.

A chunk outside the asking principal's scope (another tenant's, or an ACL it is not in: :mod:`rag.access`) is
answered exactly like a chunk that does not exist, so an id reveals nothing about other tenants' documents.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from rag.access import UNRESTRICTED, AccessScope
from rag.errors import RagError, RetrievalError
from rag.service.holder import Served


class UnknownChunk(RagError, LookupError):
    """No chunk with this id in the served index version."""


@dataclass(frozen=True)
class SourceChunk:
    """A chunk's text and where it comes from."""

    chunk_id: str
    doc_id: str
    title: str
    source: str
    position: int
    text: str
    index_version: int


def fetch_chunk(served: Served, chunk_id: str, *, scope: AccessScope = UNRESTRICTED) -> SourceChunk:
    """The chunk ``chunk_id`` of the index version ``served`` reads, if ``scope`` permits it. Blocking: call from a
    worker thread.

    Raises:
        UnknownChunk: No such chunk (including ids that are not UUIDs, which no chunk can have), or one the scope
            does not permit (the same answer, so existence is not revealed).
        RetrievalError: Qdrant failed.
    """
    try:
        point_id = str(uuid.UUID(chunk_id))
    except ValueError:
        raise UnknownChunk(f"no chunk {chunk_id!r}: chunk ids are UUIDs, as in the citations of an answer") from None
    reader = served.engine.reader
    try:
        points = reader.retrieve([point_id])
    except Exception as exc:  # the engine and qdrant-client raise their own errors
        raise RetrievalError(f"reading chunk {chunk_id} failed: {type(exc).__name__}: {exc}") from exc
    if not points or not points[0].payload or not scope.permits(points[0].payload):
        raise UnknownChunk(
            f"no chunk {chunk_id!r} in index v{served.index_version} of {reader.collection!r} "
            "(it may have been replaced by a later ingestion; ask again to get current citations)"
        )
    return _to_source(point_id, dict(points[0].payload), served.index_version)


def _to_source(chunk_id: str, payload: dict[str, Any], index_version: int) -> SourceChunk:
    from llama_index.core.schema import MetadataMode
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    node = metadata_dict_to_node(payload)
    meta = node.metadata
    return SourceChunk(
        chunk_id=chunk_id,
        doc_id=str(node.ref_doc_id or meta.get("doc_id") or ""),
        title=str(meta.get("title") or ""),
        source=str(meta.get("source") or ""),
        position=int(meta.get("position") or 0),
        text=node.get_content(metadata_mode=MetadataMode.NONE),
        index_version=index_version,
    )
