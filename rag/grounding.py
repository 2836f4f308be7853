"""Sentence support against retrieved text: the one implementation behind evaluation's groundedness metric and the
grounding guardrail.

A sentence is supported when it appears verbatim among the context sentences, else when its best MiniLM cosine to a
context sentence reaches the threshold. Offline (no LLM judge), so it measures closeness, not entailment: it catches
answers made up from nothing, not subtle contradictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SIMILARITY_TOLERANCE = 1e-6
"""Float32 embeddings of equal texts can have a cosine of 0.9999999; a threshold of 1.0 must still accept them."""


def unit_rows(matrix: np.ndarray, expected_rows: int) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero: similar to nothing); checks the row count."""
    import numpy as np

    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != expected_rows:
        raise ValueError(f"encode returned shape {array.shape}, expected ({expected_rows}, dim)")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)


def sentence_support(
    answer_sentences: Sequence[str],
    context_sentences: Sequence[str],
    encode: Callable[[Sequence[str]], np.ndarray],
    threshold: float = 0.6,
) -> list[float]:
    """Per answer sentence, its support in [-1, 1]: 1.0 when copied verbatim, else the best cosine to the context.

    Sentences are compared whitespace-collapsed; with no context every sentence gets -1.0. Callers compare the
    result against ``threshold - SIMILARITY_TOLERANCE``; ``threshold`` is validated here for all of them.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    answers = [" ".join(sentence.split()) for sentence in answer_sentences]
    contexts = list(dict.fromkeys(" ".join(sentence.split()) for sentence in context_sentences if sentence.strip()))
    if not contexts:
        return [-1.0] * len(answers)
    copied = set(contexts)
    to_encode = [sentence for sentence in dict.fromkeys(answers) if sentence not in copied]
    best: dict[str, float] = {sentence: 1.0 for sentence in answers if sentence in copied}
    if to_encode:
        texts = to_encode + contexts
        vectors = unit_rows(encode(texts), len(texts))
        similarity = (vectors[: len(to_encode)] @ vectors[len(to_encode) :].T).max(axis=1)
        best.update(zip(to_encode, similarity.tolist(), strict=True))
    return [best[sentence] for sentence in answers]


def supported(support: float, threshold: float) -> bool:
    """Whether a sentence's support counts (with the float tolerance)."""
    return support >= threshold - SIMILARITY_TOLERANCE
