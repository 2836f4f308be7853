"""`ragops stack ...`: versions of the MLflow model `rag-stack`, their aliases, gated promotion and rollback."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from flows.cli.common import (
    JsonOpt,
    actor,
    app,
    build_settings,
    fail,
    guarded,
)

stack_app = typer.Typer(
    help="Stacks: versions of the MLflow model 'rag-stack'; the alias 'champion' is what the service serves.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")


def _stack_json(item: Any) -> dict[str, Any]:
    return {
        "version": item.version,
        "name": item.config.name,
        "aliases": list(item.aliases),
        "description": item.description,
        "created_at": item.created_at,
        "tags": dict(item.tags),
        "config": item.config.to_json(),
    }


@stack_app.command("list")
def stack_list(as_json: JsonOpt = False) -> None:
    """List registered stack versions, newest first, with their aliases."""
    from rag.stack import StackRegistry

    settings = build_settings()
    items = guarded(lambda: StackRegistry(settings).list())
    if as_json:
        typer.echo(json.dumps([_stack_json(i) for i in items]))
        return
    if not items:
        typer.echo("no stack registered yet (ragops stack register)")
    for item in items:
        aliases = f" [{', '.join(item.aliases)}]" if item.aliases else ""
        typer.echo(
            f"v{item.version}{aliases}  {item.config.name}  {item.config.retrieval.mode} top_k="
            f"{item.config.retrieval.top_k}  collection={item.config.collection}  {item.created_at}"
        )


@stack_app.command("show")
def stack_show(
    version: Annotated[str, typer.Argument(help="A version number, or 'champion'.")] = "champion",
    as_json: JsonOpt = False,
) -> None:
    """Show one stack version: configuration, aliases and promotion tags."""
    from rag.stack import StackRegistry

    settings = build_settings()

    def body() -> Any:
        registry = StackRegistry(settings)
        number = registry.champion()[0] if version == "champion" else version
        return registry.get(number)

    item = guarded(body)
    data = _stack_json(item)
    typer.echo(json.dumps(data, indent=None if as_json else 2))


@stack_app.command("register")
def stack_register(
    name: Annotated[str, typer.Option("--name", help="Stack name.")] = "default",
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Collection it reads.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="Retrieval: dense or hybrid.")] = "dense",
    top_k: Annotated[int, typer.Option("--top-k", help="Chunks handed to the answerer.")] = 5,
    pin: Annotated[bool, typer.Option("--pin", help="Pin the current index version instead of following it.")] = False,
    description: Annotated[str, typer.Option("--description", help="Free text stored with the version.")] = "",
    answerer: Annotated[
        str, typer.Option("--answerer", help="extractive (no LLM) or llm (an OpenAI-compatible endpoint).")
    ] = "extractive",
    llm_url: Annotated[
        str | None, typer.Option("--llm-url", help="The LLM's base URL, e.g. http://127.0.0.1:8081/v1.")
    ] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="The LLM's model name.")] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="A registered prompt, NAME or NAME@VERSION (ragops prompt register)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a new stack version over the collection's published index (not served until promoted)."""
    from pipelines.index import VectorIndex
    from rag.embedders import model_uri_for
    from rag.errors import StackError
    from rag.stack import StackRegistry
    from rag.types import StackConfig

    settings = build_settings()

    def body() -> int:
        current = VectorIndex(settings, collection=collection).current()
        if current is None:
            raise StackError("the collection has no published index yet; run `ragops ingest` first")
        uri = model_uri_for(settings, current.embedder.weights_sha256)  # a shadow index of a fine-tuned model
        extra: dict[str, Any] = {"answerer": {"kind": answerer}}
        if llm_url or llm_model:
            extra["llm"] = {"base_url": llm_url, "model": llm_model}
        if prompt:
            from rag.prompts import parse_ref

            prompt_name, prompt_version = parse_ref(prompt)
            if prompt_version is None:
                from rag.prompts import PromptRegistry

                ref, _ = PromptRegistry(settings).resolve(prompt_name)
                prompt_version = ref.version
            extra["prompt"] = {"name": prompt_name, "version": prompt_version}
        config = StackConfig.for_index(
            current, name=name, pin=pin, model_uri=uri, retrieval={"mode": mode, "top_k": top_k}, **extra
        )
        return StackRegistry(settings).register(config, description=description, actor=actor())

    try:
        number = guarded(body)
    except ValueError as exc:  # pydantic validation of the options
        raise fail(f"invalid stack options: {exc}") from exc
    if as_json:
        typer.echo(json.dumps({"version": number}))
    else:
        typer.echo(f"registered rag-stack version {number}; serve it with `ragops stack promote {number}`")


@stack_app.command("promote")
def stack_promote(
    version: Annotated[int, typer.Argument(help="Version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded as a tag).")] = "manual promotion",
    force: Annotated[
        bool, typer.Option("--force", help="Promote without a passing gate (needs --override-reason).")
    ] = False,
    override_reason: Annotated[
        str | None, typer.Option("--override-reason", help="Why the gate is overridden (recorded on the version).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move the 'champion' alias to VERSION; the running service follows within its reload interval.

    Refused unless VERSION passed the evaluation gate (`ragops eval --stack VERSION --gate`) on the configured test
    set's current content, against the current champion. `--force --override-reason TEXT` overrides the gate; the
    override, who did it and why are recorded on the version.
    """
    from dataclasses import asdict

    from evaluation.deploy import promote_gated
    from flows.cli.security import audit_action
    from rag.stack import StackRegistry

    if force and not override_reason:
        raise fail("--force needs --override-reason TEXT: an override of the gate is recorded with its reason", 2)
    if override_reason and not force:
        raise fail("--override-reason only applies with --force", 2)
    settings = build_settings()
    result = guarded(
        lambda: promote_gated(
            settings,
            StackRegistry(settings),
            version,
            actor=actor(),
            reason=reason,
            override=override_reason if force else None,
        )
    )
    if result.changed:
        audit_action(
            settings,
            "stack.promote",
            target=f"v{result.version}",
            detail={"previous": result.previous, "reason": reason, "override": override_reason if force else None},
        )
    if as_json:
        typer.echo(json.dumps(asdict(result)))
    elif result.changed:
        typer.echo(f"champion: v{result.previous} -> v{result.version}")
    else:
        typer.echo(f"v{result.version} is already champion")


@stack_app.command("compare")
def stack_compare(
    baseline: Annotated[str, typer.Argument(help="Baseline version, or 'champion'.")],
    candidate: Annotated[str, typer.Argument(help="Candidate version.")],
    testset: Annotated[
        str | None, typer.Option("--testset", help="Test set (default RAGOPS_EVAL__TESTSET).", show_default=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-metric differences of two versions on the same test set, with paired significance tests.

    Uses each version's newest logged evaluation on the test set's current hash (run `ragops eval` first); the
    p-value comes from a paired permutation test on per-question scores, the interval from a paired bootstrap.
    """
    from evaluation.deploy import compare_versions
    from rag.stack import StackRegistry

    settings = build_settings()
    report = guarded(lambda: compare_versions(settings, StackRegistry(settings), baseline, candidate, testset=testset))
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    typer.echo(f"v{report.baseline_version} -> v{report.candidate_version} on {report.testset} ({report.sha[:12]})")
    for c in report.comparisons:
        mark = "*" if c.significant(settings.eval.alpha) else " "
        typer.echo(
            f" {mark} {c.metric:<22} {c.mean_baseline:8.4f} -> {c.mean_candidate:8.4f}  {c.delta:+.4f}  "
            f"95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]  p={c.p_value:.3g}  (n={c.n})"
        )
    typer.echo(f"* significant at alpha={settings.eval.alpha}")


@stack_app.command("rollback")
def stack_rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded as a tag).")] = "manual rollback",
    as_json: JsonOpt = False,
) -> None:
    """Move 'champion' back to the version that held it before the current one."""
    from dataclasses import asdict

    from flows.cli.security import audit_action
    from rag.stack import StackRegistry

    settings = build_settings()
    result = guarded(lambda: StackRegistry(settings).rollback(actor=actor(), reason=reason))
    audit_action(
        settings, "stack.rollback", target=f"v{result.version}", detail={"previous": result.previous, "reason": reason}
    )
    if as_json:
        typer.echo(json.dumps(asdict(result)))
    else:
        typer.echo(f"champion: v{result.previous} -> v{result.version} (rolled back)")


experiment_app = typer.Typer(
    help=(
        "Online A/B experiments: a share of the callers (sticky per API key) answered by a challenger stack beside "
        "the champion; the monitor flow compares the arms with always-valid significance tests."
    ),
    no_args_is_help=True,
)
stack_app.add_typer(experiment_app, name="experiment")


def _experiment_lines(report: Any, status: str) -> list[str]:
    e = report.experiment
    lines = [
        f"experiment {e.id}: v{e.challenger} (challenger, {e.share:.0%} of callers) against v{e.champion} "
        f"(champion), alpha={e.alpha}",
        f"status: {status} (now: {report.verdict}); callers on both arms: {report.sticky_violations}",
    ]
    for arm in (report.champion, report.challenger):
        rate = f"{arm.thumbs_up_rate:.3f}" if arm.thumbs_up_rate is not None else "-"
        p50 = f"{arm.p50_ms:.1f} ms" if arm.p50_ms is not None else "-"
        lines.append(
            f"  {arm.arm:<10} v{arm.stack_version}: {arm.requests} requests from {arm.callers} callers, "
            f"thumbs-up {rate} of {arm.rated} rated, abstained {arm.abstained}, guardrails {arm.guardrail_triggered}, "
            f"p50 {p50}, ${arm.cost_per_request:.6f}/request"
        )
    for t in report.tests:
        if not t.tested:
            lines.append(f"    {t.metric:<24} not tested yet (fewer than 30 per arm)")
            continue
        mark = "*" if t.significant else " "
        lines.append(
            f"  {mark} {t.metric:<24} {t.champion:.4g} -> {t.challenger:.4g} ({t.difference:+.4g}), "
            f"always-valid p={t.p_value:.3g} (level {t.alpha:.3g})"
        )
    return lines


@experiment_app.command("start")
def experiment_start(
    version: Annotated[
        int | None,
        typer.Argument(help="The challenger version (default: the version holding the 'challenger' alias)."),
    ] = None,
    share: Annotated[float, typer.Option("--share", help="Share of callers sent to the challenger (0-1).")] = 0.1,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the arm comparison.")] = 0.05,
    as_json: JsonOpt = False,
) -> None:
    """Start answering --share of the callers with VERSION beside the champion.

    Callers are assigned by a hash of the experiment id and their tenant and key name, so each stays on one arm.
    Every replica of the service picks the experiment up within its reload interval; the monitor flow compares the
    arms and records the verdict on VERSION (tags ab_status and ab_result). Promotion still goes through the gate.
    """
    import time
    from dataclasses import asdict

    from flows.cli.security import audit_action
    from rag.stack import StackRegistry

    settings = build_settings()
    registry = StackRegistry(settings)
    experiment = guarded(
        lambda: registry.start_experiment(version, share=share, alpha=alpha, actor=actor(), at=time.time())
    )
    audit_action(
        settings,
        "stack.experiment",
        target=f"v{experiment.challenger}",
        detail={"experiment": experiment.id, "share": share, "champion": experiment.champion, "action": "start"},
    )
    if as_json:
        typer.echo(json.dumps(asdict(experiment)))
    else:
        typer.echo(
            f"experiment {experiment.id}: v{experiment.challenger} answers {share:.0%} of callers beside champion "
            f"v{experiment.champion}"
        )


@experiment_app.command("status")
def experiment_status(as_json: JsonOpt = False) -> None:
    """Each arm's requests, thumbs-up rate, abstention, guardrail triggers, latency and cost so far, the tests and
    the verdict (recorded on the candidate, as the monitor flow does)."""
    from evaluation.ab import check_experiment

    settings = build_settings()
    found = guarded(lambda: check_experiment(settings))
    if found is None:
        if as_json:
            typer.echo(json.dumps(None))
        else:
            typer.echo("no experiment is running (ragops stack experiment start)")
        return
    report, status = found
    if as_json:
        typer.echo(json.dumps({**report.to_json(), "status": status}))
        return
    for line in _experiment_lines(report, status):
        typer.echo(line)


@experiment_app.command("stop")
def experiment_stop(as_json: JsonOpt = False) -> None:
    """Record the final comparison on the candidate and send every caller back to the champion."""
    from evaluation.ab import stop_experiment
    from flows.cli.security import audit_action

    settings = build_settings()
    report, status = guarded(lambda: stop_experiment(settings, actor=actor()))
    audit_action(
        settings,
        "stack.experiment",
        target=f"v{report.experiment.challenger}",
        detail={"experiment": report.experiment.id, "status": status, "action": "stop"},
    )
    if as_json:
        typer.echo(json.dumps({**report.to_json(), "status": status}))
        return
    for line in _experiment_lines(report, status):
        typer.echo(line)
    typer.echo("stopped: every caller is answered by the champion again")
