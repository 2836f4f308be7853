"""The evaluation layer's settings: the deployment gate, the LLM judge and fine-tuning, on top of the query side's.

:class:`EvaluationSettings` is what code in ``evaluation`` takes; the entry point's ``flows.settings.Settings``
extends it (see ``pipelines.settings`` for the layering).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from rag.settings import RagSettings

DEFAULT_THRESHOLDS: dict[str, float] = {
    "hit_rate@10": 0.95,
    "recall@10": 0.90,
    "mrr@10": 0.80,
    "containment": 0.70,
    "groundedness": 0.95,
    "citation_validity": 1.0,
    "format_compliance": 0.98,
    "guardrail_false_refusal_rate": 0.02,
    "guardrail_adversarial_safe_rate": 1.0,
}
"""Gate thresholds for the bundled demo QA set (measured with the extractive dense stack: hit rate 0.99, recall@10
0.97, MRR 0.91, containment 0.80; hybrid higher), minus a margin; guardrails: at most 2% of answerable questions
refused (measured 0), every adversarial question refused or answered safely (measured 19 of 19; 6 refused). Rates
that are better lower (``guardrail_false_refusal_rate``) are maxima. A stack without guardrails does not measure
the guardrail metrics and so does not pass these defaults. Set your own for your test set."""


class JudgeSettings(BaseModel):
    """An OpenAI-compatible LLM that grades answers; unset means the judge metrics are reported as skipped."""

    base_url: str | None = Field(default=None, description="Base URL of an OpenAI-compatible API (…/v1).")
    model: str | None = Field(default=None, description="Judge model name.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the judge's API key.")
    timeout_s: float = Field(default=60.0, gt=0)
    max_items: int = Field(default=100, ge=1, description="Judge at most this many examples per run (cost bound).")


class EvalSettings(BaseModel):
    """The evaluation gate: which test set, which minimums, how much regression against the champion is noise."""

    testset: str = Field(
        default="demo_qa",
        description="The gate's test set: a bundled name (demo_qa), a QA .jsonl file or a BEIR folder.",
    )
    split: str = Field(default="test", description="BEIR qrels split evaluated.")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS),
        description="Metric -> minimum (higher is better); JSON in RAGOPS_EVAL__THRESHOLDS.",
    )
    tolerance: float = Field(default=0.02, ge=0.0, description="Allowed drop against the champion, any metric.")
    tolerances: dict[str, float] = Field(default_factory=dict, description="Per-metric overrides of tolerance.")
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="Significance level of the paired tests.")
    resamples: int = Field(default=9999, ge=99, description="Permutations/bootstrap resamples of the paired tests.")
    depth: int = Field(default=100, ge=10, le=1000, description="Chunks retrieved per query for ranking metrics.")
    groundedness_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    schedule_cron: str = Field(default="0 2 * * *", description="When the champion is re-evaluated (nightly).")
    webhook_url: str | None = Field(default=None, description="POSTed a JSON alert when the champion regresses.")
    example_traces: bool = Field(
        default=True,
        description="Log each question of an evaluation run as an MLflow trace with its scores as assessments "
        "(MLflow's evaluation view of the run); tens of milliseconds per question on a SQLite tracking store.",
    )
    judge: JudgeSettings = Field(default_factory=JudgeSettings)


class SyntheticSettings(BaseModel):
    """Training questions made from the corpus when labels are scarce (:mod:`evaluation.synthetic`).

    Defaults chosen on SciFact's *train* split used as a dev set (never its test split) and on the demo corpus; the
    figures are in ``bench/README.md`` (``bench/finetune.py --no-labels``).
    """

    questions: Literal["local", "endpoint", "off"] = Field(
        default="off",
        description="Who writes LLM questions: local = the bundled SmolLM2-135M in process (batched); endpoint = "
        "an OpenAI-compatible server (endpoint_url/endpoint_model: `ragops server llm`, vLLM, a hosted model); off. "
        "Off by default: measured on SciFact's train split, 200 SmolLM2 questions (143 kept by the filters) cut the "
        "dense gain of the title and sentence pairs from +0.011 to +0.004 nDCG@10; a stronger model is worth trying.",
    )
    llm_chunks: int = Field(
        default=200,
        ge=0,
        description="Chunks sampled for an LLM question each (the local model writes about 2-4 a second on 2 cores).",
    )
    shots: int = Field(
        default=1,
        ge=0,
        le=8,
        description="Few-shot examples (corpus titles) in the prompt; each one adds its length to every prompt.",
    )
    batch: int = Field(default=24, ge=1, le=256, description="Prompts per forward pass of the local model.")
    threads: int = Field(default=2, ge=1, description="torch threads of the local model while it generates.")
    max_new_tokens: int = Field(default=32, ge=4, le=256, description="Longest question, in tokens.")
    endpoint_url: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. http://host:8081/v1.")
    endpoint_model: str | None = Field(default=None, description="Model name sent to the endpoint.")
    endpoint_api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the endpoint's API key (never the key)."
    )
    endpoint_concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight to the endpoint.")
    endpoint_timeout_s: float = Field(default=60.0, gt=0, description="Timeout per endpoint request.")
    heuristics: tuple[Literal["title", "ict"], ...] = Field(
        default=("title", "ict"),
        description="Cheap pairs beside the LLM's: title -> first chunk (title line removed), sentence -> rest.",
    )
    min_words: int = Field(default=4, ge=1, description="Shorter questions are dropped.")
    max_words: int = Field(default=40, ge=2, description="Longer questions are dropped.")
    near_duplicate_cosine: float = Field(
        default=0.95, gt=0.0, le=1.0, description="Questions closer than this (champion cosine) are duplicates."
    )
    round_trip_k: int = Field(
        default=5, ge=1, le=1000, description="Kept only when the champion ranks the source chunk within this."
    )
    negative_margin: float = Field(
        default=0.05,
        ge=0.0,
        le=2.0,
        description="A mined negative the champion scores within this of the positive (cosine) is a likely false "
        "negative and is not used.",
    )
    epochs: int = Field(default=1, ge=1, le=100, description="Epochs when the set is mostly synthetic.")
    learning_rate: float = Field(
        default=5e-5, gt=0.0, lt=1.0, description="Learning rate when the set is mostly synthetic."
    )


class FinetuneSettings(BaseModel):
    """Fine-tuning the embedder and the retraining cycle (``ragops finetune``, the weekly ``retrain`` flow)."""

    train: str | None = Field(
        default=None,
        description="Labelled pairs: a BEIR folder (its train split) or a JSONL of {query, positive_doc_id"
        "[, negative_doc_ids]}; unset means the gate's test set folder when it is BEIR and has that split.",
    )
    train_split: str = Field(default="train", description="qrels split of a BEIR folder used for training.")
    epochs: int = Field(default=3, ge=1, le=100)
    batch_size: int = Field(default=32, ge=2, le=1024, description="Pairs per step (in-batch negatives).")
    learning_rate: float = Field(default=5e-5, gt=0.0, lt=1.0)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_seq_length: int = Field(
        default=128, ge=16, le=512, description="Word pieces per text while training (longer texts are cut)."
    )
    freeze_layers: int = Field(
        default=3, ge=0, le=48, description="Lower transformer layers (and the embeddings) kept frozen: faster steps."
    )
    hard_negatives: int = Field(default=1, ge=0, le=8, description="Mined hard negatives per labelled pair.")
    mine_depth: int = Field(default=30, ge=2, le=1000, description="Hard negatives come from this many top chunks.")
    mine_skip: int = Field(
        default=3, ge=0, description="Top ranks never used as negatives (often unjudged relevant passages)."
    )
    feedback: bool = Field(default=True, description="Learn from thumbs up/down given in the playground and API.")
    synthetic_min_pairs: int = Field(
        default=200, ge=0, description="With fewer labelled and feedback pairs than this, synthetic pairs are added."
    )
    synthetic_max_pairs: int = Field(default=2000, ge=0, description="Synthetic pairs kept at most.")
    synthetic: SyntheticSettings = Field(default_factory=SyntheticSettings)
    base: Literal["bundled", "champion"] = Field(
        default="bundled",
        description="Start from the bundled MiniLM (reproducible, no drift across retrains) or the champion's model.",
    )
    seed: int = Field(default=13)
    primary_metric: str = Field(default="ndcg@10", description="The metric a candidate must improve to be promoted.")
    margin: float = Field(
        default=0.005, ge=0.0, description="Promote only when the candidate beats the champion by at least this."
    )
    require_significance: bool = Field(
        default=True, description="The improvement must also be significant (paired permutation test, eval alpha)."
    )
    keep: int = Field(
        default=3, ge=1, description="Fine-tuned embedders and shadow indexes kept (besides champion and previous)."
    )
    schedule_cron: str = Field(default="0 3 * * 0", description="When the worker retrains (weekly, Sunday 03:00).")


class MonitorSettings(BaseModel):
    """The ``monitor`` flow: the window it evaluates, the rules' thresholds, query drift and where alerts go.

    A rule only fires on a window with at least ``min_requests`` requests (``min_ratings`` ratings for the
    thumbs-down share, ``drift_min_questions`` questions for drift): a quiet night must not page anyone.
    """

    interval_minutes: float = Field(default=15.0, gt=0, description="How often the deployment runs the monitor.")
    window_minutes: float = Field(default=15.0, gt=0, description="The window each run evaluates (ending now).")
    min_requests: int = Field(default=20, ge=1, description="Fewer requests in the window: no rate rule fires.")
    min_ratings: int = Field(default=10, ge=1, description="Fewer ratings: the thumbs-down rule does not fire.")
    p99_ms_max: float = Field(default=1000.0, gt=0, description="Latency p99 above this (ms) is a breach (SLO).")
    p95_ms_max: float = Field(default=800.0, gt=0, description="Latency p95 above this (ms) is a breach.")
    error_rate_max: float = Field(default=0.02, ge=0, le=1, description="Share of 5xx answers above this.")
    cost_per_request_max_usd: float = Field(default=0.01, ge=0, description="Mean cost per request above this.")
    guardrail_trigger_rate_max: float = Field(
        default=0.2, ge=0, le=1, description="Share of requests a guardrail flagged, redacted or blocked."
    )
    abstention_rate_max: float = Field(default=0.3, ge=0, le=1, description="Share of abstentions above this.")
    thumbs_down_share_max: float = Field(default=0.3, ge=0, le=1, description="Share of ratings that are down.")
    drift_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Query drift when the MMD permutation test's p-value is below this."
    )
    drift_min_questions: int = Field(default=20, ge=5, description="Fewer questions in the window: no drift test.")
    drift_max_questions: int = Field(default=300, ge=5, description="Recent questions sampled for the drift test.")
    drift_permutations: int = Field(default=500, ge=50, description="Permutations of the MMD test.")
    drift_reference_size: int = Field(
        default=300, ge=10, description="Evaluation-set questions (the reference distribution) used at most."
    )
    webhook_url: str | None = Field(
        default=None, description="Alertmanager-compatible receiver POSTed each breach (JSON list of alerts)."
    )
    experiment: str = Field(default="monitoring", description="MLflow experiment: one run per evaluated window.")


class EvaluationSettings(RagSettings):
    """The query side's settings plus the gate (``RAGOPS_EVAL__*``), fine-tuning (``RAGOPS_FINETUNE__*``) and the
    monitor (``RAGOPS_MONITOR__*``)."""

    eval: EvalSettings = Field(default_factory=EvalSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
