"""The ``ragops`` command line: thin commands over the library, errors translated to messages and exit codes.

Exit codes: 0 success, 1 a ragops error (message on stderr), 2 usage error, 3 ingestion failed its failure-share
threshold (quarantine written, nothing published), 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from pipelines.env import apply_offline_env
from pipelines.errors import FailureThresholdExceeded, RagopsError
from pipelines.settings import Settings

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
index_app = typer.Typer(help="Inspect the versioned vector index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
stack_app = typer.Typer(
    help="Stacks: versions of the MLflow model 'rag-stack'; the alias 'champion' is what the service serves.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")

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
        raise _fail(f"invalid settings: {problems}", 1) from exc
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
    console = RichHandler(
        console=_stderr_console(), show_path=False, level=logging.INFO if verbose else logging.WARNING
    )
    file_handler = logging.FileHandler(settings.logs_dir / "ragops.log")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(console)
    root.addHandler(file_handler)
    for noisy in ("httpx", "urllib3", "alembic", "great_expectations", "unstructured", "pypdf", "pdfminer", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._ragops_configured = True  # type: ignore[attr-defined]


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run a command body, turning library errors into a message and an exit code (never a traceback)."""
    try:
        return fn()
    except FailureThresholdExceeded as exc:
        raise _fail(str(exc), 3) from exc
    except RagopsError as exc:
        raise _fail(str(exc)) from exc
    except KeyboardInterrupt as exc:
        raise _fail("interrupted", 130) from exc


class RichProgress:
    """A progress bar per ingestion stage, on stderr (stdout stays clean for --json)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description:>10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_stderr_console(),
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


def _print_report(data: dict[str, Any]) -> None:
    keys = [
        "documents_seen",
        "documents_new",
        "documents_changed",
        "documents_unchanged",
        "documents_deleted",
        "documents_failed",
        "chunks_upserted",
        "chunks_deleted",
        "chunks_truncated",
        "embeddings_computed",
        "embeddings_reused",
        "points_total",
        "index_version",
        "seconds",
    ]
    typer.echo(f"ingested {data['source']} into collection {data['collection']!r}")
    for key in keys:
        typer.echo(f"  {key.replace('_', ' '):<22} {data.get(key)}")
    for record in data.get("quarantined", []):
        typer.echo(f"  quarantined: {record['doc_id']} ({record['stage']}): {record['reason']}")
    if data.get("mlflow_run_id"):
        typer.echo(f"  MLflow run             {data['mlflow_run_id']} (experiment 'ingestion')")


def ingest_source(
    settings: Settings,
    source: Path,
    *,
    collection: str | None,
    tenant: str | None,
    show_progress: bool,
    use_prefect: bool | None = None,
) -> dict[str, Any]:
    """Run an ingestion through the Prefect flow when a Prefect API is configured, else in this process."""
    use_prefect = bool(settings.prefect.api_url) if use_prefect is None else use_prefect
    if use_prefect:
        if not settings.prefect.api_url:
            raise RagopsError("--prefect needs RAGOPS_PREFECT__API_URL pointing at a running Prefect server")
        from flows.ingest import ingest_flow

        return dict(ingest_flow(source=str(source), collection=collection, tenant=tenant))
    from flows.ingest import run_params
    from pipelines.ingest import run_ingest
    from pipelines.tracking import log_ingest_report
    from rag.embedders import ingest_target

    settings, collection = ingest_target(settings, collection)
    progress = RichProgress() if show_progress else None
    with progress.shown() if progress else nullcontext():
        report = run_ingest(settings, source, collection=collection, tenant=tenant, progress=progress)
    data = report.to_json()
    data["mlflow_run_id"] = log_ingest_report(settings, report, params=run_params(settings))
    data["orchestrated_by"] = "in-process"
    return data


@app.command()
def ingest(
    source: Annotated[
        Path, typer.Argument(help="Folder of .txt/.md/.html/.pdf/.docx, a .jsonl[.gz], or a BEIR folder.")
    ],
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Target collection (default RAGOPS_QDRANT__COLLECTION).")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant recorded on every document.")] = None,
    prefect: Annotated[
        bool | None,
        typer.Option(
            "--prefect/--no-prefect",
            help="Run as a Prefect flow (default: when RAGOPS_PREFECT__API_URL is set) or in this process.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Ingest SOURCE: partition, chunk, validate, embed and publish a new index version.

    Incremental: unchanged documents are skipped, changed ones replaced, deleted ones removed. Bad files are
    quarantined with their reason (see `ragops quarantine`); the run fails (exit 3) only when the failed share
    exceeds RAGOPS_INGEST__MAX_FAILURE_SHARE. Each run is logged to MLflow (experiment 'ingestion').
    """
    settings = build_settings(verbose)

    def body() -> dict[str, Any]:
        return ingest_source(
            settings, source, collection=collection, tenant=tenant, show_progress=not as_json, use_prefect=prefect
        )

    data = guarded(body)
    if as_json:
        typer.echo(json.dumps(data))
    else:
        _print_report(data)


@app.command()
def up(
    api_port: Annotated[int | None, typer.Option("--api-port", help="Query service port (default 8000).")] = None,
    prefect_port: Annotated[
        int | None, typer.Option("--prefect-port", help="Prefect UI/API port (default 4200).")
    ] = None,
    mlflow_port: Annotated[int | None, typer.Option("--mlflow-port", help="MLflow UI/API port (default 5000).")] = None,
    bootstrap_demo: Annotated[
        bool, typer.Option("--bootstrap/--no-bootstrap", help="Ingest the demo corpus and promote a first stack.")
    ] = True,
    verbose: VerboseOpt = False,
) -> None:
    """Bring the whole platform up on this machine, on its embedded defaults, until Ctrl-C.

    Starts a Prefect server (UI), an MLflow server (UI), a worker serving every deployment with its schedule
    (ingest hourly, evaluate nightly, promote, rollback: pause them in the Prefect UI) and the query service with
    its playground, all on 127.0.0.1 with state under RAGOPS_HOME. The first start ingests the bundled demo corpus,
    evaluates a default stack through the gate and promotes it; a restart reuses everything. Ctrl-C stops every
    part; a port in use or a crashed part is reported and stops the rest. Logs: RAGOPS_HOME/logs/<part>.log.
    """
    import os

    from flows.platform import PlatformError, Ports, Supervisor, bootstrap, platform_env

    settings = build_settings(verbose)
    defaults = Ports.from_settings(settings)
    ports = Ports(
        api=api_port or defaults.api, prefect=prefect_port or defaults.prefect, mlflow=mlflow_port or defaults.mlflow
    )

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    supervisor = Supervisor(settings, ports, echo)
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        supervisor.check_ports()
        supervisor.start(["prefect", "mlflow"])
        os.environ.update(platform_env(settings, ports))  # this process now talks to the servers too
        served = build_settings(verbose)
        supervisor.start(["worker", "api"])
        if bootstrap_demo:
            bootstrap(served, echo)
        _wait_ready(f"http://127.0.0.1:{ports.api}/readyz", served.service.reload_interval_s + 60, echo)
        typer.echo(
            "\nragops is up:\n"
            f"  query playground  http://127.0.0.1:{ports.api}/\n"
            f"  query API         http://127.0.0.1:{ports.api}/docs\n"
            f"  Prefect UI        http://127.0.0.1:{ports.prefect}\n"
            f"  MLflow UI         http://127.0.0.1:{ports.mlflow}\n"
            f"  state and logs    {settings.home}\n"
            "Ctrl-C stops everything."
        )
        supervisor.watch(stop)
    except PlatformError as exc:
        supervisor.stop_all()
        raise _fail(str(exc)) from exc
    except RagopsError as exc:
        supervisor.stop_all()
        raise _fail(str(exc)) from exc
    except KeyboardInterrupt:
        echo("stopping ...")
    finally:
        supervisor.stop_all()
    echo("stopped")


def _wait_ready(url: str, timeout_s: float, echo: Callable[[str], None]) -> None:
    import time

    import httpx

    from flows.platform import PlatformError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                echo("api ready: a champion stack is loaded")
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise PlatformError(f"the query service did not become ready ({url}) within {timeout_s:.0f} s")


server_app = typer.Typer(
    help="Start one part of the platform (for deployments that run them on different machines; see infra/).",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


def _exec_server(name: str, host: str | None, port: int | None, verbose: bool) -> None:
    import os

    from flows.platform import SERVER_ENV, server_argv
    from pipelines.env import child_env

    settings = build_settings(verbose)
    group = settings.prefect if name == "prefect" else settings.mlflow
    chosen, bind = port or group.port, host or group.host
    argv = server_argv(settings, name, chosen, bind)
    typer.echo(f"{name} server on http://{bind}:{chosen}", err=True)
    os.execve(argv[0], argv, child_env(settings, SERVER_ENV[name]))


@server_app.command("prefect")
def server_prefect(
    host: Annotated[
        str | None, typer.Option("--host", help="Interface (default 127.0.0.1; 0.0.0.0 in containers).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default RAGOPS_PREFECT__PORT, 4200).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """The Prefect server with its UI (PREFECT_HOME and its SQLite database under RAGOPS_HOME)."""
    _exec_server("prefect", host, port, verbose)


@server_app.command("mlflow")
def server_mlflow(
    host: Annotated[
        str | None, typer.Option("--host", help="Interface (default 127.0.0.1; 0.0.0.0 in containers).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default RAGOPS_MLFLOW__PORT, 5000).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """The MLflow tracking server with its UI (SQLite store and artifacts under RAGOPS_HOME, no job workers)."""
    _exec_server("mlflow", host, port, verbose)


@server_app.command("worker")
def server_worker(verbose: VerboseOpt = False) -> None:
    """Serve every ragops deployment with its schedule against RAGOPS_PREFECT__API_URL (runs until stopped).

    Deployments: ingest/hourly (RAGOPS_INGEST__SOURCES, default the demo corpus), evaluate/nightly-champion,
    promote/manual, rollback/manual. Schedules can be paused in the Prefect UI.
    """
    settings = build_settings(verbose)
    if not settings.prefect.api_url:
        raise _fail("the worker needs a Prefect server: set RAGOPS_PREFECT__API_URL (e.g. http://127.0.0.1:4200/api)")
    from prefect import serve as prefect_serve

    from flows.deployments import all_deployments

    deployments = all_deployments(settings)
    typer.echo(f"serving {len(deployments)} deployments: {', '.join(d.name for d in deployments)}", err=True)
    # Schedules stay active when the worker stops (a restart of `ragops up` must not leave them paused).
    prefect_serve(*deployments, print_starting_message=False, pause_on_shutdown=False)


@server_app.command("api")
def server_api(
    host: Annotated[str | None, typer.Option("--host", help="Interface (default RAGOPS_SERVICE__HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default RAGOPS_SERVICE__PORT).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """The query service (the same as `ragops serve`)."""
    serve(host=host, port=port, verbose=verbose)


@app.command()
def demo(
    target: Annotated[Path, typer.Argument(help="Folder to write the demo corpus into.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files that differ.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the bundled demo corpus (33 documents in md, html, txt, pdf and docx) into TARGET."""
    from pipelines.demo import build_demo_corpus

    paths = guarded(lambda: build_demo_corpus(target, overwrite=overwrite))
    if as_json:
        typer.echo(json.dumps({"target": str(target), "files": [str(p) for p in paths]}))
    else:
        typer.echo(f"wrote {len(paths)} documents to {target}")


@app.command()
def quarantine(
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Collection.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List documents that did not land, with the reason and the pipeline stage that rejected them."""
    from dataclasses import asdict

    from pipelines.quarantine import Quarantine

    settings = build_settings()
    records = Quarantine(settings.quarantine_dir, collection or settings.qdrant.collection).list()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in records]))
        return
    if not records:
        typer.echo("quarantine is empty")
    for record in records:
        typer.echo(f"{record.source}\n    {record.stage}: {record.reason}")


@index_app.command("status")
def index_status(
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Collection.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the published index version: points, documents, embedder identity, chunking, kept versions."""
    from pipelines.index import VectorIndex

    settings = build_settings()
    index = VectorIndex(settings, collection=collection)

    def body() -> dict[str, Any]:
        current = index.current()
        return {
            "collection": index.collection,
            "mode": "server" if index.server_mode else "embedded",
            "current": current.to_json() if current else None,
            "versions": index.versions(),
        }

    data = guarded(body)
    if as_json:
        typer.echo(json.dumps(data))
        return
    current = data["current"]
    if current is None:
        typer.echo(f"collection {data['collection']!r} has no published version yet (run `ragops ingest`)")
        return
    typer.echo(
        f"collection {data['collection']!r} ({data['mode']}): version {current['version']}, "
        f"{current['points']} points from {current['documents']} documents"
    )
    typer.echo(f"  embedder  {current['embedder']['name']} (weights {current['embedder']['weights_sha256'][:12]})")
    typer.echo(f"  chunking  {current['chunking']['chunk_size']}/{current['chunking']['chunk_overlap']} word pieces")
    typer.echo(f"  published {current['created_at']}; versions kept: {data['versions']}")


def _actor() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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
        config = StackConfig.for_index(
            current, name=name, pin=pin, model_uri=uri, retrieval={"mode": mode, "top_k": top_k}
        )
        return StackRegistry(settings).register(config, description=description, actor=_actor())

    try:
        number = guarded(body)
    except ValueError as exc:  # pydantic validation of the options
        raise _fail(f"invalid stack options: {exc}") from exc
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
    from rag.stack import StackRegistry

    if force and not override_reason:
        raise _fail("--force needs --override-reason TEXT: an override of the gate is recorded with its reason", 2)
    if override_reason and not force:
        raise _fail("--override-reason only applies with --force", 2)
    settings = build_settings()
    result = guarded(
        lambda: promote_gated(
            settings,
            StackRegistry(settings),
            version,
            actor=_actor(),
            reason=reason,
            override=override_reason if force else None,
        )
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

    from rag.stack import StackRegistry

    settings = build_settings()
    result = guarded(lambda: StackRegistry(settings).rollback(actor=_actor(), reason=reason))
    if as_json:
        typer.echo(json.dumps(asdict(result)))
    else:
        typer.echo(f"champion: v{result.previous} -> v{result.version} (rolled back)")


@app.command("eval")
def eval_(
    testset: Annotated[
        str | None,
        typer.Option(
            "--testset",
            help="A bundled name (demo_qa), a QA .jsonl or a BEIR folder (default RAGOPS_EVAL__TESTSET).",
            show_default=False,
        ),
    ] = None,
    stack: Annotated[str, typer.Option("--stack", help="A registered version number, or 'champion'.")] = "champion",
    gate: Annotated[
        bool,
        typer.Option(
            "--gate",
            help="Check thresholds and regression against the champion; exit 4 when the gate fails.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate a stack on a fixed test set and log the run to MLflow (experiment 'evaluation').

    Retrieval (nDCG@10, recall@k, MRR@10, hit rate), answers (exact match, token F1, containment, abstention,
    groundedness, citation validity, format) and latency per stage. With --gate, also the deployment gate: every
    configured threshold (RAGOPS_EVAL__THRESHOLDS) and no regression beyond tolerance against the champion's
    reference evaluation on the same test set; a passing gate is what `ragops stack promote` requires.
    """
    from evaluation.deploy import evaluate_stack
    from evaluation.testsets import load_testset
    from rag.stack import StackRegistry

    settings = build_settings(verbose)
    bar = None if as_json else EvalProgress()

    def body() -> Any:
        chosen = load_testset(testset, split=settings.eval.split) if testset else None
        with bar.shown() if bar else nullcontext():
            return evaluate_stack(
                settings,
                StackRegistry(settings),
                stack,
                testset=chosen,
                gate=gate,
                progress=bar.update if bar else None,
            )

    outcome = guarded(body)
    if as_json:
        typer.echo(json.dumps(outcome.to_json()))
    else:
        _print_eval(outcome)
    if outcome.gate is not None and not outcome.gate.passed:
        raise typer.Exit(4)


class EvalProgress:
    """One progress bar over the questions of a test set (stderr)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=_stderr_console()
        )
        self._task: Any = None

    def update(self, done: int, total: int) -> None:
        """Move the bar (creates it on the first call)."""
        if self._task is None:
            self._task = self._progress.add_task("evaluate", total=total)
        self._progress.update(self._task, completed=done)

    @contextmanager
    def shown(self) -> Iterator[EvalProgress]:
        """Display the bar while the block runs."""
        with self._progress:
            yield self


@app.command()
def finetune(
    train: Annotated[
        Path | None,
        typer.Option(
            "--train",
            help="Labelled pairs: a BEIR folder (its train split) or a JSONL of {query, positive_doc_id"
            "[, negative_doc_ids]}. Default RAGOPS_FINETUNE__TRAIN, else the gate's BEIR test folder if it has a "
            "train split. Feedback pairs are always added; synthetic pairs when labels are scarce.",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Epochs (default RAGOPS_FINETUNE__EPOCHS).")
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Promote the candidate when it beats the champion.")
    ] = True,
    shuffle_labels: Annotated[
        bool,
        typer.Option(
            "--shuffle-labels", help="Drill: train on deliberately wrong pairs; the gate must refuse the result."
        ),
    ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Retrain the embedder and promote it only if it beats the champion (the `retrain` flow, in this process).

    Assembles training pairs (labels, feedback, synthetic) with the gate's test questions excluded, validates them
    with great-expectations, fine-tunes MiniLM on CPU (MLflow experiment 'finetune', registered model 'embedder'),
    re-embeds the champion's collection into a shadow collection while the champion keeps serving, registers the
    candidate stack (alias 'challenger') and gates it against the champion. It is promoted when the gate passes and
    RAGOPS_FINETUNE__PRIMARY_METRIC improves by RAGOPS_FINETUNE__MARGIN, significantly; otherwise the champion stays
    and the reason is recorded on the candidate. Exit code 0 either way; 1 on an error.
    """
    from evaluation.retrain import RetrainRequest, retrain

    settings = build_settings(verbose)
    request = RetrainRequest(
        train=str(train) if train else None,
        epochs=epochs,
        promote=promote,
        shuffle_labels=shuffle_labels,
        actor=_actor(),
    )
    progress = None if as_json else RichProgress()

    def body() -> Any:
        with progress.shown() if progress else nullcontext():
            return retrain(settings, request, progress=progress)

    outcome = guarded(body)
    if as_json:
        typer.echo(json.dumps(outcome.to_json()))
        return
    verdict = "promoted" if outcome.promoted else "not promoted; the champion stays"
    typer.echo(f"candidate stack v{outcome.candidate} {verdict}: {outcome.reason}")
    typer.echo(f"  champion            v{outcome.champion_before} -> v{outcome.champion_after}")
    typer.echo(f"  embedder version    {outcome.embedder_version} (registered model 'embedder')")
    typer.echo(f"  shadow collection   {outcome.collection}")
    typer.echo(f"  training pairs      {outcome.training['pairs']} {outcome.training['by_origin']}")
    if outcome.training["dropped"]:
        typer.echo(f"  dropped             {outcome.training['dropped']}")
    typer.echo("  seconds             " + ", ".join(f"{k} {v:.0f}" for k, v in outcome.seconds.items()))
    typer.echo(f"  MLflow runs         finetune {outcome.finetune_run_id}, evaluation {outcome.eval_run_id}")
    typer.echo(outcome.gate_summary)


def _print_eval(outcome: Any) -> None:
    result = outcome.result
    typer.echo(
        f"stack {result.stack_name} v{result.stack_version} on {result.testset_name} ({result.testset_sha256[:12]}), "
        f"{len(result.examples)} questions in {result.seconds:.1f} s"
    )
    for name, value in sorted(result.metrics.items()):
        typer.echo(f"  {name:<28} {value:10.4f}")
    for name, why in sorted(result.skipped.items()):
        typer.echo(f"  {name:<28}    skipped: {why}")
    if outcome.gate is not None:
        typer.echo(outcome.gate.summary())
    typer.echo(f"MLflow run: {outcome.run_id} (experiment 'evaluation')")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Interface (default RAGOPS_SERVICE__HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default RAGOPS_SERVICE__PORT).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the champion stack over HTTP: /v1/query, /v1/chat/completions (OpenAI), /healthz, /readyz, /v1/stack.

    Follows the 'champion' alias and the published index, switching atomically when either moves.
    """
    import uvicorn

    from rag.service.app import create_app

    settings = build_settings(verbose)
    bind_host = host or settings.service.host
    bind_port = port or settings.service.port
    typer.echo(f"serving on http://{bind_host}:{bind_port} (docs at /docs)", err=True)
    uvicorn.run(create_app(settings), host=bind_host, port=bind_port, log_level="info" if verbose else "warning")


@app.command()
def query(
    question: Annotated[str, typer.Argument(help="The question.")],
    url: Annotated[
        str | None, typer.Option("--url", help="A running service; default: answer in this process.")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Chunks to retrieve.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's documents.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask a question and print the answer with its citations (from a running service, or the champion in-process)."""
    settings = build_settings()
    filters = {"tenant": tenant} if tenant else None
    if url:
        import httpx

        try:
            response = httpx.post(
                url.rstrip("/") + "/v1/query",
                json={"question": question, "top_k": top_k, "filters": filters},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            raise _fail(f"cannot reach {url}: {exc}") from exc
        data = response.json()
        if response.status_code != 200:
            raise _fail(data.get("error", {}).get("message", response.text))
    else:
        data = guarded(lambda: _query_in_process(settings, question, filters=filters, top_k=top_k))
    if as_json:
        typer.echo(json.dumps(data))
        return
    typer.echo(data["answer"])
    for citation in data["citations"]:
        typer.echo(f"  [{citation['n']}] {citation['title']} ({citation['doc_id']}, chunk {citation['position']})")
    typer.echo(f"  stack v{data['stack_version']}", err=True)


def _query_in_process(
    settings: Settings, question: str, *, filters: dict[str, str] | None, top_k: int | None
) -> dict[str, Any]:
    from dataclasses import asdict

    from rag.engine import RagEngine
    from rag.stack import StackRegistry

    version, config = StackRegistry(settings).champion()
    with RagEngine.open(settings, config) as engine:
        answer = engine.ask(question, filters=filters, top_k=top_k)
    return {
        "answer": answer.text,
        "citations": [asdict(c) for c in answer.citations],
        "abstained": answer.abstained,
        "stack_version": version,
    }


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ragops")


if __name__ == "__main__":  # pragma: no cover
    main()
