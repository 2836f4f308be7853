"""Retraining on real parts: a tiny ingested corpus, SQLite MLflow, real fine-tuning steps, Prefect's harness.

The module walks one lifecycle in order: the first champion passes its gate; the `retrain` flow fine-tunes MiniLM
for a few steps, registers the model, builds a shadow index and promotes the candidate; a drill trained on shuffled
pairs (through `ragops finetune --shuffle-labels`) is refused and the champion stays; a rollback restores the
bundled-model stack and a running service follows it; garbage collection then removes what nothing serves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.deploy import evaluate_stack, promote_gated
from flows.settings import Settings
from pipelines.index import VectorIndex
from pipelines.ingest import run_ingest
from rag.embedders import EMBEDDER_MODEL, EmbedderRegistry
from rag.stack import CHALLENGER, StackRegistry
from rag.types import StackConfig
from tests.fixtures.corpus import write_corpus, write_qa
from tests.fixtures.server import serve, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

THRESHOLDS = {"hit_rate@10": 0.85, "recall@10": 0.85, "citation_validity": 1.0}
# Labelled pairs for the tiny corpus, worded differently from the test questions, plus two that must never be
# trained on: one reuses a test question's id, one its text.
TRAIN = [
    {"query": "volcano ash over the Tesh valley", "positive_doc_id": "acme/volcano.md"},
    {"query": "rye sourdough from a wood-fired oven", "positive_doc_id": "acme/bakery.md"},
    {"query": "sea surface temperature measurements from orbit", "positive_doc_id": "acme/satellite.txt"},
    {"query": "chess games won by the club champion", "positive_doc_id": "globex/chess.md"},
    {"query": "descaling a coffee grinder with citric acid", "positive_doc_id": "globex/grinder.md"},
    {"query": "water to carry for the crater rim hike", "positive_doc_id": "globex/kerrigan-hike.md"},
    {"id": "k1", "query": "a leaked test id", "positive_doc_id": "acme/volcano.md"},
    {"query": "Which day is the Copper Kettle Bakery closed?", "positive_doc_id": "acme/bakery.md"},
]


@dataclass(frozen=True)
class Home:
    settings: Settings
    root: Path
    train: Path
    first: int


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("retrain")
    testset = write_qa(root / "tiny_qa.jsonl")
    train = root / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in TRAIN) + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("RAGOPS_"):
                patch.delenv(key)
        env = {
            "RAGOPS_HOME": str(root / "home"),
            "RAGOPS_CACHE": str(shared_cache),
            "RAGOPS_EVAL__TESTSET": str(testset),
            "RAGOPS_EVAL__THRESHOLDS": json.dumps(THRESHOLDS),
            "RAGOPS_EVAL__RESAMPLES": "999",
            "RAGOPS_EVAL__EXAMPLE_TRACES": "false",  # per-question traces: tests/integration/test_evaluation.py
            # A few real optimiser steps: enough to change the weights, cheap enough for CI.
            "RAGOPS_FINETUNE__EPOCHS": "1",
            "RAGOPS_FINETUNE__BATCH_SIZE": "4",
            "RAGOPS_FINETUNE__MAX_SEQ_LENGTH": "64",
            "RAGOPS_FINETUNE__LEARNING_RATE": "1e-5",
            "RAGOPS_FINETUNE__MINE_SKIP": "1",
            # Nine test questions cannot show a significant gain; promotion needs "no worse" here.
            "RAGOPS_FINETUNE__MARGIN": "0",
            "RAGOPS_FINETUNE__REQUIRE_SIGNIFICANCE": "false",
            "RAGOPS_FINETUNE__KEEP": "1",
        }
        for key, value in env.items():
            patch.setenv(key, value)
        settings = Settings()
        settings.ensure_dirs()
        assert run_ingest(settings, write_corpus(root / "corpus")).published
        current = VectorIndex(settings).current()
        assert current is not None
        registry = StackRegistry(settings)
        first = registry.register(StackConfig.for_index(current, name="tiny", retrieval={"top_k": 3}))
        outcome = evaluate_stack(settings, registry, first, gate=True)
        assert outcome.gate is not None and outcome.gate.passed, outcome.gate.summary() if outcome.gate else None
        promote_gated(settings, registry, first, actor="test", reason="first champion")
        yield Home(settings=settings, root=root, train=train, first=first)


def test_shadow_index_reproduces_the_source_exactly(home: Home) -> None:
    """Re-embedding with the same model gives the ingested vectors back: titles are fitted as at ingestion."""
    from pipelines.embed import Embedder
    from pipelines.reembed import build_shadow_index, iter_chunks

    embedder = Embedder(home.settings.embedder, cache_dir=home.settings.cache_dir)
    build = build_shadow_index(home.settings, source="docs", target="docs-copy", embedder=embedder, run_id="t")
    source, copy = VectorIndex(home.settings), VectorIndex(home.settings, collection="docs-copy")
    assert build.target.points == source.current().points and build.embedded == build.target.points  # type: ignore[union-attr]
    assert copy.manifest().docs == source.manifest().docs  # type: ignore[union-attr]
    with source.reader() as a, copy.reader() as b:
        left = {c.chunk_id: c for c in iter_chunks(a)}
        right = {c.chunk_id: c for c in iter_chunks(b)}
        assert left.keys() == right.keys()
        assert all(left[k].payload == right[k].payload and left[k].sparse == right[k].sparse for k in left)
        ids = sorted(left)
        va = [r.dense for r in sorted(a.retrieve(ids, dense=True), key=lambda r: r.id)]
        vb = [r.dense for r in sorted(b.retrieve(ids, dense=True), key=lambda r: r.id)]
    assert np.abs(np.asarray(va) - np.asarray(vb)).max() < 1e-5
    copy.drop()
    assert not copy.root.exists() and copy.current_version() is None


@pytest.fixture(scope="module")
def retrained(home: Home) -> dict[str, Any]:
    """One cycle through the Prefect flow (Prefect's test harness: a real API, in-process)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain_flow

    with prefect_test_harness(server_startup_timeout=120):
        return retrain_flow(train=str(home.train))


def test_retrain_fine_tunes_registers_and_promotes(home: Home, retrained: dict[str, Any]) -> None:
    import mlflow

    registry = StackRegistry(home.settings)
    candidate = retrained["candidate"]
    assert retrained["promoted"] is True and retrained["champion_before"] == home.first
    assert registry.champion_version() == candidate == retrained["champion_after"]
    version = registry.get(candidate)
    assert CHALLENGER in version.aliases and version.tags["retrain.decision"] == "promoted"
    assert version.config.embedder.model_uri == f"models:/{EMBEDDER_MODEL}/{retrained['embedder_version']}"
    assert version.config.collection == retrained["collection"] == f"docs-ft{retrained['embedder_version']}"
    # the embedder is a registered MLflow model whose weights hash the stack records
    registered = EmbedderRegistry(home.settings).get(retrained["embedder_version"])
    assert registered.weights_sha256 == version.config.embedder.weights_sha256
    assert registered.weights_sha256 != registry.get(home.first).config.embedder.weights_sha256
    # the fine-tuning run: parameters, a loss curve and the training-set validation
    client = mlflow.MlflowClient(home.settings.mlflow_tracking_uri)
    run = client.get_run(retrained["finetune_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "finetune"
    assert run.data.params["loss"] == "MultipleNegativesRankingLoss" and run.data.params["epochs"] == "1"
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "training_validation.json", "training_set.json"} <= artifacts
    model = client.get_model_version(EMBEDDER_MODEL, str(retrained["embedder_version"]))
    assert model.run_id == run.info.run_id
    flavours = mlflow.models.get_model_info(f"models:/{EMBEDDER_MODEL}/{model.version}").flavors
    assert "sentence_transformers" in flavours
    # the shadow index holds every chunk of the champion's collection, in the new model's vector space
    shadow = VectorIndex(home.settings, collection=retrained["collection"]).current()
    assert shadow is not None and shadow.points == VectorIndex(home.settings).current().points  # type: ignore[union-attr]
    assert shadow.embedder.weights_sha256 == registered.weights_sha256
    assert shadow.embedder.max_tokens == 256  # texts were cut for training only: the model keeps MiniLM's window
    # training used labels and synthetic pairs, never a test question
    training = retrained["training"]
    assert training["by_origin"]["labelled"] == 6 and training["by_origin"]["synthetic"] >= 1
    assert training["dropped"]["labelled: test-set id"] == 1
    assert training["dropped"]["labelled: test-set question text"] == 1
    assert retrained["gate_passed"] is True and set(retrained["seconds"]) >= {"train", "shadow_index", "cycle"}


def test_the_promoted_stack_answers_with_its_own_embedder(home: Home, retrained: dict[str, Any]) -> None:
    from evaluation.deploy import current_testset, run_stack
    from rag.engine import RagEngine

    registry = StackRegistry(home.settings)
    config = registry.get(retrained["candidate"]).config
    with RagEngine.open(home.settings, config) as engine:
        assert engine.embedder.identity.weights_sha256 == config.embedder.weights_sha256
        answer = engine.ask("When did Mount Kerrigan last erupt?")
        # an evaluation handed the candidate's embedder for the champion loads the champion's own model instead
        result = run_stack(
            home.settings, registry, home.first, current_testset(home.settings), embedder=engine.embedder
        )
    assert "1847" in answer.text and answer.citations[0].doc_id == "acme/volcano.md"
    assert result.metrics["hit_rate@10"] >= 0.85


def test_feedback_becomes_training_pairs(home: Home, retrained: dict[str, Any]) -> None:
    """Thumbs up: (question, cited chunk) is a positive; thumbs down on the same question: its hard negative."""
    from evaluation.retrain import RetrainRequest, assemble
    from rag.feedback import CitedChunk, FeedbackStore, RequestSnapshot

    registry = StackRegistry(home.settings)
    config = registry.get(retrained["candidate"]).config
    with VectorIndex(home.settings, collection=config.collection).reader() as reader:
        points = {r.payload["doc_id"]: r for r in reader.scroll()}  # type: ignore[index]

    def snapshot(request_id: str, doc: str) -> RequestSnapshot:
        point = points[doc]
        text = json.loads(point.payload["_node_content"])["text"]  # type: ignore[index]
        cited = CitedChunk(1, str(point.id), doc, str(point.payload["title"]), doc, text)  # type: ignore[index]
        return RequestSnapshot(request_id, 0.0, "where do I buy rye bread?", "...", False, 1, "tiny", 1, (cited,))

    store = FeedbackStore(home.settings)
    store.record(snapshot("r-up", "acme/bakery.md"), "up")
    store.record(snapshot("r-down", "globex/grinder.md"), "down")
    training, _ = assemble(home.settings, config, RetrainRequest(train=str(home.train)), progress=_Silent())
    feedback = [p for p in training.pairs if p.origin == "feedback"]
    assert len(feedback) == 1
    pair = feedback[0]
    assert pair.query == "where do I buy rye bread?" and pair.query_id == "r-up"
    assert pair.positive.startswith("The Copper Kettle Bakery\n\n") and "rye sourdough" in pair.positive
    assert len(pair.negatives) == 1 and "Burrmaster" in pair.negatives[0]


class _Silent:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, amount: int) -> None:
        pass


def test_a_candidate_trained_on_shuffled_pairs_is_refused(home: Home, retrained: dict[str, Any]) -> None:
    from flows.cli import app

    registry = StackRegistry(home.settings)
    champion = registry.champion_version()
    env = {
        "RAGOPS_FINETUNE__LEARNING_RATE": "3e-4",
        "RAGOPS_FINETUNE__EPOCHS": "4",
        "RAGOPS_FINETUNE__FREEZE_LAYERS": "0",  # the whole model learns the wrong pairs
        "RAGOPS_FINETUNE__MARGIN": "0.01",
    }
    result = CliRunner().invoke(
        app, ["finetune", "--train", str(home.train), "--shuffle-labels", "--json"], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    drill = json.loads(result.stdout)
    assert drill["promoted"] is False and registry.champion_version() == champion == drill["champion_after"]
    assert drill["candidate_score"] < drill["champion_score"], drill
    kept = registry.get(drill["candidate"])
    assert kept.tags["retrain.decision"] == "kept champion" and kept.tags["retrain.reason"] == drill["reason"]
    assert CHALLENGER in kept.aliases  # kept for inspection


def test_rollback_restores_the_bundled_stack_and_the_service_follows(home: Home, retrained: dict[str, Any]) -> None:
    from rag.service.app import create_app

    registry = StackRegistry(home.settings)
    settings = home.settings.model_copy(
        update={"service": home.settings.service.model_copy(update={"reload_interval_s": 0.2})}
    )
    with serve(create_app(settings)) as service:

        def served() -> int | None:
            response = httpx.get(f"{service.url}/v1/stack", headers=service.headers, timeout=10)
            return response.json().get("stack_version") if response.status_code == 200 else None

        wait_for(lambda: served() == retrained["candidate"], timeout=60)
        registry.rollback(actor="test", reason="drill")
        wait_for(lambda: served() == home.first, timeout=60)
        answer = httpx.post(
            f"{service.url}/v1/query",
            json={"question": "When did Mount Kerrigan last erupt?"},
            headers=service.headers,
            timeout=30,
        )
        assert answer.status_code == 200 and "1847" in answer.json()["answer"]
        assert answer.json()["stack_version"] == home.first


def test_garbage_collection_keeps_what_is_served(home: Home, retrained: dict[str, Any]) -> None:
    """After the rollback nothing serves the first fine-tune: keep-last-1 removes it, never the champion."""
    from evaluation.retrain import collect_garbage

    registry = StackRegistry(home.settings)
    assert registry.champion_version() == home.first
    collected = collect_garbage(home.settings, registry)
    assert collected["embedder_versions"] == [retrained["embedder_version"]]
    assert collected["stack_versions"] == [retrained["candidate"]]
    assert collected["collections"] == [retrained["collection"]]
    assert not VectorIndex(home.settings, collection=retrained["collection"]).root.exists()
    assert [v.version for v in EmbedderRegistry(home.settings).list()] == [retrained["embedder_version"] + 1]
    assert VectorIndex(home.settings).current() is not None  # the champion's index is untouched
    assert registry.champion_version() == home.first


def test_a_cycle_without_labels_trains_on_filtered_synthetic_questions(home: Home, retrained: dict[str, Any]) -> None:
    """`ragops finetune --no-labels`: the bundled LLM writes questions, filters keep some, and training, the MLflow
    run and the gate see synthetic pairs plus the feedback there is, no label and no test question."""
    import mlflow

    from evaluation.deploy import current_testset
    from evaluation.trainset import normalize_query
    from flows.cli import app

    registry = StackRegistry(home.settings)
    champion = registry.champion_version()
    result = CliRunner().invoke(
        app,
        ["finetune", "--no-labels", "--no-promote", "--json"],
        env={"RAGOPS_FINETUNE__SYNTHETIC__QUESTIONS": "local", "RAGOPS_FINETUNE__SYNTHETIC__LLM_CHUNKS": "4"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    cycle = json.loads(result.stdout)
    training = cycle["training"]
    # no labels; the thumbs-up of the feedback test above mixes in with the synthetic pairs
    assert "labelled" not in training["by_origin"] and training["by_origin"]["feedback"] == 1
    assert training["by_origin"]["synthetic"] >= 4
    synthetic = training["synthetic"]
    assert synthetic["model"] == "smollm2-135m-instruct" and synthetic["generated"]["llm"] >= 1
    assert synthetic["generated"]["ict"] >= 1  # the tiny corpus's titles are too short for title pairs
    assert sum(synthetic["kept"].values()) == training["by_origin"]["synthetic"]
    assert any(reason.startswith("synthetic") for reason in training["dropped"]) or sum(
        synthetic["generated"].values()
    ) == sum(synthetic["kept"].values())
    # the conservative settings of a mostly synthetic set
    assert training["epochs"] == home.settings.finetune.synthetic.epochs
    assert training["learning_rate"] == home.settings.finetune.synthetic.learning_rate
    # nothing the gate tests on was trained on
    client = mlflow.MlflowClient(home.settings.mlflow_tracking_uri)
    run = client.get_run(cycle["finetune_run_id"])
    assert "synthetic.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.data.metrics["synthetic_generated_llm"] == synthetic["generated"]["llm"]
    questions = {normalize_query(item.question) for item in current_testset(home.settings).items}
    examples = synthetic["examples"]
    assert examples and not {normalize_query(e["query"]) for e in examples} & questions
    # --no-promote: the candidate is kept for inspection and the champion stays
    assert cycle["promoted"] is False and registry.champion_version() == champion
