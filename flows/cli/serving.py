"""`ragops serve` and `ragops query`: the query service and asking it (or the champion in process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import (
    JsonOpt,
    VerboseOpt,
    app,
    build_settings,
    fail,
    guarded,
)
from flows.settings import Settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Interface (default RAGOPS_SERVICE__HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default RAGOPS_SERVICE__PORT).")] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, help="Worker processes; with more than one, /metrics merges every worker's samples."
        ),
    ] = 1,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="TLS certificate (PEM): serve HTTPS.", show_default=False)
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", help="TLS private key (PEM) of --ssl-certfile.", show_default=False)
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the champion stack over HTTP: /v1/query, /v1/chat/completions (OpenAI), /healthz, /readyz, /v1/stack.

    Follows the 'champion' alias and the published index, switching atomically when either moves. Every route but
    the probes, the playground page and the docs needs an API key (`ragops keys create`).
    """
    import uvicorn

    from rag.security.gate import check_exposure
    from rag.service.app import create_app

    settings = build_settings(verbose)
    registry_fail_fast()
    bind_host = host or settings.service.host
    bind_port = port or settings.service.port
    try:
        check_exposure(settings, bind_host)
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise fail("--ssl-certfile and --ssl-keyfile go together", 2)
    scheme = "https" if ssl_certfile else "http"
    typer.echo(f"serving on {scheme}://{bind_host}:{bind_port} (docs at /docs)", err=True)
    log_level = "info" if verbose else "warning"
    # uvicorn formats each access-log line's arguments before the logger drops it: below info, do not ask for them
    access_log = verbose
    certfile = str(ssl_certfile) if ssl_certfile else None
    keyfile = str(ssl_keyfile) if ssl_keyfile else None
    if workers == 1:
        uvicorn.run(
            create_app(settings),
            host=bind_host,
            port=bind_port,
            log_level=log_level,
            access_log=access_log,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        return
    import os

    from rag.monitoring.metrics import prepare_multiprocess_dir

    # Each worker rebuilds its settings from the environment and must find the same home and metrics folder.
    os.environ["RAGOPS_HOME"] = str(settings.home)
    prepare_multiprocess_dir(settings.home / "metrics-multiproc")
    uvicorn.run(
        "rag.service.app:app_from_environment",
        factory=True,
        workers=workers,
        host=bind_host,
        port=bind_port,
        log_level=log_level,
        access_log=access_log,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )


def registry_fail_fast() -> None:
    """The service polls the registry in the background and keeps serving when it is down; MLflow's client would
    retry a refused connection for minutes (7 retries with backoff), hiding the outage from ``degraded``. One retry
    and a 5 s timeout, unless the user set MLflow's own variables (workers inherit them)."""
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@app.command()
def query(
    question: Annotated[str, typer.Argument(help="The question.")],
    url: Annotated[
        str | None, typer.Option("--url", help="A running service; default: answer in this process.")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Chunks to retrieve.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's documents.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="RAGOPS_API_KEY", help="Key for --url (default $RAGOPS_API_KEY).", show_default=False
        ),
    ] = None,
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
                headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach {url}: {exc}") from exc
        data = response.json()
        if response.status_code != 200:
            raise fail(data.get("error", {}).get("message", response.text))
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
