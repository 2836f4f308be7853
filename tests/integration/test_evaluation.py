"""Evaluation and the deployment gate on real parts: an ingested embedded index, SQLite MLflow, Prefect's harness.

One module home: a tiny corpus, a QA test set written for it, a good stack that becomes champion through the gate,
and a deliberately degraded stack (a similarity threshold no chunk reaches: it retrieves nothing) that the gate
refuses.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evaluation.deploy import GATE_RUN_TAG, OVERRIDE_TAG, compare_versions, evaluate_stack, promote_gated
from evaluation.errors import PromotionRefused
from evaluation.tracking import SCORE_SOURCE, TAG_EXAMPLE
from flows.settings import Settings
from pipelines.ingest import run_ingest
from rag.stack import StackRegistry
from rag.types import StackConfig
from tests.fixtures.corpus import QA, write_corpus, write_qa

pytestmark = pytest.mark.integration

THRESHOLDS = {"hit_rate@10": 0.85, "recall@10": 0.85, "containment": 0.6, "citation_validity": 1.0}


@dataclass(frozen=True)
class Home:
    settings: Settings
    testset: Path
    good: int
    bad: int


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("eval")
    testset = write_qa(root / "tiny_qa.jsonl")
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("RAGOPS_"):
                patch.delenv(key)
        patch.setenv("RAGOPS_HOME", str(root / "home"))
        patch.setenv("RAGOPS_CACHE", str(shared_cache))
        patch.setenv("RAGOPS_EVAL__TESTSET", str(testset))
        patch.setenv("RAGOPS_EVAL__THRESHOLDS", json.dumps(THRESHOLDS))
        patch.setenv("RAGOPS_EVAL__RESAMPLES", "999")
        settings = Settings()
        settings.ensure_dirs()
        report = run_ingest(settings, write_corpus(root / "corpus"))
        assert report.published
        from pipelines.index import VectorIndex

        current = VectorIndex(settings).current()
        assert current is not None
        registry = StackRegistry(settings)
        good = registry.register(StackConfig.for_index(current, name="good", retrieval={"top_k": 3}))
        bad = registry.register(
            StackConfig.for_index(current, name="degraded", retrieval={"top_k": 3, "score_threshold": 0.99})
        )
        yield Home(settings=settings, testset=testset, good=good, bad=bad)


@pytest.fixture(scope="module")
def champion(home: Home) -> int:
    """The good stack, gated and promoted (the first champion: thresholds only)."""
    registry = StackRegistry(home.settings)
    outcome = evaluate_stack(home.settings, registry, home.good, gate=True)
    assert outcome.gate is not None and outcome.gate.passed, outcome.gate.summary() if outcome.gate else None
    promote_gated(home.settings, registry, home.good, actor="test", reason="first champion")
    return home.good


def test_first_champion_is_promoted_through_its_gate_run(home: Home, champion: int) -> None:
    registry = StackRegistry(home.settings)
    version = registry.get(champion)
    assert version.is_champion
    run_id = version.tags[GATE_RUN_TAG]
    import mlflow

    run = mlflow.MlflowClient(home.settings.mlflow_tracking_uri).get_run(run_id)
    assert run.data.tags["ragops.gate"] == "passed" and run.data.tags["ragops.stack_version"] == str(champion)


def test_mlflow_run_holds_metrics_table_plots_and_gate(home: Home, champion: int) -> None:
    import mlflow

    client = mlflow.MlflowClient(home.settings.mlflow_tracking_uri)
    run = client.get_run(StackRegistry(home.settings).get(champion).tags[GATE_RUN_TAG])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "evaluation"
    tags, metrics = run.data.tags, run.data.metrics
    assert len(tags["ragops.testset_sha256"]) == 64 and tags["ragops.testset"] == "tiny_qa"
    assert metrics["hit_rate_at_10"] >= 0.85 and metrics["citation_validity"] == 1.0
    assert metrics["latency_total_p50_ms"] > 0 and "latency_embed_p99_ms" in metrics
    assert metrics["abstention_recall"] in (0.0, 1.0)  # one unanswerable question: refused or not
    assert run.data.params["retrieval.top_k"] == "3"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"per_query.json", "gate.json", "summary.json", "examples.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/latency_histogram.png", "plots/metric_comparison.png"}
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/examples.json")
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert {r["id"] for r in rows} == {i for i, *_ in QA}
    assert next(r for r in rows if r["id"] == "k1")["containment"] == 1.0
    summary = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/summary.json")
    assert "judge" in summary["skipped"]  # reported as skipped, not zero
    # MLflow 3's evaluation view of the run: a trace per question, its scores as feedback assessments
    mlflow.set_tracking_uri(home.settings.mlflow_tracking_uri)
    traces = mlflow.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id, return_type="list")
    by_id = {t.info.tags[TAG_EXAMPLE]: t for t in traces}
    assert set(by_id) == {i for i, *_ in QA}
    k1 = by_id["k1"]
    assert k1.data.spans[0].inputs == {"question": next(r["question"] for r in rows if r["id"] == "k1")}
    assert k1.data.spans[0].outputs["answer"] == next(r["answer"] for r in rows if r["id"] == "k1")
    scores = {a.name: a for a in k1.info.assessments}
    assert scores["containment"].value == 1.0 and scores["containment"].source.source_id == SCORE_SOURCE
    assert {"token_f1", "exact_match"} <= set(scores)


def test_degraded_stack_fails_the_gate_and_promotion_is_refused(home: Home, champion: int) -> None:
    registry = StackRegistry(home.settings)
    outcome = evaluate_stack(home.settings, registry, home.bad, gate=True)
    gate = outcome.gate
    assert gate is not None and not gate.passed and gate.baseline_version == champion
    failed = {c.metric: c for c in gate.failures}
    assert {"hit_rate@10", "containment"} <= set(failed)
    regression = next(c for c in gate.failures if c.kind == "regression" and c.metric == "hit_rate@10")
    assert regression.delta is not None and regression.delta < -0.5 and regression.p_value is not None
    assert "short by" in failed["containment"].reason or "regressed" in failed["containment"].reason
    with pytest.raises(PromotionRefused, match=f"stack v{home.bad} has no passing gate"):
        promote_gated(home.settings, registry, home.bad, actor="test", reason="try")
    assert registry.champion_version() == champion


def test_cli_eval_gate_exit_code_and_promote_refusal(home: Home, champion: int) -> None:
    from flows.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--stack", str(home.bad), "--gate", "--json"])
    assert result.exit_code == 4, result.output
    data = json.loads(result.stdout)
    assert data["gate"]["passed"] is False and "hit_rate@10" in data["gate"]["failures"]
    assert data["testset"]["name"] == "tiny_qa" and data["stack"]["version"] == home.bad
    refused = runner.invoke(app, ["stack", "promote", str(home.bad)])
    assert refused.exit_code == 1 and "no passing gate" in refused.stderr and "--override-reason" in refused.stderr
    assert runner.invoke(app, ["stack", "promote", str(home.bad), "--force"]).exit_code == 2


def test_explicit_override_is_recorded_and_rollback_restores(home: Home, champion: int) -> None:
    registry = StackRegistry(home.settings)
    promotion = promote_gated(
        home.settings, registry, home.bad, actor="alice", reason="incident drill", override="drill: known bad"
    )
    try:
        assert promotion.version == home.bad
        tags = registry.get(home.bad).tags
        assert tags[OVERRIDE_TAG] == "drill: known bad" and tags["gate_override_by"] == "alice"
    finally:
        registry.rollback(actor="alice", reason="end of drill")
    assert registry.champion_version() == champion


def test_compare_reports_paired_significance(home: Home, champion: int) -> None:
    registry = StackRegistry(home.settings)
    evaluate_stack(home.settings, registry, home.bad, gate=False)
    report = compare_versions(home.settings, registry, champion, home.bad)
    hit = next(c for c in report.comparisons if c.metric == "hit_rate@10")
    assert hit.n == 8 and hit.delta == pytest.approx(-hit.mean_baseline) and hit.mean_candidate == 0.0
    assert hit.p_value < 0.05 and hit.ci_high < 0
    assert json.loads(json.dumps(report.to_json()))["candidate"]["version"] == home.bad


def test_editing_the_test_set_invalidates_the_gate(home: Home, champion: int, tmp_path: Path) -> None:
    from evaluation.testsets import load_testset

    edited = tmp_path / "edited.jsonl"
    edited.write_text(home.testset.read_text().replace("1847", "1847 AD"), encoding="utf-8")
    assert load_testset(edited).sha256 != load_testset(home.testset).sha256
    registry = StackRegistry(home.settings)
    other = registry.register(registry.get(champion).config.model_copy(update={"name": "good-again"}))
    evaluate_stack(home.settings, registry, other, gate=True)  # passes on the configured set
    patched = home.settings.model_copy(update={"eval": home.settings.eval.model_copy(update={"testset": str(edited)})})
    with pytest.raises(PromotionRefused, match="edited"):
        promote_gated(patched, registry, other, actor="test", reason="different test set")


# --------------------------------------------------------------------------------------------- scheduled flow
class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_scheduled_evaluation_alerts_and_fails_on_a_champion_regression(
    home: Home,
    champion: int,
    prefect_harness: None,
    webhook: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.evaluate import evaluate_flow

    url, received = webhook
    monkeypatch.setenv("RAGOPS_EVAL__WEBHOOK_URL", url)
    ok = evaluate_flow(stack="champion")
    assert ok["gate"]["passed"] is True and not received

    # The champion's answers regress (here: its gate tightens beyond what it reaches, as a data change would cause).
    monkeypatch.setenv("RAGOPS_EVAL__THRESHOLDS", json.dumps({**THRESHOLDS, "containment": 1.01}))
    state = evaluate_flow(stack="champion", return_state=True)
    assert state.is_failed()
    assert "failed its evaluation gate" in str(state.message) or "failed its evaluation gate" in repr(
        state.result(raise_on_failure=False)
    )
    assert len(received) == 1
    alert = received[0]
    assert alert["stack_version"] == champion and "containment" in alert["text"]
    assert alert["gate"]["passed"] is False


def test_nightly_deployment_definition(home: Home) -> None:
    from flows.deployments import EVALUATE_DEPLOYMENT, evaluation_deployment, promotion_deployments

    deployment = evaluation_deployment(home.settings)
    assert deployment.name == EVALUATE_DEPLOYMENT and deployment.flow_name == "evaluate"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]  # type: ignore[union-attr]
    assert deployment.parameters == {"stack": "champion", "testset": None, "gate": True}
    custom = home.settings.model_copy(
        update={"eval": home.settings.eval.model_copy(update={"schedule_cron": "0 * * * *"})}
    )
    assert [s.schedule.cron for s in evaluation_deployment(custom).schedules] == ["0 * * * *"]  # type: ignore[union-attr]
    assert {d.flow_name for d in promotion_deployments()} == {"promote", "rollback"}


# ----------------------------------------------------------------------------------------------------- judge
def test_llm_judge_grades_through_the_openai_protocol(home: Home, champion: int) -> None:
    from evaluation.judge import Judge
    from evaluation.runner import evaluate
    from evaluation.settings import JudgeSettings
    from evaluation.testsets import load_testset
    from rag.engine import RagEngine
    from tests.fixtures.fake_openai import FakeOpenAI

    config = StackRegistry(home.settings).get(champion).config
    testset = load_testset(home.testset)
    with FakeOpenAI(reply='{"relevance": 5, "faithfulness": 4, "helpfulness": 3}') as server:
        judge = Judge(JudgeSettings(base_url=server.base_url, model="judge", max_items=4))
        with RagEngine.open(home.settings, config) as engine:
            result = evaluate(engine, testset, home.settings.eval, judge=judge)
        assert len(server.requests) == 4 and "Rubric" in server.requests[0].prompt
    assert result.metrics["judge_relevance"] == 1.0 and result.metrics["judge_faithfulness"] == 0.75
    assert result.metrics["judge_helpfulness"] == 0.5 and "judge" not in result.skipped

    with FakeOpenAI(reply="I think it is fine.") as server:
        judge = Judge(JudgeSettings(base_url=server.base_url, model="judge", max_items=2))
        with RagEngine.open(home.settings, config) as engine:
            result = evaluate(engine, testset, home.settings.eval, judge=judge)
    assert "judge_relevance" not in result.metrics
    assert result.skipped["judge_failures"].startswith("2 of 2 judgements failed")


# ----------------------------------------------------------------------------------------------------- prompts
def test_a_prompt_change_is_a_new_stack_version_through_the_gate(home: Home, champion: int) -> None:
    """Prompts live in MLflow's Prompt Registry; a stack references one by name and version and carries its text,
    so a new prompt version means a new stack version, evaluated and gated before it can be served."""
    from pipelines.index import VectorIndex
    from rag.prompts import PromptRegistry
    from tests.fixtures.fake_openai import FakeOpenAI

    prompts = PromptRegistry(home.settings)
    first = prompts.register("answer", "Context:\n{context}\n\nQuestion: {question}", message="first")
    brief = prompts.register("answer", "Be brief; cite [n].\nContext:\n{context}\n\nQuestion: {question}")
    assert brief.version == first.version + 1
    assert prompts.resolve("answer")[0] == brief  # the latest by default
    current = VectorIndex(home.settings).current()
    assert current is not None
    registry = StackRegistry(home.settings)
    with FakeOpenAI(reply="It erupted in 1847 [1].") as llm:
        shared: dict[str, Any] = {
            "answerer": {"kind": "llm"},
            "llm": {"base_url": llm.base_url, "model": llm.model},
            "retrieval": {"top_k": 3},
        }
        one = registry.register(StackConfig.for_index(current, name="p1", prompt=first.model_dump(), **shared))
        two = registry.register(StackConfig.for_index(current, name="p2", prompt=brief.model_dump(), **shared))
        old, new = registry.get(one).config, registry.get(two).config
        assert old.prompt == first and old.prompt_template.startswith("Context:")
        assert new.prompt == brief and new.prompt_template.startswith("Be brief")
        assert old.fingerprint() != new.fingerprint()
        outcome = evaluate_stack(home.settings, registry, two, gate=True)
    assert llm.requests and all(r.prompt.startswith("Be brief") for r in llm.requests)
    assert outcome.gate is not None and not outcome.gate.passed  # one canned reply for every question
    with pytest.raises(PromotionRefused):
        promote_gated(home.settings, registry, two, actor="test", reason="new prompt")
    assert registry.champion_version() == champion


def test_cli_registers_a_prompt_and_a_stack_that_uses_it(home: Home, tmp_path: Path) -> None:
    from flows.cli import app

    runner = CliRunner()
    template = tmp_path / "prompt.txt"
    template.write_text("Use {{question}} literally? No: {{context}} then {{question}}", encoding="utf-8")
    made = runner.invoke(app, ["prompt", "register", "cli-prompt", "-f", str(template), "-m", "v1", "--json"])
    assert made.exit_code == 0, made.output
    ref = json.loads(made.stdout)
    assert ref["version"] == 1 and ref["uri"] == "prompts:/cli-prompt/1"
    shown = json.loads(runner.invoke(app, ["prompt", "show", "cli-prompt@1", "--json"]).stdout)
    assert shown["template"] == "Use {question} literally? No: {context} then {question}"
    options = ["--answerer", "llm", "--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--json"]
    stack = runner.invoke(app, ["stack", "register", "--name", "cli-llm", "--prompt", "cli-prompt", *options])
    assert stack.exit_code == 0, stack.output
    version = json.loads(stack.stdout)["version"]
    config = json.loads(runner.invoke(app, ["stack", "show", str(version), "--json"]).stdout)["config"]
    assert config["prompt"] == {"name": "cli-prompt", "version": 1}
    assert config["prompt_template"] == shown["template"]
    missing = runner.invoke(app, ["stack", "register", "--prompt", "no-such-prompt@2", *options])
    assert missing.exit_code != 0 and "not in the prompt registry" in missing.output
    bad_name = runner.invoke(app, ["prompt", "register", "bad name!", "-f", str(template)])
    assert bad_name.exit_code != 0 and "cannot be registered" in bad_name.output
    assert bad_name.exception is None or isinstance(bad_name.exception, SystemExit)  # a message, no traceback
