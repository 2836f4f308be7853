"""`ragops guardrails ...`: train the injection classifier, and run a stack's input chain on texts to measure it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JsonOpt, app, build_settings, fail, guarded

DEFAULT_TRAIN = Path("../shared/datasets/prompt_injections/train.jsonl")

guardrails_app = typer.Typer(
    help="Guardrails of a stack: train the injection classifier, check texts through the input chain.",
    no_args_is_help=True,
)
app.add_typer(guardrails_app, name="guardrails")


@guardrails_app.command("train")
def train(
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="JSONL files of {text, label} (1 = injection); repeatable.", show_default=False),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit the injection classifier over MiniLM vectors + char n-grams, report grouped CV (paraphrases share a
    fold), log the run and register it as a version of `injection-classifier`; prints the models:/ URI a stack's
    `guardrails.injection.model_uri` takes."""
    files = data or [DEFAULT_TRAIN]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise fail(f"no such training file: {', '.join(missing)}", 2)
    settings = build_settings()

    def run() -> None:
        from pipelines.embed import Embedder
        from rag.guardrails.training import train_and_register

        embedder = Embedder(settings.embedder.model_copy(update={"model_path": None}), cache_dir=settings.cache_dir)
        try:
            outcome = train_and_register(settings, files, embedder)
        except ValueError as exc:
            raise fail(str(exc), 2) from exc
        body = {"model_uri": outcome.model_uri, "threshold": outcome.threshold, "examples": outcome.examples}
        body["cv"] = outcome.cv.to_json()
        if as_json:
            typer.echo(json.dumps(body))
        else:
            cv = outcome.cv
            typer.echo(
                f"registered {outcome.model_uri} (threshold {outcome.threshold:.3f}, {outcome.examples} examples)"
            )
            typer.echo(f"grouped {cv.folds}-fold CV: recall {cv.recall:.3f}, FPR {cv.fpr:.3f}, AUC {cv.auc:.3f}")

    guarded(run)


@guardrails_app.command("check")
def check(
    text: Annotated[str | None, typer.Argument(help="The text to check.", show_default=False)] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help='JSONL with one {"text"} per line.', show_default=False)
    ] = None,
    stack: Annotated[int | None, typer.Option("--stack", help="Stack version (default: the champion).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the input chain of the champion's stack (or --stack N) on texts: each check's verdict, the PII spans
    (type, start, end into the input) and the injection score; one JSON result per line, in input order. The topic
    check needs the index's corpus profile and is not run here."""
    if (text is None) == (file is None):
        raise fail("give a TEXT or --file texts.jsonl (not both)", 2)
    texts: list[str] = []
    if file is not None:
        if not file.is_file():
            raise fail(f"no such file: {file}", 2)
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise fail(f"{file}:{number}: not JSON ({exc.msg})", 2) from exc
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise fail(f"{file}:{number}: expected an object with a string 'text'", 2)
            texts.append(row["text"])
    else:
        texts.append(text or "")
    settings = build_settings()

    def run() -> None:
        from rag.embedders import open_embedder
        from rag.guardrails.chain import InputGuard
        from rag.stack import StackRegistry

        registry = StackRegistry(settings)
        config = registry.get(stack).config if stack is not None else registry.champion()[1]
        if config.guardrails is None:
            raise fail("this stack was registered before guardrails: it runs no checks", 1)
        guard = InputGuard.build(
            config.guardrails, settings=settings, embedder=open_embedder(settings, config.embedder), corpus=None
        )
        for item in texts:
            result = guard.check(item, None)
            if as_json:
                typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
                continue
            typer.echo(f"{'BLOCKED' if result.blocked else 'passed '} {result.text}")
            for verdict in result.verdicts:
                extra = f" score={verdict.score:.3f}" if verdict.score is not None else ""
                spans = " ".join(f"{s.type}[{s.start}:{s.end}]" for s in verdict.spans)
                typer.echo(
                    f"  {verdict.name:<10} {verdict.verdict:<6} {verdict.ms:7.2f} ms{extra} {verdict.reason} {spans}"
                )

    guarded(run)
