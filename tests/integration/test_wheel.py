"""A plain `pip install` of the wheel (no extras) runs every command: nothing the code imports comes only from the
dev extra or by accident from another package's dependencies.

Builds the wheel from a copy of the sources (as the Dockerfile copies them), installs it into a fresh venv, and runs
`ragops demo`, `ragops ingest --json` and `ragops serve` from that venv, with no PYTHONPATH pointing back at the
repository.

The venv gets exactly the closure of the wheel's declared (non-dev) requirements, extras followed, and nothing else:
each of those distributions is linked in from the test run's own environment (which `make install` resolved with pip
from the same pyproject), rather than unpacked again by pip. That is the property under test (an import that only a
dev tool or an undeclared package satisfies fails here) at a fraction of the time: a full pip install of the
dependencies took over two minutes of the suite's budget. The ONNX export of the embedder comes from the session's
shared cache, as in every other test. `pip check` in the new venv then proves the closure complete
and consistent, and the wheel itself is installed by pip (`--no-deps`), entry points included.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipelines.env import OFFLINE_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "pipelines", "rag", "evaluation", "flows")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    logger.info("%.1f s: %s", time.monotonic() - started, " ".join(argv[-3:]))  # where the minutes go
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


# The Makefile and the Dockerfile remove torchvision after installing (no CPU build matches torch 2.13 and it breaks
# transformers at import); a requirement on it is the one `pip check` may report.
REMOVED = frozenset({"torchvision"})


def declared_closure(wheel: Path) -> set[str]:
    """Every distribution the wheel's non-dev requirements pull in, extras followed (canonical names)."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        (name,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode("utf-8")
    pending = [
        (Requirement(line.split(":", 1)[1].strip()), "")
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    seen: dict[str, set[str]] = {}
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        key = canonicalize_name(requirement.name)
        if key in REMOVED:
            continue
        extras = {canonicalize_name(e) for e in requirement.extras}
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        for nested in metadata.distribution(key).requires or []:
            for wanted in ("", *extras):
                pending.append((Requirement(nested), wanted))
    return set(seen)


def link_distributions(names: set[str], site: Path) -> None:
    """Link each named distribution's installed files into ``site``: a top-level directory owned by one distribution
    alone is linked whole, a shared one (namespace packages such as ``google``) file by file."""
    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        owner = canonicalize_name(dist.metadata["Name"])
        for top in {file.parts[0] for file in dist.files or []}:
            owners.setdefault(top, set()).add(owner)
    for name in names:
        dist = metadata.distribution(name)
        assert dist.files, f"{name} has no RECORD: cannot tell its files"
        root = Path(str(dist.locate_file("")))
        for file in dist.files:
            top = file.parts[0]
            if top == "..":  # scripts in bin/: the commands under test are the wheel's own
                continue
            whole = file.parts[0] if len(file.parts) > 1 and owners[top] == {name} else str(file)
            target = site / whole
            if target.is_symlink() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(root / whole)


def test_the_wheel_without_extras_runs_demo_ingest_and_serve(tmp_path: Path, shared_cache: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, src / name)
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("RAGOPS_")
    }
    env.update(OFFLINE_ENV)
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        env,
        tmp_path,
    )
    (wheel,) = wheels.glob("ragops-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, tmp_path)
    python = str(venv / "bin" / "python")
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    closure = declared_closure(wheel)
    assert {"torch", "sentence-transformers", "qdrant-edge-py", "prefect", "mlflow"} <= closure
    assert not {"pytest", "ruff", "mypy", "playwright"} & closure  # the dev extra stays out
    started = time.monotonic()
    link_distributions(closure, site)
    logger.info("%.1f s: linked %d distributions", time.monotonic() - started, len(closure))
    pip = [sys.executable, "-m", "pip", "--python", python]
    _run([*pip, "install", "--quiet", "--no-deps", "--no-compile", str(wheel)], env, tmp_path)
    started = time.monotonic()
    checked = subprocess.run([*pip, "check"], env=env, capture_output=True, text=True, timeout=120)
    logger.info("%.1f s: pip check", time.monotonic() - started)
    broken = [line for line in checked.stdout.splitlines() if not any(name in line for name in REMOVED)]
    assert not broken, checked.stdout

    ragops = str(venv / "bin" / "ragops")
    # The session's derived-data cache (the embedder's ONNX export): converting it again costs about 45 s here, and
    # the conversion uses only declared packages (torch, onnx, onnxruntime; the dev extra holds tools alone).
    env.update({"RAGOPS_HOME": str(tmp_path / "home"), "RAGOPS_CACHE": str(shared_cache)})
    corpus = tmp_path / "corpus"
    _run([ragops, "demo", str(corpus)], env, tmp_path)
    assert {p.suffix for p in corpus.rglob("*.*")} >= {".md", ".html", ".txt", ".pdf", ".docx"}
    report = json.loads(_run([ragops, "ingest", str(corpus), "--json"], env, tmp_path))
    assert report["documents_new"] >= 30 and report["documents_failed"] == 0 and report["points_total"] > 0

    key = json.loads(_run([ragops, "keys", "create", "--role", "reader", "--json"], env, tmp_path))["key"]

    port = _free_port()
    serve = subprocess.Popen(
        [ragops, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        deadline = started + 120
        while True:
            assert serve.poll() is None, serve.stdout.read() if serve.stdout else ""
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ragops serve not healthy in 120 s"
            time.sleep(0.5)
        logger.info("%.1f s: ragops serve healthy", time.monotonic() - started)
        question = {"question": "How long is the NR-200 warranty?"}
        assert httpx.post(f"{base}/v1/query", json=question, timeout=60).status_code == 401  # auth is on by default
        answer = httpx.post(f"{base}/v1/query", json=question, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        # No stack is promoted in this venv: the service must say so clearly (503 with a message), never crash.
        assert answer.status_code in (200, 503), answer.text
        assert answer.headers["content-type"].startswith("application/json") and answer.json()
    finally:
        serve.terminate()
        serve.wait(30)
