"""Stacks in the real MLflow registry (SQLite under the test's RAGOPS_HOME): register, promote, roll back, serve."""

from __future__ import annotations

import pytest

from flows.settings import Settings
from pipelines.index import VectorIndex
from pipelines.tracking import configure_mlflow
from rag.errors import BadQuery, StackError, StackNotFound
from rag.stack import CHAMPION, PREVIOUS_CHAMPION, StackRegistry
from rag.types import StackConfig
from tests.unit.rag.conftest import BuiltIndex, copy_index

pytestmark = pytest.mark.slow


@pytest.fixture
def stack_config(built_index: BuiltIndex) -> StackConfig:
    version = VectorIndex(built_index.settings).current()
    assert version is not None
    return StackConfig.for_index(version, name="baseline")


def test_register_then_promote_makes_it_the_champion(settings: Settings, stack_config: StackConfig) -> None:
    registry = StackRegistry(settings)
    with pytest.raises(StackNotFound, match="promote one first"):
        registry.champion()
    version = registry.register(stack_config, description="dense top 5", actor="alice")
    assert version == 1
    stored = registry.get(version)
    assert stored.config == stack_config and stored.description == "dense top 5"
    assert stored.tags["stack.fingerprint"] == stack_config.fingerprint()
    assert stored.tags["stack.retrieval"] == "dense" and stored.tags["registered_by"] == "alice"
    assert stored.aliases == ()

    promotion = registry.promote(version, actor="alice", reason="first stack")
    assert promotion.changed and promotion.previous is None
    assert registry.champion() == (1, stack_config)
    tags = registry.get(1).tags
    assert tags["promoted_by"] == "alice" and tags["promotion_reason"] == "first stack" and tags["promoted_at"]
    assert registry.get(1).is_champion
    assert not registry.promote(1, actor="alice", reason="again").changed  # idempotent

    # the config is also a readable run artifact and the run carries it as params
    client = registry.client
    run = client.get_run(str(registry.get(1).run_id))
    assert run.data.params["retrieval.mode"] == "dense"
    assert "stack.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
    # MLflow aliases, never stages
    assert registry.get(1).tags and client.get_model_version("rag-stack", "1").current_stage in (None, "None")


def test_promote_v2_then_rollback_restores_v1_and_records_it(settings: Settings, stack_config: StackConfig) -> None:
    registry = StackRegistry(settings)
    v1 = registry.register(stack_config)
    hybrid = stack_config.model_copy(
        update={"name": "hybrid", "retrieval": stack_config.retrieval.model_copy(update={"mode": "hybrid"})}
    )
    v2 = registry.register(hybrid, description="hybrid")
    registry.promote(v1, actor="alice", reason="baseline")
    promotion = registry.promote(v2, actor="bob", reason="hybrid wins the gate")
    assert promotion.previous == v1 and promotion.lineage == (v1, v2)
    assert registry.champion()[0] == v2
    assert PREVIOUS_CHAMPION in registry.get(v1).aliases
    assert registry.get(v2).tags["promoted_over"] == str(v1)

    rollback = registry.rollback(actor="carol", reason="tenant acme regressed")
    assert (rollback.version, rollback.previous) == (v1, v2)
    number, config = registry.champion()
    assert number == v1 and config == stack_config
    old, new = registry.get(v1), registry.get(v2)
    assert CHAMPION in old.aliases and CHAMPION not in new.aliases and PREVIOUS_CHAMPION not in old.aliases
    assert new.tags["rolled_back_by"] == "carol" and new.tags["rollback_reason"] == "tenant acme regressed"
    assert old.tags["restored_by"] == "carol" and old.tags["promoted_by"] == "alice"
    assert [e["action"] for e in registry.history()] == ["promote", "promote", "rollback"]
    with pytest.raises(StackError, match="nothing to roll back to"):
        registry.rollback(actor="carol", reason="again")
    assert [s.version for s in registry.list()] == [v1, v2]


def test_promotion_errors(settings: Settings, stack_config: StackConfig) -> None:
    registry = StackRegistry(settings)
    with pytest.raises(StackNotFound):
        registry.rollback(actor="a", reason="b")
    version = registry.register(stack_config)
    with pytest.raises(StackNotFound, match="no version 7"):
        registry.promote(7, actor="a", reason="b")
    with pytest.raises(BadQuery, match="reason"):
        registry.promote(version, actor="a", reason=" ")
    with pytest.raises(BadQuery, match="positive integer"):
        registry.get("latest")


def test_champion_loads_as_a_pyfunc_and_answers(
    settings: Settings, built_index: BuiltIndex, stack_config: StackConfig
) -> None:
    copy_index(built_index, settings)
    registry = StackRegistry(settings)
    registry.promote(registry.register(stack_config), actor="ci", reason="smoke")
    mlflow = configure_mlflow(settings)
    model = mlflow.pyfunc.load_model("models:/rag-stack@champion")
    try:
        out = model.predict(["In which year did Mount Kerrigan last erupt?", "What is the population of Tokyo?"])
        assert len(out) == 2
        assert "1847" in out[0]["text"] and not out[0]["abstained"]
        assert out[0]["citations"][0]["doc_id"] == "acme/volcano.md"
        assert out[1]["abstained"] and "not found in the indexed documents" in out[1]["text"]
        import pandas as pd

        frame = pd.DataFrame({"question": ["How long is the hike up Mount Kerrigan?"], "tenant": ["acme"]})
        filtered = model.predict(frame)
        assert all(c["doc_id"].startswith("acme/") for c in filtered[0]["citations"])
    finally:
        model.unwrap_python_model().close()


def test_an_experiment_runs_from_the_cli_and_its_verdict_is_recorded_on_the_candidate(
    settings: Settings, stack_config: StackConfig
) -> None:
    import json

    from typer.testing import CliRunner

    from evaluation.ab import check_experiment
    from flows.cli import app
    from rag.experiment import RESULT_TAG, STATUS_TAG

    runner = CliRunner()
    registry = StackRegistry(settings)
    assert registry.experiment() is None  # no stack registered yet: no experiment, no error
    v1 = registry.register(stack_config)
    registry.promote(v1, actor="alice", reason="first")
    refused = runner.invoke(app, ["stack", "experiment", "start"])
    assert refused.exit_code != 0 and "challenger" in refused.output  # no version named, no challenger alias
    top1 = stack_config.model_copy(
        update={"name": "top1", "retrieval": stack_config.retrieval.model_copy(update={"top_k": 1})}
    )
    v2 = registry.register(top1)
    registry.set_challenger(v2)

    started = runner.invoke(app, ["stack", "experiment", "start", "--share", "0.2", "--json"])
    assert started.exit_code == 0, started.output
    body = json.loads(started.stdout)
    assert (body["champion"], body["challenger"], body["share"]) == (v1, v2, 0.2)
    running = registry.experiment()
    assert running is not None and running.id == body["id"]
    again = runner.invoke(app, ["stack", "experiment", "start", str(v2)])
    assert again.exit_code != 0 and "stop it first" in again.output

    status = runner.invoke(app, ["stack", "experiment", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["status"] == "collecting"  # no traffic yet
    assert registry.get(v2).tags[STATUS_TAG] == "collecting"

    # a sequential test's crossing is final: a later look that sees less evidence does not undo it
    registry.record_experiment(running, status="challenger_worse", result="{}")
    found = check_experiment(settings, registry=registry)
    assert found is not None and found[0].verdict == "collecting" and found[1] == "challenger_worse"

    stopped = runner.invoke(app, ["stack", "experiment", "stop"])
    assert stopped.exit_code == 0, stopped.output
    assert "every caller is answered by the champion" in stopped.stdout
    assert registry.experiment() is None
    tags = registry.get(v2).tags
    assert tags[STATUS_TAG] == "challenger_worse" and json.loads(tags[RESULT_TAG])["experiment"] == running.id
    assert runner.invoke(app, ["stack", "experiment", "stop"]).exit_code != 0  # nothing to stop
    assert json.loads(runner.invoke(app, ["stack", "experiment", "status", "--json"]).stdout) is None
