"""`ragops erase`: remove a document, a source or a tenant from everything ragops keeps (see evaluation/erasure.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flows.cli.common import JsonOpt, actor, app, build_settings, fail, guarded


@app.command("erase")
def erase(
    doc: Annotated[str | None, typer.Option("--doc", help="A document id, e.g. acme:policy.md.")] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="A source file or folder: every document read from it.")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="A tenant: all its documents and requests.")] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Collection (default RAGOPS_QDRANT__COLLECTION).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (scripts).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Erase a document, a source or a tenant: from the published index and every version kept for rollback, the
    answer cache, the request store, ratings and the training pairs they make, MLflow traces and evaluation
    examples. Each store is compacted so no deleted copy stays on disk, the erasure (never the text) is recorded in
    the audit trail, and a tombstone in RAGOPS_HOME/erasures.jsonl stops later ingestions from reading it back.
    Source files outside RAGOPS_HOME are yours and are only listed. Running services pick up the new index version
    within their poll interval. Cannot be undone."""
    from pipelines.erasure import ErasureTarget

    settings = build_settings()
    target = guarded(
        lambda: ErasureTarget.of(
            collection=collection or settings.qdrant.collection, doc=doc, source=source, tenant=tenant
        )
    )
    if not yes and not typer.confirm(f"Erase {target.describe()} from collection {target.collection!r}?"):
        raise fail("nothing erased", 1)

    def body() -> dict[str, object]:
        from evaluation.erasure import erase as run_erase

        return run_erase(settings, target, actor=actor()).to_json()

    report = guarded(body)
    if as_json:
        typer.echo(json.dumps(report))
        return
    index = report["index"]
    assert isinstance(index, dict)
    if not index["doc_ids"]:
        typer.echo(f"{target.describe()}: no such document in collection {target.collection!r}; tombstone recorded")
    else:
        typer.echo(
            f"erased {len(index['doc_ids'])} document(s), {index['points_removed']} points; index version "
            f"{index['published']} published, versions {list(index['versions_rewritten'])} rewritten"
        )
    typer.echo(
        f"  requests {report['requests']}, ratings {report['ratings']}, traces {report['traces']}, "
        f"evaluation tables {report['example_tables']}, cache entries {report['cache_entries'] or 0}"
    )
    files = report["files"]
    assert isinstance(files, dict)
    for path in files["outside_home"]:
        typer.echo(f"  left in place (outside RAGOPS_HOME, yours): {path}")
    if index["live_readers"]:
        typer.echo(f"  {index['live_readers']} running reader(s) drop their old copy when they follow the new version")
