"""Training pairs for the embedder: labelled queries, user feedback and synthetic pairs, with no test-set leakage.

Three sources, in order of trust:

* **Labelled** queries: a BEIR folder's ``qrels/<split>.tsv`` (default split ``train``) or a JSONL of
  ``{"query", "positive_doc_id" | "positive_doc_ids", "negative_doc_ids"?, "id"?}``. Labels name *documents*; the
  index stores *chunks*, so each positive becomes the document's chunk the current champion ranks highest for the
  query (its first chunk when the champion does not find it), which is the passage the model must learn to find.
* **Feedback** from the query service (:meth:`rag.feedback.FeedbackStore.training_pairs`): a thumbs-up makes
  (question, cited chunk) a positive, a thumbs-down makes the chunk a hard negative of that question.
* **Synthetic** pairs made from the indexed chunks when labels are scarce: LLM questions, titles and sentences,
  filtered by round trip through the champion (:mod:`evaluation.synthetic`).

Hard negatives are mined from the champion's own index: chunks it ranks in ``[mine_skip, mine_depth)`` that belong
to no positive document of the query. The index already holds every chunk's vector, so mining costs one search per
query instead of re-encoding the corpus (what ``sentence_transformers.util.mine_hard_negatives`` would do).

Leakage from the evaluation split is impossible by construction: :class:`Exclusions` is built from the gate's test
set, and every source drops a query whose id is a test id or whose normalised text equals a test question (SciFact's
train split repeats two test claims word for word under other ids). The great-expectations suite of
:func:`validate_training_set` then checks the assembled set again (no test id, no test text, no empty text, no
duplicate pair) before a single step of training runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from evaluation.errors import BadTrainingSet
from evaluation.metrics import normalize_answer
from evaluation.testsets import jsonl_records

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from evaluation.synthetic import SyntheticReport
    from evaluation.testsets import TestSet
    from pipelines.quality import ExpectationOutcome
    from pipelines.reembed import StoredChunk
    from rag.engine import RagEngine
    from rag.feedback import FeedbackPair

logger = logging.getLogger(__name__)

Origin = Literal["labelled", "feedback", "synthetic"]


@dataclass(frozen=True)
class LabelledQuery:
    """A query with the documents that answer it (and optionally documents that do not)."""

    query_id: str
    query: str
    positive_doc_ids: tuple[str, ...]
    negative_doc_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainPair:
    """One training example: a query, the passage it should find, and passages it should rank below it.

    Texts are what the embedder sees (a chunk's title line plus its text), so training matches indexing.
    """

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    origin: Origin = "labelled"
    query_id: str = ""
    positive_id: str = ""


def normalize_query(text: str) -> str:
    """The form two queries are compared in: SQuAD normalisation (case, punctuation, articles, spaces)."""
    return normalize_answer(text)


@dataclass(frozen=True)
class Exclusions:
    """What training must never see: the test set's query ids and (normalised) question texts."""

    testset: str
    query_ids: frozenset[str]
    query_texts: frozenset[str]

    @classmethod
    def from_testset(cls, testset: TestSet) -> Exclusions:
        """Every question of ``testset``."""
        return cls(
            testset=testset.name,
            query_ids=frozenset(item.id for item in testset.items),
            query_texts=frozenset(normalize_query(item.question) for item in testset.items),
        )

    def reason(self, query_id: str, query: str) -> str | None:
        """Why a query is excluded, or None when it may be trained on."""
        if query_id and query_id in self.query_ids:
            return "test-set id"
        if normalize_query(query) in self.query_texts:
            return "test-set question text"
        return None


@dataclass(frozen=True)
class TrainingSet:
    """The assembled pairs, what was dropped and why, and a content hash (logged with the fine-tuning run)."""

    pairs: tuple[TrainPair, ...]
    dropped: Mapping[str, int] = field(default_factory=dict)
    synthetic: SyntheticReport | None = None

    @property
    def sha256(self) -> str:
        """Hash of the pairs in order (two runs on the same hash trained on the same data)."""
        digest = hashlib.sha256()
        for pair in self.pairs:
            digest.update(json.dumps([pair.query, pair.positive, list(pair.negatives)], ensure_ascii=False).encode())
        return digest.hexdigest()

    def counts(self) -> dict[str, int]:
        """Pairs per origin."""
        return dict(sorted(Counter(p.origin for p in self.pairs).items()))

    def shuffled_labels(self, seed: int) -> TrainingSet:
        """The same queries with positives permuted among them: a deliberately wrong set (tests the gate)."""
        rng = random.Random(seed)
        positives = [p.positive for p in self.pairs]
        rng.shuffle(positives)
        pairs = tuple(
            TrainPair(p.query, positive, (), p.origin, p.query_id, "shuffled")
            for p, positive in zip(self.pairs, positives, strict=True)
        )
        return TrainingSet(pairs=pairs, dropped=dict(self.dropped))

    def to_frame(self) -> pd.DataFrame:
        """One row per pair (for validation and the MLflow dataset)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "query_id": [p.query_id for p in self.pairs],
                "query": [p.query for p in self.pairs],
                "query_norm": [normalize_query(p.query) for p in self.pairs],
                "positive": [p.positive for p in self.pairs],
                "negatives": [len(p.negatives) for p in self.pairs],
                "origin": [p.origin for p in self.pairs],
            }
        )


# ----------------------------------------------------------------------------------------------------------- sources
def _ids(value: object, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | int):
        return (str(value),)
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return tuple(str(v) for v in value)
    raise BadTrainingSet(f"{where}: {key!r} must be a document id or a list of them")


def load_labelled(ref: str | Path, *, split: str = "train") -> list[LabelledQuery]:
    """Labelled queries from a BEIR folder (``queries.jsonl`` + ``qrels/<split>.tsv``) or a JSONL file.

    Raises:
        BadTrainingSet: Nothing usable at ``ref``, or a malformed record (the message says where).
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return _load_beir(path, split)
    if not path.is_file():
        raise BadTrainingSet(f"training data {str(ref)!r} is neither a BEIR folder nor a JSONL file")
    out: list[LabelledQuery] = []
    for lineno, record in jsonl_records(path, error=BadTrainingSet):
        where = f"{path}:{lineno}"
        query = record.get("query")
        if not isinstance(query, str) or not query.strip():
            raise BadTrainingSet(f"{where}: 'query' must be a non-empty string")
        positives = _ids(record.get("positive_doc_ids", record.get("positive_doc_id")), where, "positive_doc_id")
        if not positives:
            raise BadTrainingSet(f"{where}: 'positive_doc_id' is required")
        negatives = _ids(record.get("negative_doc_ids"), where, "negative_doc_ids")
        query_id = str(record.get("id") or f"{path.stem}:{lineno}")
        out.append(LabelledQuery(query_id, query.strip(), positives, negatives))
    return out


def _load_beir(folder: Path, split: str) -> list[LabelledQuery]:
    qrels_path = folder / "qrels" / f"{split}.tsv"
    queries_path = folder / "queries.jsonl"
    if not qrels_path.is_file():
        raise BadTrainingSet(f"{folder} has no qrels/{split}.tsv: no {split} split to train on")
    if not queries_path.is_file():
        raise BadTrainingSet(f"{folder} has no queries.jsonl")
    positives: dict[str, list[str]] = {}
    with qrels_path.open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) < 3 or row[0] in ("query-id", "query_id"):
                continue
            try:
                grade = int(float(row[2]))
            except ValueError:
                raise BadTrainingSet(f"{qrels_path}: bad relevance grade {row[2]!r} for query {row[0]!r}") from None
            if grade > 0:
                positives.setdefault(row[0], []).append(row[1])
    texts: dict[str, str] = {}
    for _, record in jsonl_records(queries_path, error=BadTrainingSet):
        qid, text = record.get("_id"), record.get("text")
        if qid is not None and isinstance(text, str) and str(qid) in positives:
            texts[str(qid)] = text
    return [
        LabelledQuery(qid, texts[qid], tuple(dict.fromkeys(docs)))
        for qid, docs in positives.items()
        if qid in texts and texts[qid].strip()
    ]


def default_training_data(settings_train: str | None, eval_testset: str, split: str) -> str | None:
    """The configured labelled data, else the gate's test-set folder when it is BEIR and has the training split."""
    if settings_train:
        return settings_train
    folder = Path(eval_testset).expanduser()
    if folder.is_dir() and (folder / "qrels" / f"{split}.tsv").is_file():
        return str(folder)
    return None


# ------------------------------------------------------------------------------------------------------- assembling
class PairMiner:
    """Turns document-level labels into chunk-level pairs with hard negatives, using the champion's index.

    Args:
        engine: The champion, open (its retriever searches; its embedder encodes the queries).
        chunks: Every chunk of the champion's index version (:func:`pipelines.reembed.iter_chunks`).
        embed_text: What the embedder sees for a chunk (title fitted as at ingestion).
        negatives: Hard negatives per pair.
        depth: Chunks retrieved per query.
        skip: Top ranks never taken as negatives.
    """

    def __init__(
        self,
        engine: RagEngine,
        chunks: Sequence[StoredChunk],
        *,
        embed_text: Callable[[StoredChunk], str],
        negatives: int,
        depth: int,
        skip: int,
    ) -> None:
        self._engine = engine
        self._embed_text = embed_text
        self._negatives = negatives
        self._depth = depth
        self._skip = skip
        self.by_id = {c.chunk_id: c for c in chunks}
        self.by_doc: dict[str, list[StoredChunk]] = {}
        for chunk in chunks:
            self.by_doc.setdefault(chunk.doc_id, []).append(chunk)
        for doc_chunks in self.by_doc.values():
            doc_chunks.sort(key=lambda c: c.position)

    def text(self, chunk: StoredChunk) -> str:
        """The chunk as the embedder sees it."""
        return self._embed_text(chunk)

    def chunk(self, chunk_id: str) -> StoredChunk:
        """A chunk of the index by id."""
        return self.by_id[chunk_id]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The champion's unit embeddings of ``texts``, row for row."""
        return self._engine.embedder.encode(list(texts))

    def ranked(
        self,
        queries: Sequence[str],
        *,
        vectors: np.ndarray | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """Chunk ids the champion ranks for each query, best first (``depth`` deep); ``vectors``: the queries'
        embeddings when the caller has them already, else they are encoded here."""
        out: list[list[str]] = []
        retriever = self._engine.retriever
        for start in range(0, len(queries), 64):
            batch = list(queries[start : start + 64])
            batch_vectors = self._engine.embedder.encode(batch) if vectors is None else vectors[start : start + 64]
            for query, vector in zip(batch, batch_vectors, strict=True):
                out.append([c.chunk_id for c in retriever.search(query, vector, top_k=self._depth)])
            if progress:
                progress(len(batch))
        return out

    def labelled(
        self, queries: Sequence[LabelledQuery], *, progress: Callable[[int], None] | None = None
    ) -> tuple[list[TrainPair], Counter[str]]:
        """One pair per (query, positive document) the index holds; counts of what was dropped."""
        dropped: Counter[str] = Counter()
        usable = []
        for query in queries:
            if any(doc in self.by_doc for doc in query.positive_doc_ids):
                usable.append(query)
            else:
                dropped["positive document not in the index"] += 1
        rankings = self.ranked([q.query for q in usable], progress=progress)
        pairs: list[TrainPair] = []
        for query, ranking in zip(usable, rankings, strict=True):
            positives = set(query.positive_doc_ids)
            negatives = self._mine(ranking, positives)
            explicit = [self.by_doc[d][0] for d in query.negative_doc_ids if d in self.by_doc and d not in positives]
            chosen = [self.text(c) for c in explicit][: self._negatives] if explicit else []
            for chunk_id in negatives:
                if len(chosen) >= self._negatives:
                    break
                chosen.append(self.text(self.by_id[chunk_id]))
            for doc in query.positive_doc_ids:
                if doc not in self.by_doc:
                    dropped["positive document not in the index"] += 1
                    continue
                best = next((self.by_id[c] for c in ranking if self.by_id[c].doc_id == doc), self.by_doc[doc][0])
                pairs.append(
                    TrainPair(query.query, self.text(best), tuple(chosen), "labelled", query.query_id, best.chunk_id)
                )
        return pairs, dropped

    def _mine(self, ranking: Sequence[str], positive_docs: set[str]) -> list[str]:
        return [cid for cid in ranking[self._skip :] if self.by_id[cid].doc_id not in positive_docs]

    def feedback(self, feedback: Sequence[FeedbackPair]) -> tuple[list[TrainPair], Counter[str]]:
        """Thumbs-up pairs as positives, with the same question's thumbs-down chunks as their hard negatives."""
        dropped: Counter[str] = Counter()
        negatives: dict[str, list[str]] = {}
        for item in feedback:
            if item.label == "negative":
                chunk = self.by_id.get(item.chunk_id)
                negatives.setdefault(normalize_query(item.question), []).append(
                    self.text(chunk) if chunk else item.text
                )
        pairs: list[TrainPair] = []
        for item in feedback:
            if item.label != "positive":
                continue
            chunk = self.by_id.get(item.chunk_id)
            if chunk is None:
                dropped["feedback chunk no longer indexed"] += 1
                continue
            own = tuple(negatives.get(normalize_query(item.question), ()))[: max(self._negatives, 1)]
            pairs.append(TrainPair(item.question, self.text(chunk), own, "feedback", item.request_id, item.chunk_id))
        asked = {normalize_query(p.query) for p in pairs}
        lone = sum(1 for f in feedback if f.label == "negative" and normalize_query(f.question) not in asked)
        if lone:
            dropped["thumbs-down without a thumbs-up for the same question"] += lone
        return pairs, dropped


def exclude(pairs: Iterable[TrainPair], exclusions: Exclusions, dropped: Counter[str]) -> list[TrainPair]:
    """Drop pairs whose query is a test question (by id or text); count why."""
    kept: list[TrainPair] = []
    for pair in pairs:
        why = exclusions.reason(pair.query_id, pair.query)
        if why:
            dropped[f"{pair.origin}: {why}"] += 1
        else:
            kept.append(pair)
    return kept


def deduplicate(pairs: Iterable[TrainPair], dropped: Counter[str]) -> list[TrainPair]:
    """One pair per (normalised query, positive text)."""
    seen: set[tuple[str, str]] = set()
    kept: list[TrainPair] = []
    for pair in pairs:
        key = (normalize_query(pair.query), pair.positive)
        if key in seen:
            dropped["duplicate pair"] += 1
            continue
        seen.add(key)
        kept.append(pair)
    return kept


# ------------------------------------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class TrainingSetReport:
    """The great-expectations verdict on a training set (kept with the fine-tuning run)."""

    success: bool
    pairs: int
    expectations: tuple[ExpectationOutcome, ...]

    def failures(self) -> list[str]:
        """One line per failed expectation."""
        return [f"{o.expectation}: {o.details}" for o in self.expectations if not o.success]

    def to_json(self) -> dict[str, object]:
        """Plain JSON (the ``training_validation.json`` artifact)."""
        return {"success": self.success, "pairs": self.pairs, "expectations": [o.to_json() for o in self.expectations]}


def validate_training_set(training: TrainingSet, exclusions: Exclusions) -> TrainingSetReport:
    """Check the assembled set with great-expectations: text present, no test ids or texts, no duplicate pairs."""
    from pipelines.quality import ExpectationOutcome, import_great_expectations

    import_great_expectations()
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = training.to_frame()
    context = gx.get_context(mode="ephemeral")
    context.enable_analytics(False)
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas("training")
        .add_dataframe_asset("pairs")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    expectations = (
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValueLengthsToBeBetween(column="query", min_value=1),
        gxe.ExpectColumnValueLengthsToBeBetween(column="positive", min_value=1),
        gxe.ExpectColumnValuesToNotBeInSet(column="query_id", value_set=sorted(exclusions.query_ids) or [""]),
        gxe.ExpectColumnValuesToNotBeInSet(column="query_norm", value_set=sorted(exclusions.query_texts) or [""]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["query_norm", "positive"]),
    )
    outcomes: list[ExpectationOutcome] = []
    for expectation in expectations:
        result = batch.validate(expectation, result_format="BASIC")
        unexpected = int((result.result or {}).get("unexpected_count") or 0)
        column = getattr(expectation, "column", None) or ",".join(getattr(expectation, "column_list", []) or [])
        name = f"{expectation.expectation_type}({column})" if column else expectation.expectation_type
        details = "ok" if result.success else f"{unexpected} of {len(frame)} pairs fail"
        outcomes.append(ExpectationOutcome(name, bool(result.success), unexpected, details))
    return TrainingSetReport(success=all(o.success for o in outcomes), pairs=len(frame), expectations=tuple(outcomes))
