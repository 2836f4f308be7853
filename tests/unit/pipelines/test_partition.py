"""pipelines.partition against real files and the real unstructured, offline.

Every rejection reason is asserted verbatim (or by a precise pattern) because it is shown to users and stored in
the quarantine: a reason that silently changes is a user-facing regression.
"""

from __future__ import annotations

import codecs
import importlib
import os
import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines import partition
from pipelines.errors import ConfigError, DocumentRejected, PartitionError
from pipelines.partition import (
    SUPPORTED_EXTENSIONS,
    Partitioned,
    install_offline_nlp,
    partition_file,
)
from tests.fixtures.files import (
    SAMPLE_PARAGRAPHS,
    SAMPLE_TITLES,
    write_bad_inputs,
    write_sample_docs,
    write_textless_inputs,
)

MAX_BYTES = 20 * 1024 * 1024  # the IngestSettings default


def _squash(text: str) -> str:
    """Whitespace-insensitive form: PDF extraction re-wraps lines inside a paragraph."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sample_docs(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def textless(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_textless_inputs(tmp_path_factory.mktemp("textless"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Refuse (and record) every non-loopback connection or name lookup made while the test runs."""
    attempts: list[object] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def is_local(host: object) -> bool:
        return isinstance(host, str) and (host in {"localhost", "::1", ""} or host.startswith("127."))

    def connect(self: socket.socket, address: Any) -> None:
        if self.family == getattr(socket, "AF_UNIX", None) or is_local(address[0]):
            return real_connect(self, address)
        attempts.append(address)
        raise OSError(f"network access blocked in tests: {address!r}")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is None or is_local(host):
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(host)
        raise socket.gaierror(f"name lookup blocked in tests: {host!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts


# -- good files --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["txt", "md", "html", "pdf", "docx"])
def test_each_format_yields_title_and_all_paragraphs(samples: dict[str, Path], fmt: str) -> None:
    result = partition_file(samples[fmt], max_bytes=MAX_BYTES)

    assert isinstance(result, Partitioned)
    assert result.file_type == fmt
    assert result.title == SAMPLE_TITLES[fmt]
    assert result.text == result.text.strip()
    assert result.elements >= len(SAMPLE_PARAGRAPHS[fmt]) + 1
    squashed = _squash(result.text)
    assert squashed.startswith(SAMPLE_TITLES[fmt])
    for paragraph in SAMPLE_PARAGRAPHS[fmt]:
        assert _squash(paragraph) in squashed
    # Elements are joined by blank lines, so paragraph boundaries survive for the chunker.
    assert "\n\n" in result.text


def test_no_download_and_no_network_while_partitioning(
    samples: dict[str, Path], no_network: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    install_offline_nlp()  # before importing unstructured: the import itself pings home unless opted out
    from unstructured.nlp import tokenize

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unstructured tried to load or install the spaCy model")

    monkeypatch.setattr(tokenize, "_load_spacy_model", forbidden)
    monkeypatch.setattr(tokenize, "_install_spacy_model", forbidden)

    install_offline_nlp()
    install_offline_nlp()  # idempotent: the second call must not replace the loader again
    loader = tokenize._get_nlp
    nlp = loader()
    assert nlp.pipe_names == ["sentencizer"]
    assert nlp.lang == "en"
    assert loader() is nlp
    assert [s.text for s in nlp("One sentence here. Another one there.").sents] == [
        "One sentence here.",
        "Another one there.",
    ]

    for path in samples.values():
        partition_file(path, max_bytes=MAX_BYTES)

    assert tokenize._get_nlp is loader
    assert no_network == []
    for key in ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS", "UNSTRUCTURED_DISABLE_NOTICE"):
        assert os.environ[key] == "1"


def test_import_is_lazy_and_opts_out_of_telemetry() -> None:
    code = (
        "import os, sys, pipelines.partition\n"
        "heavy = {'unstructured', 'spacy', 'pdfminer', 'pypdf', 'docx', 'cv2', 'torch'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
        "print([os.environ.get(k) for k in ('DO_NOT_TRACK', 'SCARF_NO_ANALYTICS', 'UNSTRUCTURED_DISABLE_NOTICE')])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"DO_NOT_TRACK", "SCARF_NO_ANALYTICS"}}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, env=env)
    assert out.stdout.splitlines() == ["[]", "['1', '1', '1']"]


def test_supported_extensions() -> None:
    assert frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx"}) == SUPPORTED_EXTENSIONS


def test_extension_is_case_insensitive_and_aliases_work(tmp_path: Path, samples: dict[str, Path]) -> None:
    upper = tmp_path / "SOLAR.TXT"
    upper.write_bytes(samples["txt"].read_bytes())
    markdown = tmp_path / "rollout.markdown"
    markdown.write_bytes(samples["md"].read_bytes())
    htm = tmp_path / "coffee.htm"
    htm.write_bytes(samples["html"].read_bytes())

    assert partition_file(upper, max_bytes=MAX_BYTES).file_type == "txt"
    assert partition_file(markdown, max_bytes=MAX_BYTES).title == SAMPLE_TITLES["md"]
    assert partition_file(htm, max_bytes=MAX_BYTES).file_type == "html"


def test_symlink_to_a_good_file_is_followed(tmp_path: Path, samples: dict[str, Path]) -> None:
    link = tmp_path / "link.md"
    link.symlink_to(samples["md"])
    assert partition_file(link, max_bytes=MAX_BYTES).title == SAMPLE_TITLES["md"]


# -- titles ------------------------------------------------------------------------------------------------------


def test_html_title_tag_wins_over_first_heading(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<html><head><title>Tea &amp; Biscuits</title></head><body><h1>Welcome</h1>"
        "<p>Black tea goes well with shortbread. Green tea prefers something lighter.</p>"
        "<svg><title>decorative icon</title></svg></body></html>",
        encoding="utf-8",
    )
    assert partition_file(page, max_bytes=MAX_BYTES).title == "Tea & Biscuits"


def test_html_without_title_tag_uses_first_heading(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(
        "<html><body><h1>Garden Notes</h1><p>Tomatoes need full sun and regular watering.</p></body></html>",
        encoding="utf-8",
    )
    assert partition_file(page, max_bytes=MAX_BYTES).title == "Garden Notes"


def test_docx_without_core_title_uses_first_heading(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Travel Policy", level=1)
    document.add_paragraph("Employees book trains for trips under four hours. Flights need approval.")
    path = tmp_path / "policy.docx"
    document.save(str(path))

    result = partition_file(path, max_bytes=MAX_BYTES)
    assert result.title == "Travel Policy"
    assert "Flights need approval." in result.text


def test_pdf_placeholder_metadata_title_is_ignored(tmp_path: Path) -> None:
    from reportlab.pdfgen.canvas import Canvas

    path = tmp_path / "memo.pdf"
    canvas = Canvas(str(path))  # reportlab's default document title is "untitled"
    canvas.drawString(72, 760, "Parking Memo")
    canvas.drawString(72, 700, "The north car park closes for resurfacing on Monday. Use the south entrance.")
    canvas.showPage()
    canvas.save()

    result = partition_file(path, max_bytes=MAX_BYTES)
    assert result.title == "Parking Memo"
    assert "south entrance" in result.text


def test_txt_title_is_the_first_short_paragraph_or_none(tmp_path: Path) -> None:
    # Without a POS tagger (offline spaCy), a short first paragraph is classified as a Title; long prose is not.
    path = tmp_path / "plain.txt"
    path.write_text(
        "This paragraph is long enough and has enough words that the classifier treats it as narrative text, "
        "because it goes on for a while, mentions several things, and ends with a full stop.\n",
        encoding="utf-8",
    )
    result = partition_file(path, max_bytes=MAX_BYTES)
    assert result.title is None
    assert result.text.startswith("This paragraph is long enough")

    path.write_text("Short line here.\n\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert partition_file(path, max_bytes=MAX_BYTES).title == "Short line here."


# -- bad inputs --------------------------------------------------------------------------------------------------

BAD_INPUT_REASONS: dict[str, tuple[str, str]] = {
    "empty.txt": (r"^empty file \(0 bytes\)$", "partition"),
    "junk.txt": (r"^binary content in a \.txt file \(contains NUL bytes\)$", "partition"),
    "corrupt.pdf": (r"^corrupt PDF \(.+\)$", "partition"),
    "encrypted.pdf": (r"^encrypted PDF \(password protected\)$", "partition"),
    "latin1.txt": (
        r"^cannot decode text: utf-8 failed at byte offset 3 \(byte 0xe9: invalid continuation byte\)$",
        "partition",
    ),
    "notes.xyz": (
        r"^unsupported file type '\.xyz' \(supported: \.docx, \.htm, \.html, \.markdown, \.md, \.pdf, \.txt\)$",
        "partition",
    ),
    "big.txt": (
        r"^file too large: 52,428,800 bytes \(50\.0 MiB\) exceeds the limit of 20,971,520 bytes \(20\.0 MiB\)$",
        "partition",
    ),
    "dangling.md": (r"^broken symlink: target .*missing-target\.md does not exist$", "read"),
    "corrupt.docx": (r"^corrupt docx \(not a zip archive\)$", "partition"),
}


def test_bad_input_table_covers_every_fixture(bad: dict[str, Path]) -> None:
    assert set(bad) == set(BAD_INPUT_REASONS)


@pytest.mark.parametrize("name", sorted(BAD_INPUT_REASONS))
def test_bad_input_is_rejected_with_a_clear_reason(bad: dict[str, Path], name: str) -> None:
    pattern, stage = BAD_INPUT_REASONS[name]
    with pytest.raises(PartitionError, match=pattern) as info:
        partition_file(bad[name], max_bytes=MAX_BYTES)
    assert isinstance(info.value, DocumentRejected)
    assert info.value.stage == stage
    assert info.value.reason == str(info.value)
    assert "\n" not in info.value.reason


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("whitespace.txt", r"^no extractable text \(only whitespace\)$"),
        ("blank.md", r"^no extractable text$"),
        ("blank.html", r"^no extractable text$"),
        ("scan.pdf", r"^no extractable text \(the PDF has no text layer\)$"),
        ("blank.docx", r"^no extractable text$"),
    ],
)
def test_file_without_text_is_rejected(textless: dict[str, Path], name: str, pattern: str) -> None:
    with pytest.raises(PartitionError, match=pattern):
        partition_file(textless[name], max_bytes=MAX_BYTES)


def test_oversized_file_is_rejected_without_reading_it(bad: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_read(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("the file was read before the size check")

    monkeypatch.setattr(partition, "_read_bytes", must_not_read)
    with pytest.raises(PartitionError, match="^file too large"):
        partition_file(bad["big.txt"], max_bytes=MAX_BYTES)


def test_size_limit_is_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "exact.txt"
    path.write_text("Exactly at the limit is still accepted.", encoding="utf-8")
    size = path.stat().st_size
    assert partition_file(path, max_bytes=size).text == "Exactly at the limit is still accepted."
    with pytest.raises(PartitionError, match=rf"^file too large: {size} bytes .* limit of {size - 1} bytes"):
        partition_file(path, max_bytes=size - 1)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda d: d / "missing.txt", r"^file not found$"),
        (lambda d: d, r"^is a directory, not a file$"),
        (lambda d: d / "plain.txt" / "child.txt", r"^file not found \(a parent in the path is not a directory\)$"),
    ],
    ids=["missing", "directory", "parent-is-file"],
)
def test_unreadable_paths_are_read_stage_rejections(tmp_path: Path, make: Any, pattern: str) -> None:
    (tmp_path / "plain.txt").write_text("Some text.", encoding="utf-8")
    with pytest.raises(PartitionError, match=pattern) as info:
        partition_file(make(tmp_path), max_bytes=MAX_BYTES)
    assert info.value.stage == "read"


def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(PartitionError, match=r"^not a regular file \(device, FIFO or socket\)$"):
        partition_file(fifo, max_bytes=MAX_BYTES)


def test_missing_extension_is_named(tmp_path: Path) -> None:
    path = tmp_path / "README"
    path.write_text("Read me first.", encoding="utf-8")
    with pytest.raises(PartitionError, match=r"^unsupported file type \(no extension\) \(supported: \.docx"):
        partition_file(path, max_bytes=MAX_BYTES)


def test_binary_without_nul_bytes_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "noise.md"
    path.write_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8, 14, 15, 16, 65]) * 200)
    with pytest.raises(PartitionError, match=r"^binary content in a \.md file \(\d+% control bytes\)$"):
        partition_file(path, max_bytes=MAX_BYTES)


def test_binary_is_detected_after_a_permissive_decode(tmp_path: Path) -> None:
    # latin-1 decodes anything; bytes 0x80-0x9f become C1 control characters, which must still read as binary.
    path = tmp_path / "c1.txt"
    path.write_bytes(bytes(range(0x80, 0xA0)) * 100)
    with pytest.raises(PartitionError, match=r"^binary content in a \.txt file \(\d+% control characters\)$"):
        partition_file(path, max_bytes=MAX_BYTES, encodings=("latin-1",))


# -- encodings ---------------------------------------------------------------------------------------------------


def test_configured_fallback_encoding_decodes_latin1(bad: dict[str, Path]) -> None:
    result = partition_file(bad["latin1.txt"], max_bytes=MAX_BYTES, encodings=("utf-8", "latin-1"))
    assert "café crème brûlée." in result.text


def test_every_failed_encoding_is_named(bad: dict[str, Path]) -> None:
    with pytest.raises(
        PartitionError,
        match=(
            r"^cannot decode text: utf-8 failed at byte offset 3 \(byte 0xe9: invalid continuation byte\); "
            r"ascii failed at byte offset 3 \(byte 0xe9: ordinal not in range\(128\)\)$"
        ),
    ):
        partition_file(bad["latin1.txt"], max_bytes=MAX_BYTES, encodings=("utf-8", "ascii"))


def test_utf8_bom_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(codecs.BOM_UTF8 + b"Bom Title\n\nText after a byte order mark.")
    result = partition_file(path, max_bytes=MAX_BYTES)
    assert result.text.startswith("Bom Title")
    assert "\ufeff" not in result.text


def test_utf16_needs_to_be_configured(tmp_path: Path) -> None:
    path = tmp_path / "wide.txt"
    path.write_text("Wide Title\n\nThis text was saved as UTF-16 by an old editor.", encoding="utf-16")
    with pytest.raises(
        PartitionError, match=r"^cannot decode text: the file is UTF-16 \(byte order mark\) but the configured"
    ):
        partition_file(path, max_bytes=MAX_BYTES)
    result = partition_file(path, max_bytes=MAX_BYTES, encodings=("utf-8", "utf-16"))
    assert "saved as UTF-16" in result.text


def test_unusable_configuration_is_a_config_error(samples: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="unknown text encoding 'no-such-codec'"):
        partition_file(samples["txt"], max_bytes=MAX_BYTES, encodings=("no-such-codec",))
    with pytest.raises(ConfigError, match="unknown text encoding 'base64'"):
        partition_file(samples["txt"], max_bytes=MAX_BYTES, encodings=("base64",))
    with pytest.raises(ConfigError, match="max_bytes"):
        partition_file(samples["txt"], max_bytes=0)
    with pytest.raises(ConfigError, match="encodings"):
        partition_file(samples["txt"], max_bytes=MAX_BYTES, encodings=())


# -- PDF and DOCX structure --------------------------------------------------------------------------------------


def test_truncated_pdf_is_corrupt(tmp_path: Path, samples: dict[str, Path]) -> None:
    data = samples["pdf"].read_bytes()
    path = tmp_path / "truncated.pdf"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PartitionError, match=r"^corrupt PDF \(.+\)$"):
        partition_file(path, max_bytes=MAX_BYTES)


def test_pdf_without_header_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "page.pdf"
    path.write_text("<html><body>Saved from a browser with the wrong extension.</body></html>", encoding="utf-8")
    with pytest.raises(PartitionError, match=r"^corrupt PDF \(no %PDF header\)$"):
        partition_file(path, max_bytes=MAX_BYTES)


def test_pdf_with_only_an_owner_password_is_readable(tmp_path: Path) -> None:
    from reportlab.lib.pdfencrypt import StandardEncryption
    from reportlab.pdfgen.canvas import Canvas

    path = tmp_path / "restricted.pdf"
    canvas = Canvas(str(path), encrypt=StandardEncryption("", ownerPassword="owner", canPrint=0))
    canvas.drawString(72, 700, "Printing is restricted but owls still hunt at night.")
    canvas.showPage()
    canvas.save()

    assert "owls still hunt at night" in partition_file(path, max_bytes=MAX_BYTES).text


def test_zip_that_is_not_a_word_document(tmp_path: Path) -> None:
    path = tmp_path / "archive.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "Just a zip file.")
    with pytest.raises(
        PartitionError, match=r"^corrupt docx \(zip archive without word/document\.xml, not a Word document\)$"
    ):
        partition_file(path, max_bytes=MAX_BYTES)


def test_docx_zip_bomb_is_refused(tmp_path: Path, samples: dict[str, Path]) -> None:
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(samples["docx"]) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr("word/media/padding.bin", b"\0" * 5_000_000)
    with pytest.raises(PartitionError, match=r"^docx expands to .* more than 50x the size limit \(zip bomb\?\)$"):
        partition_file(path, max_bytes=path.stat().st_size)


# -- unexpected failures inside unstructured ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "module", "function"),
    [
        ("txt", "unstructured.partition.text", "partition_text"),
        ("html", "unstructured.partition.html", "partition_html"),
        ("pdf", "unstructured.partition.pdf", "partition_pdf"),
        ("docx", "unstructured.partition.docx", "partition_docx"),
    ],
)
def test_unexpected_unstructured_error_becomes_partition_error(
    samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch, fmt: str, module: str, function: str
) -> None:
    def explode(*args: object, **kwargs: object) -> list[object]:
        raise RuntimeError("parser exploded\n  on line 3")

    install_offline_nlp()
    monkeypatch.setattr(importlib.import_module(module), function, explode)
    with pytest.raises(PartitionError, match=rf"^could not partition {fmt}: parser exploded on line 3$") as info:
        partition_file(samples[fmt], max_bytes=MAX_BYTES)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_long_exception_messages_are_shortened() -> None:
    reason = partition._one_line(ValueError("x" * 1000))
    assert len(reason) == 300
    assert reason.endswith("...")
    assert re.fullmatch(r"ValueError", partition._one_line(ValueError()))
