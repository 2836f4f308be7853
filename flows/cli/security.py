"""`ragops keys ...` and `ragops audit ...`: API keys for the query service, and the tamper-evident audit trail.

These commands run where ``RAGOPS_HOME`` (or ``RAGOPS_SECURITY__DB_URL``) is: whoever can run them holds the
platform's state, so they act as the local admin; every key creation and revocation is itself audited.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import JsonOpt, actor, app, build_settings, fail, guarded

if TYPE_CHECKING:
    from collections.abc import Mapping

    from flows.settings import Settings
    from rag.security.audit import DetailValue
    from rag.security.gate import Gate

keys_app = typer.Typer(
    help="API keys of the query service (sent as 'Authorization: Bearer <key>'). Roles: reader < operator < admin.",
    no_args_is_help=True,
)
audit_app = typer.Typer(
    help="The audit trail: hash-chained records of security-relevant actions.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")


def _gate(settings: Settings) -> Gate:
    from rag.security.gate import Gate

    return Gate(settings)


def audit_action(
    settings: Settings,
    action: str,
    *,
    target: str | None = None,
    outcome: str = "ok",
    detail: Mapping[str, DetailValue] | None = None,
) -> None:
    """Record a CLI action (promotion, rollback, ...) in the audit trail as the user running the command."""
    from rag.security.gate import record_action

    record_action(settings, action, actor=actor(), outcome=outcome, target=target, detail=detail)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option("--role", help="reader, operator or admin.")],
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="The tenant whose documents the key may see.", show_default=False)
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="A label (default key-<prefix>).", show_default=False)
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="An access group (repeatable).", show_default=False)
    ] = None,
    expires: Annotated[
        float | None, typer.Option("--expires", help="Days until the key stops working.", show_default=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it ONCE (only a keyed hash is stored; a lost key is revoked and replaced)."""
    settings = build_settings()
    gate = _gate(settings)
    try:
        issued = guarded(
            lambda: gate.keys.create(
                role=role, name=name, tenant=tenant, groups=tuple(group or ()), expires_days=expires, created_by=actor()
            )
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    gate.record(
        "keys.create",
        actor=actor(),
        target=issued.key.prefix,
        detail={"role": issued.key.role, "tenant": issued.key.tenant, "name": issued.key.name},
    )
    gate.close()
    if as_json:
        typer.echo(json.dumps({**issued.key.to_json(), "key": issued.secret}))
        return
    typer.echo(issued.secret)
    typer.echo(
        f"created {issued.key.role} key {issued.key.prefix} ({issued.key.name}); it is shown only now, store it safely",
        err=True,
    )


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """Every key with its prefix, role, tenant, expiry and state (never the secret)."""
    settings = build_settings()
    gate = _gate(settings)
    keys = guarded(gate.keys.list)
    gate.close()
    if as_json:
        typer.echo(json.dumps([k.to_json() for k in keys]))
        return
    if not keys:
        typer.echo("no API keys yet (ragops keys create --role reader)")
    for k in keys:
        typer.echo(
            f"{k.prefix}  {k.state():<7}  {k.role:<8}  tenant={k.tenant or '-'}  {k.name}  "
            f"created {_when(k.created_at)} by {k.created_by}  expires {_when(k.expires_at)}"
        )


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (from `ragops keys list`).")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: refused from then on (a running service stops accepting it within RAGOPS_SECURITY__KEY_CACHE_S)."""
    settings = build_settings()
    gate = _gate(settings)
    key = guarded(lambda: gate.keys.revoke(prefix))
    gate.record("keys.revoke", actor=actor(), target=key.prefix, detail={"role": key.role, "name": key.name})
    gate.close()
    if as_json:
        typer.echo(json.dumps(key.to_json()))
    else:
        typer.echo(f"revoked {key.prefix} ({key.name})")


@audit_app.command("verify")
def audit_verify(as_json: JsonOpt = False) -> None:
    """Check the whole hash chain; exits 1 naming the first broken record."""
    settings = build_settings()
    gate = _gate(settings)
    result = guarded(gate.audit.verify)
    gate.close()
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    elif result.ok:
        typer.echo(f"audit trail intact: {result.records} records, head {result.head_hash}")
    if not result.ok:
        raise fail(f"audit trail broken at record {result.broken_seq}: {result.reason}")


def _since(value: str) -> float:
    """``--since``: an ISO date/time, or a duration back from now (``30m``, ``12h``, ``7d``)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        hint = "use an ISO date/time (2026-01-31T12:00) or a duration (30m, 12h, 7d)"
        raise fail(f"--since {value!r}: {hint}", 2) from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@audit_app.command("show")
def audit_show(
    since: Annotated[
        str | None, typer.Option("--since", help="ISO date/time, or a duration back (30m, 12h, 7d).")
    ] = None,
    by: Annotated[str | None, typer.Option("--actor", help="Only this actor's records.", show_default=False)] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many records.", min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Audit records in chain order (auth failures, denials, keys, promotions, rollbacks, queries if enabled)."""
    settings = build_settings()
    start = _since(since) if since else None
    gate = _gate(settings)
    records = guarded(lambda: gate.audit.records(since=start, actor=by, limit=limit))
    gate.close()
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in records]))
        return
    for r in records:
        detail = " ".join(f"{k}={v}" for k, v in r.detail.items() if v not in (None, [], ""))
        where = r.target or "-"
        typer.echo(f"{r.seq:>6}  {_when(r.at)}  {r.actor:<16} {r.action:<14} {r.outcome:<8} {where}  {detail}")
