"""The ``ragops`` command line: thin commands over the library, errors translated to messages and exit codes.

Exit codes: 0 success, 1 a ragops error (message on stderr), 2 usage error, 3 ingestion failed its failure-share
threshold (quarantine written, nothing published), 130 interrupted.
"""

from __future__ import annotations

import json
import logging
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
def up(as_json: JsonOpt = False, verbose: VerboseOpt = False) -> None:
    """Bring the platform up on its embedded defaults: build the demo corpus and ingest it, then report.

    Uses local Qdrant, SQLite-backed MLflow and needs no LLM key. Safe to re-run: unchanged documents are not
    re-ingested.
    """
    from pipelines.demo import build_demo_corpus

    settings = build_settings(verbose)
    corpus = settings.home / "demo-corpus"

    def body() -> dict[str, Any]:
        build_demo_corpus(corpus, overwrite=True)
        return ingest_source(settings, corpus, collection=None, tenant=None, show_progress=not as_json)

    data = guarded(body)
    data["home"] = str(settings.home)
    data["mlflow_tracking_uri"] = settings.mlflow_tracking_uri
    if as_json:
        typer.echo(json.dumps(data))
        return
    _print_report(data)
    typer.echo("")
    typer.echo(f"state:  {settings.home}")
    typer.echo(f"MLflow: mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")


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
    from rag.errors import StackError
    from rag.stack import StackRegistry
    from rag.types import StackConfig

    settings = build_settings()

    def body() -> int:
        current = VectorIndex(settings, collection=collection).current()
        if current is None:
            raise StackError("the collection has no published index yet; run `ragops ingest` first")
        config = StackConfig.for_index(current, name=name, pin=pin, retrieval={"mode": mode, "top_k": top_k})
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
    as_json: JsonOpt = False,
) -> None:
    """Move the 'champion' alias to VERSION; the running service follows within its reload interval."""
    from dataclasses import asdict

    from rag.stack import StackRegistry

    settings = build_settings()
    result = guarded(lambda: StackRegistry(settings).promote(version, actor=_actor(), reason=reason))
    if as_json:
        typer.echo(json.dumps(asdict(result)))
    elif result.changed:
        typer.echo(f"champion: v{result.previous} -> v{result.version}")
    else:
        typer.echo(f"v{result.version} is already champion")


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
