"""Sentence-aware chunking through llama-index, measured in the embedder's own word pieces.

llama-index's default splitter counts tiktoken tokens; MiniLM's window is 256 *word pieces*, and SciFact abstracts run
about 1.3 word pieces per tiktoken token, so most default-sized chunks are silently cut at 256 and their tails never
embedded. Here the ``SentenceSplitter`` gets the embedder's tokenizer, the chunk size is capped to the window minus
the special tokens, and the title is part of what is measured (it is embedded with every chunk). Each chunk's final
size is measured again with special tokens and ``truncated`` is set if it still does not fit (a single sentence longer
than the window); the ingest report counts those.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pipelines.settings import ChunkingSettings
from pipelines.types import Chunk, Document

if TYPE_CHECKING:
    from llama_index.core.node_parser import SentenceSplitter

    from pipelines.embed import Embedder

logger = logging.getLogger(__name__)

CHUNK_NAMESPACE = uuid.UUID("5b0f3c2e-8c1d-4f7a-9a55-2f1c6e0d4b71")
_SPECIAL_TOKENS = 2  # [CLS] and [SEP]


def chunk_id(doc_id: str, position: int, text: str) -> str:
    """Deterministic point id: the same document, position and text always give the same UUID."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{doc_id}\x1f{position}\x1f{digest}"))


def embed_text(title: str, text: str) -> str:
    """What the embedder sees for a chunk: the title line, a blank line, the chunk."""
    return f"{title}\n\n{text}" if title else text


@dataclass(frozen=True)
class ChunkingParams:
    """The chunking parameters an index version was built with (part of its identity)."""

    splitter: str
    chunk_size: int
    chunk_overlap: int
    tokenizer: str


class Chunker:
    """Splits documents into window-sized chunks.

    Usage example::

        chunker = Chunker(settings.chunking, embedder)
        chunks = chunker.chunk(document)
    """

    def __init__(self, settings: ChunkingSettings, embedder: Embedder) -> None:
        if settings.chunk_overlap >= settings.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        self._settings = settings
        self._embedder = embedder
        self._splitter: SentenceSplitter | None = None
        self._size = settings.chunk_size

    def warm_up(self) -> None:
        """Build the llama-index splitter around the embedder's tokenizer."""
        if self._splitter is not None:
            return
        from llama_index.core.node_parser import SentenceSplitter

        window = self._embedder.max_tokens - _SPECIAL_TOKENS
        self._size = min(self._settings.chunk_size, window)
        overlap = min(self._settings.chunk_overlap, self._size // 2)
        self._splitter = SentenceSplitter(
            chunk_size=self._size,
            chunk_overlap=overlap,
            tokenizer=self._embedder.token_ids,
            include_metadata=False,
            include_prev_next_rel=False,
        )

    @property
    def params(self) -> ChunkingParams:
        """Effective parameters (after capping to the embedder window)."""
        self.warm_up()
        assert self._splitter is not None
        return ChunkingParams(
            splitter="llama_index.SentenceSplitter",
            chunk_size=self._splitter.chunk_size,
            chunk_overlap=self._splitter.chunk_overlap,
            tokenizer=self._embedder.identity.name,
        )

    def _fit_title(self, title: str) -> str:
        """Cap the title at a quarter of the chunk size in word pieces.

        The title is embedded with every chunk; a runaway title (a URL, a hash, a whole paragraph) must neither
        crowd out the text nor exceed the window (llama-index refuses metadata longer than the chunk).
        """
        cap = max(8, self._size // 4)
        if len(self._embedder.token_ids(title)) <= cap:
            return title
        kept: list[str] = []
        for word in title.split():
            if len(self._embedder.token_ids(" ".join([*kept, word]))) > cap:
                break
            kept.append(word)
        if kept:
            return " ".join(kept)
        # A single enormous token run (no spaces): keep as many characters as fit.
        text = title
        while text and len(self._embedder.token_ids(text)) > cap:
            text = text[: len(text) * 3 // 4]
        return text

    def embed_text_of(self, title: str, text: str) -> str:
        """What the embedder sees for a stored chunk (title fitted as at ingestion): re-embedding needs exactly it."""
        self.warm_up()
        return embed_text(self._fit_title(title), text)

    def chunk(self, doc: Document) -> list[Chunk]:
        """Split one document; the title's word pieces are subtracted from the room for text."""
        return self.chunk_many([doc])

    def chunk_many(self, docs: Sequence[Document]) -> list[Chunk]:
        """Split documents in order; chunk positions restart at 0 for each document."""
        self.warm_up()
        assert self._splitter is not None
        chunks: list[Chunk] = []
        for doc in docs:
            title = self._fit_title(doc.title)
            pieces = self._splitter.split_text_metadata_aware(doc.text, metadata_str=embed_text(title, ""))
            for position, piece in enumerate(p for p in pieces if p.strip()):
                chunks.append(
                    Chunk(
                        chunk_id=chunk_id(doc.doc_id, position, piece),
                        doc_id=doc.doc_id,
                        position=position,
                        text=piece,
                        embed_text=embed_text(title, piece),
                        n_tokens=0,
                        truncated=False,
                        source=doc.source,
                        title=doc.title,
                        doc_hash=doc.content_hash,
                        metadata=doc.metadata,
                    )
                )
        return self._measure(chunks)

    def _measure(self, chunks: list[Chunk]) -> list[Chunk]:
        counts = self._embedder.count_tokens([c.embed_text for c in chunks])
        limit = self._embedder.max_tokens
        return [replace(c, n_tokens=n, truncated=n > limit) for c, n in zip(chunks, counts, strict=True)]
