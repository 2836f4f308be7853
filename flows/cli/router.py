"""`ragops router fit`: fit a tiered stack's router on an evaluation set and register it as a new stack version."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import JsonOpt, VerboseOpt, actor, app, build_settings, guarded

if TYPE_CHECKING:
    from evaluation.router_fit import FitReport

router_app = typer.Typer(
    help="Tiered stacks: fit the router (which tier answers) on an evaluation set; the result is a new stack "
    "version that goes through the gate like any other change.",
    no_args_is_help=True,
)
app.add_typer(router_app, name="router")


@router_app.command("fit")
def router_fit(
    stack: Annotated[str, typer.Argument(help="A registered version number, or 'champion', with routing tiers.")],
    testset: Annotated[
        str | None,
        typer.Option("--testset", help="A bundled name (demo_qa) or a QA .jsonl (default RAGOPS_EVAL__TESTSET)."),
    ] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate each tier of STACK alone, fit one logistic model per tier (scikit-learn) and the cheapest threshold
    within the gate's tolerance of the top tier, and register the fitted stack as a new version (not promoted)."""
    from evaluation.deploy import current_testset, resolve_version
    from evaluation.router_fit import fit_stack
    from evaluation.testsets import load_testset
    from rag.stack import StackRegistry

    settings = build_settings(verbose)
    registry = StackRegistry(settings)

    def body() -> FitReport:
        version = resolve_version(registry, stack)
        chosen = load_testset(testset, split=settings.eval.split) if testset else current_testset(settings)
        return fit_stack(settings, registry, version, chosen, actor=actor())

    report = guarded(body)
    routed, top = report.routed, report.top
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "version": report.version,
                    "threshold": report.routing.threshold,
                    "rows": report.rows,
                    "routed": {"quality": routed.quality, "cost_usd": routed.cost_usd},
                    "top_tier": {"quality": top.quality, "cost_usd": top.cost_usd},
                    "escalation_rate": routed.escalation_rate,
                }
            )
        )
    else:
        typer.echo(
            f"registered stack version {report.version} with the fitted router (threshold "
            f"{report.routing.threshold}); on {report.rows} questions: routed quality {routed.quality:.3f} at "
            f"${routed.cost_usd:.4f} vs top tier {top.quality:.3f} at ${top.cost_usd:.4f}. Gate it with "
            f"`ragops eval --stack {report.version} --gate`."
        )
