"""BM25-style sparse vectors for Qdrant, so hybrid retrieval needs no second index.

Documents carry the BM25 term-frequency part, ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``; the
collection's sparse vector uses Qdrant's ``Modifier.IDF`` so the inverse document frequency is computed by Qdrant
from the live collection (it stays right as documents come and go). Queries carry weight 1 per distinct term, so the
dot product is exactly the BM25 score. Terms are lower-cased word tokens, English stop words removed, Snowball
stemmed (PyStemmer), and hashed to 31-bit ids.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class SparseVector:
    """Parallel index/value lists, indices ascending (the order Qdrant stores)."""

    indices: list[int]
    values: list[float]


class Bm25Encoder:
    """Tokenise, stem and weight text for the ``text-sparse`` vector.

    Usage example::

        bm25 = Bm25Encoder(avgdl=180.0)
        doc = bm25.encode_document("Aspirin reduces the risk of stroke")
        query = bm25.encode_query("does aspirin lower stroke risk?")
    """

    def __init__(self, *, avgdl: float = 200.0, k1: float = 1.2, b: float = 0.75) -> None:
        if avgdl <= 0:
            raise ValueError("avgdl must be positive")
        self.avgdl = avgdl
        self.k1 = k1
        self.b = b

    @cached_property
    def _stemmer(self) -> Any:
        import Stemmer

        return Stemmer.Stemmer("english")

    @cached_property
    def _stopwords(self) -> frozenset[str]:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return frozenset(ENGLISH_STOP_WORDS)

    def terms(self, text: str) -> list[str]:
        """Stemmed, stop-word-free terms of ``text`` in order."""
        words = [w for w in _TOKEN.findall(text.lower()) if w not in self._stopwords]
        return list(self._stemmer.stemWords(words))

    @staticmethod
    def term_id(term: str) -> int:
        """Stable 31-bit id of a term (same in every process and version)."""
        return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF

    def encode_document(self, text: str) -> SparseVector:
        """BM25 term-frequency weights of a document chunk."""
        terms = self.terms(text)
        if not terms:
            return SparseVector([], [])
        counts = Counter(self.term_id(t) for t in terms)
        norm = self.k1 * (1 - self.b + self.b * len(terms) / self.avgdl)
        items = sorted(counts.items())
        return SparseVector(
            indices=[i for i, _ in items],
            values=[tf * (self.k1 + 1) / (tf + norm) for _, tf in items],
        )

    def encode_query(self, text: str) -> SparseVector:
        """One unit weight per distinct query term."""
        ids = sorted({self.term_id(t) for t in self.terms(text)})
        return SparseVector(indices=ids, values=[1.0] * len(ids))

    def average_length(self, texts: Sequence[str]) -> float:
        """Mean number of terms, used as ``avgdl`` when an index is first built."""
        if not texts:
            return self.avgdl
        return max(1.0, sum(len(self.terms(t)) for t in texts) / len(texts))
