"""Fitting the retrieved context into an LLM's input token budget.

Prompt tokens are most of what an LLM call costs, and the lowest-ranked chunks are the ones least likely to hold the
answer. So, over budget, chunks are dropped from the bottom of the ranking first; if the best chunks alone still do
not fit, they are cut down to the sentences the extractive scorer ranks highest for the question, in their original
order, never cutting a sentence mid-way. The best-ranked chunk is never dropped, only trimmed. Tokens are the
embedder's word pieces (the count ingestion stored with each chunk): close to, not the same as, the LLM's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rag.answer import ExtractiveAnswerer
from rag.types import RetrievedChunk


@dataclass(frozen=True)
class FittedContext:
    """The chunks handed to the LLM and what fitting them cost."""

    chunks: tuple[RetrievedChunk, ...]
    tokens_before: int
    tokens_after: int
    dropped: int
    trimmed: int

    @property
    def saved(self) -> int:
        """Context tokens not sent."""
        return self.tokens_before - self.tokens_after


def fit_context(
    question: str,
    chunks: Sequence[RetrievedChunk],
    *,
    budget: int,
    count_tokens: Callable[[Sequence[str]], list[int]],
    ranker: ExtractiveAnswerer | None = None,
) -> FittedContext:
    """Keep ``chunks`` within ``budget`` context tokens (see the module docstring)."""
    sizes = chunk_tokens(chunks, count_tokens)
    before = sum(sizes)
    kept = list(chunks)
    while sum(sizes) > budget and len(kept) > 1:
        kept.pop()
        sizes.pop()
    if sum(sizes) <= budget or not kept:
        return FittedContext(tuple(kept), before, sum(sizes), len(chunks) - len(kept), 0)
    ranked = (ranker or ExtractiveAnswerer()).rank_sentences(question, kept)
    lengths = count_tokens([s.text for s in ranked]) if ranked else []
    chosen: dict[int, list[tuple[int, str]]] = {}
    used = 0
    for sentence, length in zip(ranked, lengths, strict=True):
        if used + length > budget:
            continue  # a shorter, lower-ranked sentence may still fit
        used += length
        chosen.setdefault(sentence.chunk_rank, []).append((sentence.index, sentence.text))
    fitted = [
        replace(chunk, text=" ".join(text for _, text in sorted(chosen[rank])))
        for rank, chunk in enumerate(kept)
        if rank in chosen
    ]
    trimmed = len(fitted)
    return FittedContext(tuple(fitted), before, used, len(chunks) - len(fitted), trimmed)


def chunk_tokens(chunks: Sequence[RetrievedChunk], count_tokens: Callable[[Sequence[str]], list[int]]) -> list[int]:
    """Tokens per chunk: what ingestion stored (``n_tokens``: its title line and text, as embedded), counted only
    for chunks without it (re-tokenizing five chunks per request was an eighth of the service's CPU under load)."""
    stored = [c.metadata.get("n_tokens") for c in chunks]
    missing = [c.text for c, n in zip(chunks, stored, strict=True) if not isinstance(n, int)]
    counted = iter(count_tokens(missing) if missing else [])
    return [n if isinstance(n, int) else next(counted) for n in stored]
