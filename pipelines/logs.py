"""How every ragops process logs: one line per event with its fields, for people or as JSON for machines.

The code logs events with their facts in ``extra`` (``logger.warning("quarantined", extra={"source": ...,
"reason": ...})``). Python's stock formatters drop ``extra``, which left ``WARNING quarantined`` four times with no
file name. The two formatters here print every extra field: :class:`KeyValueFormatter` as ``event key=value ...``
(quoted when needed) for a terminal or ``ragops.log``, :class:`JsonFormatter` as one JSON object per line for a log
shipper.

Third-party libraries are lowered to where their messages help (:data:`THIRD_PARTY_LEVELS`): pypdf's repair
warnings ("EOF marker not found", no file named) are dropped because the quarantine record of a PDF that really
fails names the file and carries the error; MLflow's table-creation (Alembic) and signature messages, onnxruntime's
quantization advice (logged on the *root* logger, so a filter catches it by origin) and transformers' weight-loading
progress bar are silenced.

Called once by each entry point (the CLI, a flow, the service), never at import::

    configure_logging(settings, verbose=False, json=False)
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.settings import PipelineSettings

LOG_FILE = "ragops.log"

THIRD_PARTY_LEVELS: dict[str, int] = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "urllib3": logging.WARNING,
    "filelock": logging.WARNING,
    "asyncio": logging.WARNING,
    "alembic": logging.WARNING,  # "Context impl SQLiteImpl", "Running upgrade ..." for every MLflow/store open
    "great_expectations": logging.WARNING,
    "unstructured": logging.WARNING,
    "pdfminer": logging.ERROR,
    "pypdf": logging.ERROR,  # repair notes without a file name; failures reach the quarantine record instead
    "mlflow": logging.WARNING,
    "mlflow.store.db.utils": logging.WARNING,  # "Creating initial MLflow database tables..."
    "mlflow.models.model": logging.ERROR,  # "Model logged without a signature and input example"
    "mlflow.models.signature": logging.ERROR,
    "onnxruntime": logging.ERROR,
    "transformers": logging.ERROR,
    "sentence_transformers": logging.WARNING,
    "huggingface_hub": logging.WARNING,
}
"""Logger -> the lowest level that reaches the handlers."""

ROOT_NOISE_ORIGINS = (f"onnxruntime{os.sep}quantization{os.sep}",)
"""Source folders of libraries that log on the root logger; their records below ERROR are dropped."""

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
"""Attributes every LogRecord has; anything else on a record came from ``extra``."""


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of ``record``, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _plain(value: Any) -> str:
    text = value if isinstance(value, str) else jsonlib.dumps(value, default=str, ensure_ascii=False)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return jsonlib.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``<the format's line> key=value key="a value"``: the stock format plus every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the event line
        pairs = " ".join(f"{k}={_plain(v)}" for k, v in fields.items())
        return f"{head} {pairs}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC ISO 8601), ``level``, ``logger``, ``event``, the extra fields, and
    ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            data[key if key not in data else f"extra_{key}"] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return jsonlib.dumps(data, default=str, ensure_ascii=False)


class ThirdPartyNoise(logging.Filter):
    """Drops records below ERROR that libraries log on the root logger (see :data:`ROOT_NOISE_ORIGINS`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.name != "root":
            return True
        return not any(origin in record.pathname for origin in ROOT_NOISE_ORIGINS)


def ragops_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers :func:`configure_logging` installed on ``logger`` (they carry a :class:`ThirdPartyNoise`)."""
    return [h for h in logger.handlers if any(isinstance(f, ThirdPartyNoise) for f in h.filters)]


def lower_third_party_noise() -> None:
    """Apply :data:`THIRD_PARTY_LEVELS` and turn off the transformers/huggingface_hub progress bars."""
    for name, level in THIRD_PARTY_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    # Read by huggingface_hub (and so transformers) when imported; already-imported libraries are told directly.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def configure_logging(settings: PipelineSettings, *, verbose: bool = False, json: bool = False) -> None:
    """Console on stderr (WARNING, or INFO when ``verbose``) and ``<home>/logs/ragops.log`` (INFO).

    ``json``: both write one JSON object per line; otherwise the console is Rich-rendered ``event key=value`` and
    the file plain ``time level logger event key=value``. Idempotent: a second call changes nothing.
    """
    root = logging.getLogger()
    if ragops_handlers(root):
        return
    root.setLevel(logging.INFO)
    console: logging.Handler
    if json:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        console = RichHandler(console=Console(stderr=True), show_path=False)
        console.setFormatter(KeyValueFormatter("%(message)s"))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(settings.logs_dir / LOG_FILE, encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(
        JsonFormatter() if json else KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    for handler in (console, file_handler):
        handler.addFilter(ThirdPartyNoise())  # also what marks the handler as ours
        root.addHandler(handler)
    lower_third_party_noise()
