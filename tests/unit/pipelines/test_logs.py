"""Log lines say what happened to what: extra fields are printed, JSON is one object per line, noise is lowered."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.settings import Settings
from pipelines.logs import (
    JsonFormatter,
    KeyValueFormatter,
    ThirdPartyNoise,
    configure_logging,
    lower_third_party_noise,
    ragops_handlers,
)


def record(msg: str = "quarantined %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("pipelines.ingest", logging.WARNING, __file__, 1, msg, args or ("a b.pdf",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@pytest.fixture
def clean_root() -> Iterator[logging.Logger]:
    """The root logger without our handlers before and after (configure_logging is process-wide)."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in ("pypdf", "mlflow.models.model", "alembic")}
    root.handlers = [h for h in root.handlers if h not in ragops_handlers(root)]
    yield root
    for handler in ragops_handlers(root):
        handler.close()
    root.handlers, root.level = saved_handlers, saved_level
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def test_key_value_lines_carry_the_extra_fields() -> None:
    line = KeyValueFormatter("%(levelname)s %(message)s").format(
        record(source="docs/a b.pdf", stage="partition", reason="EOF marker not found", pages=3)
    )
    assert line == (
        'WARNING quarantined a b.pdf source="docs/a b.pdf" stage=partition reason="EOF marker not found" pages=3'
    )


def test_a_traceback_stays_below_the_event_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    rec.doc_id = "d1"
    first, *rest = KeyValueFormatter("%(message)s").format(rec).splitlines()
    assert first == "failed doc_id=d1"
    assert rest[-1] == "ValueError: boom"


def test_json_is_one_object_per_line_with_the_fields() -> None:
    line = JsonFormatter().format(record(source="docs/a.pdf", reason='bad "xref"\nhere', levelname_x=1))
    assert "\n" not in line
    data = json.loads(line)
    assert data["event"] == "quarantined a b.pdf"
    assert (data["level"], data["logger"], data["source"], data["reason"]) == (
        "WARNING",
        "pipelines.ingest",
        "docs/a.pdf",
        'bad "xref"\nhere',
    )
    assert data["ts"].endswith("+00:00")


def test_root_logger_advice_from_onnxruntime_quantization_is_dropped() -> None:
    advice = logging.LogRecord(
        "root", logging.WARNING, "/x/site-packages/onnxruntime/quantization/quantize.py", 733,
        "Please consider to run pre-processing before quantization.", None, None,
    )  # fmt: skip
    ours = logging.LogRecord("root", logging.WARNING, "/x/pipelines/embed.py", 1, "something real", None, None)
    noise = ThirdPartyNoise()
    assert noise.filter(advice) is False
    assert noise.filter(ours) is True
    advice.levelno = logging.ERROR
    assert noise.filter(advice) is True  # an error is never hidden


def test_third_party_loggers_are_lowered(clean_root: logging.Logger) -> None:
    lower_third_party_noise()
    assert not logging.getLogger("pypdf._reader").isEnabledFor(logging.WARNING)
    assert logging.getLogger("pypdf._reader").isEnabledFor(logging.ERROR)
    assert not logging.getLogger("mlflow.models.model").isEnabledFor(logging.WARNING)
    assert not logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)


@pytest.mark.parametrize("as_json", [False, True])
def test_configure_logging_writes_the_fields_to_the_log_file(
    as_json: bool, tmp_path: Path, clean_root: logging.Logger
) -> None:
    settings = Settings(home=tmp_path / "home")
    configure_logging(settings, verbose=False, json=as_json)
    configure_logging(settings, verbose=True, json=as_json)  # idempotent: no second pair of handlers
    ours = ragops_handlers(clean_root)
    assert len(ours) == 2
    logging.getLogger("pipelines.ingest").warning(
        "quarantined %s", "notes.pdf", extra={"source": "notes.pdf", "reason": "EOF marker not found"}
    )
    logging.getLogger("pypdf._reader").warning("EOF marker not found")
    for handler in ours:
        handler.flush()
    text = (settings.logs_dir / "ragops.log").read_text()
    assert "EOF marker not found" in text  # as the quarantine reason ...
    assert text.count("EOF marker not found") == 1  # ... and not again from pypdf without a file name
    line = text.strip().splitlines()[-1]
    if as_json:
        assert json.loads(line)["source"] == "notes.pdf"
    else:
        assert line.endswith('quarantined notes.pdf source=notes.pdf reason="EOF marker not found"')


def test_the_json_console_goes_to_stderr(
    tmp_path: Path, clean_root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(Settings(home=tmp_path / "home"), json=True)
    logging.getLogger("rag.store").warning("queue full", extra={"dropped": 3})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err.strip().splitlines()[-1])["dropped"] == 3


def test_a_stream_handler_is_enough_for_key_value() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter("%(message)s"))
    log = logging.getLogger("test.logs.plain")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("published index version", extra={"collection": "docs", "version": 4})
    finally:
        log.removeHandler(handler)
    assert stream.getvalue() == "published index version collection=docs version=4\n"
