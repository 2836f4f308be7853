"""Test-wide guards: no network beyond loopback, every test in its own RAGOPS_HOME, shared rebuildable cache."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.settings import Settings
from pipelines.embed import Embedder
from pipelines.env import OFFLINE_ENV
from pipelines.settings import EmbedderSettings

# Real Redis and PostgreSQL for every test that asks: redis_url, postgres_url (see tests/fixtures/datastores.py);
# a loopback webhook receiver: receiver (tests/fixtures/webhook.py).
pytest_plugins = ["tests.fixtures.datastores", "tests.fixtures.webhook"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCIFACT = SHARED / "datasets" / "scifact"

for _key, _value in OFFLINE_ENV.items():
    os.environ[_key] = _value


class NetworkRefused(OSError):
    """A test (or a library it called) tried to leave the machine."""


def _is_loopback(address: object) -> bool:
    if not (isinstance(address, tuple) and address):
        return isinstance(address, str | bytes)  # an AF_UNIX path stays on the machine
    host = str(address[0])
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise NetworkRefused(f"test tried to connect to {address!r}: only loopback is allowed")
    _real_connect(self, address)  # type: ignore[arg-type]


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise NetworkRefused(f"test tried to connect to {address!r}: only loopback is allowed")
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


@pytest.fixture(autouse=True, scope="session")
def refuse_non_loopback() -> Iterator[None]:
    """Any socket that tries to leave loopback fails the test that opened it."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (ONNX export, weight hash) for the whole session: it is derived data, identical for every test."""
    return tmp_path_factory.mktemp("ragops-cache")


@pytest.fixture(scope="session")
def embedder(shared_cache: Path) -> Embedder:
    """The real MiniLM embedder (default backend), loaded once for the session."""
    model = Embedder(EmbedderSettings(), cache_dir=shared_cache)
    model.warm_up()
    return model


@pytest.fixture
def settings(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a fresh RAGOPS_HOME under the test's tmp_path and no RAGOPS_* leaking in from outside."""
    for key in list(os.environ):
        if key.startswith("RAGOPS_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("RAGOPS_HOME", str(home))
    monkeypatch.setenv("RAGOPS_CACHE", str(shared_cache))
    built = Settings()
    built.ensure_dirs()
    return built


@pytest.fixture
def scifact() -> Path:
    """The SciFact BEIR folder from ../shared; skipped (with the reason) on a clone without it."""
    if not (SCIFACT / "corpus.jsonl.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have ../shared beside the repo; {SCIFACT} is missing")
        pytest.skip(f"{SCIFACT} not found: a fresh clone has no ../shared datasets")
    return SCIFACT
