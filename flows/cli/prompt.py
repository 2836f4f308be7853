"""`ragops prompt ...`: prompt templates in MLflow's Prompt Registry, which stacks reference by name and version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JsonOpt, app, build_settings, fail, guarded

prompt_app = typer.Typer(
    help="Prompt templates in MLflow's Prompt Registry; a stack references one with "
    "`ragops stack register --prompt NAME@VERSION` and is gated like any other change.",
    no_args_is_help=True,
)
app.add_typer(prompt_app, name="prompt")


@prompt_app.command("register")
def prompt_register(
    name: Annotated[str, typer.Argument(help="Prompt name (letters, digits, . _ -).")],
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            help="Template text with {question} and {context} (literal braces doubled), or MLflow's {{question}} form.",
        ),
    ],
    message: Annotated[str | None, typer.Option("--message", "-m", help="What changed (commit message).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register FILE as the next version of prompt NAME."""
    from rag.prompts import PromptRegistry, from_mlflow

    settings = build_settings()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {file}: {exc}") from exc
    if "{{question}}" in text or "{{context}}" in text:
        text = from_mlflow(text)
    ref = guarded(lambda: PromptRegistry(settings).register(name, text, message=message))
    if as_json:
        typer.echo(json.dumps({"name": ref.name, "version": ref.version, "uri": ref.uri}))
    else:
        typer.echo(
            f"registered prompt {ref.name} version {ref.version} ({ref.uri}); use it with "
            f"`ragops stack register --answerer llm --prompt {ref.name}@{ref.version} ...`"
        )


@prompt_app.command("show")
def prompt_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (the latest version by default).")],
    as_json: JsonOpt = False,
) -> None:
    """Print a prompt version's template (in the form stacks fill: {question}, {context})."""
    from rag.prompts import PromptRegistry, parse_ref

    settings = build_settings()
    name, version = guarded(lambda: parse_ref(ref))
    found, template = guarded(lambda: PromptRegistry(settings).resolve(name, version))
    if as_json:
        typer.echo(json.dumps({"name": found.name, "version": found.version, "template": template}))
    else:
        typer.echo(f"# {found.uri}")
        typer.echo(template)
