"""`ragops keys` and `ragops audit` in process (typer's runner, the real SQLite database under RAGOPS_HOME), and
`ragops serve` refusing to expose an unauthenticated service."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from flows.settings import Settings


@pytest.fixture
def runner(settings: Settings) -> CliRunner:
    return CliRunner()


def test_keys_lifecycle_is_audited_and_the_chain_verifies(runner: CliRunner, settings: Settings) -> None:
    from flows.cli import app

    created = runner.invoke(app, ["keys", "create", "--role", "reader", "--tenant", "acme", "--name", "alice"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("rgo_") and "shown only now" in created.stderr
    listed = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert [(k["name"], k["role"], k["tenant"], k["state"]) for k in listed] == [("alice", "reader", "acme", "active")]
    assert key not in json.dumps(listed)
    prefix = listed[0]["prefix"]
    assert runner.invoke(app, ["keys", "revoke", prefix]).exit_code == 0
    assert json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)[0]["state"] == "revoked"
    unknown = runner.invoke(app, ["keys", "revoke", "ffffffff"])
    assert unknown.exit_code == 1 and "ffffffff" in unknown.stderr
    bad_role = runner.invoke(app, ["keys", "create", "--role", "root"])
    assert bad_role.exit_code == 2 and "unknown role" in bad_role.stderr

    shown = json.loads(runner.invoke(app, ["audit", "show", "--json", "--since", "1h"]).stdout)
    assert [(r["action"], r["target"]) for r in shown] == [("keys.create", prefix), ("keys.revoke", prefix)]
    assert key not in json.dumps(shown)
    verified = runner.invoke(app, ["audit", "verify", "--json"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"] is True


def test_audit_verify_fails_naming_the_first_broken_record(runner: CliRunner, settings: Settings) -> None:
    from flows.cli import app

    for role in ("reader", "operator", "admin"):
        assert runner.invoke(app, ["keys", "create", "--role", role]).exit_code == 0
    with sqlite3.connect(settings.home / "security.db") as db:
        db.execute("UPDATE audit_log SET body = replace(body, 'operator', 'admin') WHERE seq = 2")
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1 and "broken at record 2" in broken.stderr, broken.output
    as_json = runner.invoke(app, ["audit", "verify", "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["broken_seq"] == 2


def test_serve_refuses_a_public_address_with_auth_off(
    runner: CliRunner, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import app

    monkeypatch.setenv("RAGOPS_SECURITY__AUTH", "false")
    refused = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "refusing to serve on 0.0.0.0" in refused.stderr, refused.output
