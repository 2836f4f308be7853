"""`ragops review ...`: the human review queue (rag/review.py) and its export as a test set and training pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JsonOpt, app, build_settings, fail, guarded

review_app = typer.Typer(
    help=(
        "The human review queue: answers rated down, with low support, touched by a guardrail or sampled; label them "
        "on the service's /review page (operator key), then export them as a test set and training pairs."
    ),
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")


@review_app.command("list")
def review_list(
    status: Annotated[str, typer.Option("--status", help="pending, labelled or all.")] = "pending",
    limit: Annotated[int, typer.Option("--limit", help="At most this many items (1-1000).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Queued answers, oldest first, with why they were queued and their label."""
    from dataclasses import asdict

    from evaluation.monitor import open_store

    if status not in ("pending", "labelled", "all"):
        raise fail(f"--status must be pending, labelled or all, not {status!r}", 2)
    settings = build_settings()
    with open_store(settings) as store:
        items = guarded(lambda: store.review_items(status=None if status == "all" else status, limit=limit))
        counts = store.review_counts()
    if as_json:
        typer.echo(json.dumps({"counts": counts, "items": [asdict(i) for i in items]}))
        return
    typer.echo(f"{counts['pending']} pending, {counts['labelled']} labelled")
    for item in items:
        verdict = item.label.verdict if item.label else "-"
        typer.echo(f"  {item.request_id}  [{', '.join(item.reasons)}]  {verdict:<12} {item.question[:80]}")


@review_app.command("export")
def review_export(
    out: Annotated[Path, typer.Option("--out", help="Folder for reviewed.jsonl and reviewed_train.jsonl.")],
    test_share: Annotated[
        float, typer.Option("--test-share", help="Share of the questions that go to the test set (by hash).")
    ] = 0.5,
    as_json: JsonOpt = False,
) -> None:
    """Write the labelled answers as the `reviewed` QA test set and as training pairs.

    Each question goes to one side only, by a hash of its text. Use the test set with
    `ragops eval --testset OUT/reviewed.jsonl` and the pairs with `ragops retrain --train OUT/reviewed_train.jsonl`.
    """
    from evaluation.monitor import open_store
    from evaluation.review import export_reviewed

    if not 0.0 <= test_share <= 1.0:
        raise fail(f"--test-share must be between 0 and 1, got {test_share}", 2)
    settings = build_settings()
    with open_store(settings) as store:
        items = guarded(store.labelled_reviews)
    result = guarded(lambda: export_reviewed(items, out, test_share=test_share))
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    typer.echo(
        f"test set {result.testset}: {result.testset_items} items (sha256 {result.testset_sha256[:12]}); "
        f"training pairs {result.train}: {result.train_pairs}; from {result.labelled} labelled answers"
    )
    for why, n in sorted(result.skipped.items()):
        typer.echo(f"  skipped {n}: {why}")
