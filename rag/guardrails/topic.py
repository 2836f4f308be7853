"""Topic and scope: how close a question is to anything the index covers, and to allowed and denied topics.

A :class:`CorpusProfile` is a handful of k-means centroids of a sample of the index's dense vectors (numpy only, a
few milliseconds at build time); the check is one small matrix product on the question's vector, so it runs before
any LLM call at no extra embedding cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


@dataclass(frozen=True)
class CorpusProfile:
    """Unit vectors summarising the corpus: k-means centroids plus the sampled vectors themselves (up to 2048)."""

    vectors: np.ndarray

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, *, clusters: int = 32, keep: int = 2048, seed: int = 0) -> CorpusProfile:
        """From a sample of the index's dense vectors (``reader.sample_vectors(n)``).

        The sample is kept (at most ``keep`` rows) so a question matching one small document is not averaged away,
        with ``clusters`` spherical k-means centroids added for the broad topics.
        """
        data = _unit(np.asarray(vectors, dtype=np.float32))
        if data.ndim != 2 or len(data) == 0:
            raise ValueError("a corpus profile needs a non-empty (n, dim) sample of vectors")
        rng = np.random.default_rng(seed)
        k = min(clusters, len(data))
        centroids = data[rng.choice(len(data), size=k, replace=False)]
        for _ in range(10):
            assign = np.argmax(data @ centroids.T, axis=1)
            for c in range(k):
                members = data[assign == c]
                if len(members):
                    centroids[c] = members.mean(axis=0)
            centroids = _unit(centroids)
        sample = data if len(data) <= keep else data[rng.choice(len(data), size=keep, replace=False)]
        return cls(vectors=np.vstack([centroids, sample]).astype(np.float32))

    def similarity(self, vector: np.ndarray) -> float:
        """Cosine of ``vector`` to the nearest profile vector."""
        return float(np.max(self.vectors @ _unit(np.asarray(vector, dtype=np.float32))))


def best_similarity(vector: np.ndarray, topics: np.ndarray) -> tuple[int, float]:
    """Index and cosine of the topic vector nearest to ``vector`` (``topics`` must be non-empty)."""
    scores = _unit(topics) @ _unit(np.asarray(vector, dtype=np.float32))
    index = int(np.argmax(scores))
    return index, float(scores[index])
