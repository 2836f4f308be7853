"""What every command shares: the root app, settings, logging, error translation and progress bars.

Exit codes: 0 success, 1 a ragops error (message on stderr), 2 usage error, 3 ingestion failed its failure-share
threshold (quarantine written, nothing published), 4 a failed gate, 130 interrupted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from flows.settings import Settings
from pipelines.env import apply_offline_env
from pipelines.errors import FailureThresholdExceeded, RagopsError

logger = logging.getLogger("ragops")

app = typer.Typer(
    name="ragops",
    help=(
        "ragops: the production stack around a RAG prototype. Validated, incremental ingestion into Qdrant; "
        "runs tracked in MLflow; flows orchestrated by Prefect. All state lives under RAGOPS_HOME (default "
        "./.ragops); every setting is an environment variable RAGOPS_<NAME> (nested: RAGOPS_QDRANT__URL)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details to stderr.")]


class _State:
    home: Path | None = None


@app.callback()
def _root(
    home: Annotated[
        Path | None, typer.Option("--home", help="State folder (overrides RAGOPS_HOME).", show_default=False)
    ] = None,
) -> None:
    _State.home = home


def build_settings(verbose: bool = False) -> Settings:
    """Settings from the environment (plus --home), offline env applied, folders created, logging configured."""
    from pydantic import ValidationError

    overrides: dict[str, Any] = {"home": _State.home} if _State.home else {}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"RAGOPS_{'__'.join(str(p).upper() for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise fail(f"invalid settings: {problems}", 1) from exc
    apply_offline_env(settings)
    settings.ensure_dirs()
    _configure_logging(settings, verbose)
    return settings


def _configure_logging(settings: Settings, verbose: bool) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger()
    if getattr(root, "_ragops_configured", False):
        return
    root.setLevel(logging.INFO)
    console = RichHandler(console=stderr_console(), show_path=False, level=logging.INFO if verbose else logging.WARNING)
    file_handler = logging.FileHandler(settings.logs_dir / "ragops.log")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(console)
    root.addHandler(file_handler)
    for noisy in ("httpx", "urllib3", "alembic", "great_expectations", "unstructured", "pypdf", "pdfminer", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._ragops_configured = True  # type: ignore[attr-defined]


def stderr_console() -> Any:
    """A rich console on stderr (stdout stays clean for --json)."""
    from rich.console import Console

    return Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print the error and return the exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body, turning library errors into a message and an exit code (never a traceback)."""
    try:
        return fn()
    except FailureThresholdExceeded as exc:
        raise fail(str(exc), 3) from exc
    except RagopsError as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt as exc:
        raise fail("interrupted", 130) from exc


class RichProgress:
    """A progress bar per ingestion stage, on stderr (stdout stays clean for --json)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description:>10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr_console(),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def start(self, stage: str, total: int) -> None:
        """Add (or reset) the bar of a stage."""
        if stage in self._tasks:
            self._progress.reset(self._tasks[stage], total=total)
        else:
            self._tasks[stage] = self._progress.add_task(stage, total=total)

    def advance(self, stage: str, amount: int) -> None:
        """Move a stage's bar."""
        if stage in self._tasks:
            self._progress.advance(self._tasks[stage], amount)

    @contextmanager
    def shown(self) -> Iterator[RichProgress]:
        """Display the bars while the block runs."""
        with self._progress:
            yield self


def actor() -> str:
    """Who runs the command (recorded on promotions and retraining)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
