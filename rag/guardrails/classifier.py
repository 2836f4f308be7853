"""The trained injection classifier: logistic regression over the stack's MiniLM vector plus char n-gram TF-IDF.

One forward pass serves retrieval and this check: the service embeds the prepared question once and the classifier
reads that vector. Char 2-5-gram TF-IDF features carry what an English MiniLM misses (German wording, odd spellings).
The classifier records the SHA-256 of the embedder weights it was trained on; a stack with another embedder (a
fine-tuned one) gets its vector from the base model instead (see :class:`rag.guardrails.chain.InputGuard`).

Evaluation is grouped cross-validation: near-duplicates and paraphrases (MiniLM cosine >= ``group_cosine`` or a
shared 6-word run) form one group, so a paraphrase of a training example never sits in its test fold; the decision
threshold is chosen inside each training fold (inner grouped CV), never on the test fold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

TARGET_FPR = 0.045
"""The threshold is the lowest score whose out-of-fold false-positive rate stays at or below this (margin to 0.05)."""


@dataclass(frozen=True)
class Example:
    """One labelled text (1 = injection or jailbreak)."""

    text: str
    label: int


@dataclass(frozen=True)
class CvReport:
    """Grouped cross-validation figures at the threshold chosen inside each training fold."""

    folds: int
    groups: int
    examples: int
    recall: float
    fpr: float
    auc: float
    threshold_mean: float

    def to_json(self) -> dict[str, float | int]:
        """Plain JSON (logged as run metrics)."""
        return asdict(self)


def _features(vectors: np.ndarray, tfidf: Any, texts: Sequence[str]) -> Any:
    from scipy.sparse import csr_matrix, hstack

    return hstack([csr_matrix(vectors.astype(np.float64)), tfidf.transform(list(texts))]).tocsr()


class InjectionClassifier:
    """A fitted classifier with the embedder hash and threshold it was trained with."""

    def __init__(self, tfidf: Any, model: Any, *, threshold: float, embedder_sha256: str) -> None:
        self.tfidf = tfidf
        self.model = model
        self.threshold = threshold
        self.embedder_sha256 = embedder_sha256

    @classmethod
    def fit(
        cls, texts: Sequence[str], labels: Sequence[int], vectors: np.ndarray, *, embedder_sha256: str
    ) -> InjectionClassifier:
        """Fit on ``texts`` with their embedder ``vectors``; the threshold comes from inner grouped CV."""
        tfidf, model = _fit(texts, labels, vectors)
        groups = group_examples(texts, vectors)
        threshold = _inner_threshold(texts, np.asarray(labels), vectors, groups)
        return cls(tfidf, model, threshold=threshold, embedder_sha256=embedder_sha256)

    def scores(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """Probability of injection per text."""
        return np.asarray(self.model.predict_proba(_features(vectors, self.tfidf, texts))[:, 1])

    def save(self, folder: Path) -> None:
        """``classifier.joblib`` plus ``meta.json`` (threshold, embedder hash) into ``folder``."""
        import joblib

        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump({"tfidf": self.tfidf, "model": self.model}, folder / "classifier.joblib")
        meta = {"threshold": self.threshold, "embedder_sha256": self.embedder_sha256}
        (folder / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path) -> InjectionClassifier:
        """The classifier saved by :meth:`save`."""
        import joblib

        parts = joblib.load(folder / "classifier.joblib")
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            parts["tfidf"], parts["model"], threshold=float(meta["threshold"]), embedder_sha256=meta["embedder_sha256"]
        )


def _fit(texts: Sequence[str], labels: Sequence[int], vectors: np.ndarray) -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, lowercase=True)
    tfidf.fit(list(texts))
    model = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced")
    model.fit(_features(vectors, tfidf, texts), np.asarray(labels))
    return tfidf, model


def _predict(tfidf: Any, model: Any, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(_features(vectors, tfidf, texts))[:, 1])


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def group_examples(
    texts: Sequence[str], vectors: np.ndarray, *, group_cosine: float = 0.8, shingle: int = 6
) -> np.ndarray:
    """Group ids joining near-duplicates: cosine >= ``group_cosine`` or a shared run of ``shingle`` words."""
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similar = np.argwhere(np.triu(unit @ unit.T, k=1) >= group_cosine)
    for i, j in similar:
        union(int(i), int(j))
    seen: dict[tuple[str, ...], int] = {}
    for i, text in enumerate(texts):
        words = _words(text)
        for k in range(len(words) - shingle + 1):
            key = tuple(words[k : k + shingle])
            if key in seen:
                union(i, seen[key])
            else:
                seen[key] = i
    return np.asarray([find(i) for i in range(len(texts))])


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, target_fpr: float = TARGET_FPR) -> float:
    """Lowest threshold whose false-positive rate on ``scores`` is at most ``target_fpr``."""
    negatives = np.sort(scores[labels == 0])[::-1]
    if len(negatives) == 0:
        return 0.5
    allowed = int(np.floor(target_fpr * len(negatives)))
    # scores strictly above the (allowed+1)-th highest negative are positives
    cut = negatives[allowed] if allowed < len(negatives) else negatives[-1] - 1e-9
    return float(np.nextafter(cut, 1.0))


def _inner_threshold(texts: Sequence[str], labels: np.ndarray, vectors: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.model_selection import GroupKFold

    scores = np.zeros(len(texts))
    for train, test in GroupKFold(n_splits=4).split(vectors, labels, groups):
        tfidf, model = _fit([texts[i] for i in train], labels[train], vectors[train])
        scores[test] = _predict(tfidf, model, [texts[i] for i in test], vectors[test])
    return threshold_at_fpr(scores, labels)


def cross_validate(
    texts: Sequence[str],
    labels: Sequence[int],
    vectors: np.ndarray,
    *,
    folds: int = 5,
    rules: Callable[[str], bool] | None = None,
    extra: tuple[Sequence[str], Sequence[int], np.ndarray] | None = None,
) -> CvReport:
    """Grouped, nested CV: recall and FPR on each test fold at the threshold chosen on its training fold.

    ``rules`` (text -> injection?) ORs the rule layer into the decision, as the chain does. ``extra`` (texts,
    labels, vectors) are examples that only ever join the training side of each fold.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    y = np.asarray(labels)
    groups = group_examples(texts, vectors)
    predicted = np.zeros(len(texts), dtype=bool)
    scores = np.zeros(len(texts))
    thresholds: list[float] = []
    for train, test in GroupKFold(n_splits=folds).split(vectors, y, groups):
        train_texts = [texts[i] for i in train]
        train_y, train_v, train_g = y[train], vectors[train], groups[train]
        if extra is not None:
            train_texts += list(extra[0])
            train_y = np.concatenate([train_y, np.asarray(extra[1])])
            train_v = np.vstack([train_v, extra[2]])
            train_g = np.concatenate([train_g, -1 - np.arange(len(extra[0]))])
        tfidf, model = _fit(train_texts, train_y, train_v)
        threshold = _inner_threshold(train_texts, train_y, train_v, train_g)
        thresholds.append(threshold)
        test_texts = [texts[i] for i in test]
        scores[test] = _predict(tfidf, model, test_texts, vectors[test])
        predicted[test] = scores[test] >= threshold
        if rules is not None:
            predicted[test] |= np.asarray([rules(t) for t in test_texts])
    positives, negatives = y == 1, y == 0
    return CvReport(
        folds=folds,
        groups=len(set(groups.tolist())),
        examples=len(texts),
        recall=float(predicted[positives].mean()),
        fpr=float(predicted[negatives].mean()),
        auc=float(roc_auc_score(y, scores)),
        threshold_mean=float(np.mean(thresholds)),
    )


def load_examples(path: Path) -> list[Example]:
    """``{"text", "label"}`` lines."""
    out: list[Example] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("text"), str) or row.get("label") not in (0, 1):
            raise ValueError(f"{path}:{number}: expected {{'text': str, 'label': 0|1}}")
        out.append(Example(row["text"], int(row["label"])))
    return out
