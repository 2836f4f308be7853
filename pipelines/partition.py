"""Turn one file into plain text with unstructured, or say in one human sentence why it cannot be done.

Why this module exists instead of a bare ``unstructured.partition.auto.partition`` call:

* **Offline.** unstructured downloads a spaCy model on the first partition of any file type and pings a telemetry
  host on import. :func:`install_offline_nlp` swaps the model loader for a blank English pipeline with a sentencizer
  and sets the opt-out variables before unstructured is first imported.
* **Every bad input gets a reason.** unstructured silently returns no elements for corrupt, truncated and encrypted
  PDFs, decodes text with its own guesses, and raises assorted exceptions for everything else. Quarantine records
  need a readable reason, so the checks that matter (path, size, type, binary content, encoding, PDF encryption,
  DOCX structure) run here first and anything unstructured still raises becomes a :class:`PartitionError`.
* **Our encoding policy.** Text-like files are decoded here, strictly, with ``ingest.text_encodings``; unstructured
  only ever sees ``str`` for them, so it cannot fall back to a charset guess that turns bytes into mojibake.
* **Fast import.** unstructured, spaCy, pdfminer and OpenCV take seconds to import; they are imported inside the
  functions that need them, so importing this module (the CLI, the service) stays cheap.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import stat
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ConfigError, PartitionError

if TYPE_CHECKING:
    from spacy.language import Language

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx"})

_FILE_TYPES: dict[str, str] = {
    ".txt": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
_TEXT_TYPES = frozenset({"txt", "md", "html"})

# unstructured reads these on import (library-load ping) and on every partition call (runtime telemetry, notice).
_NO_TELEMETRY_ENV: dict[str, str] = {"DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "1", "UNSTRUCTURED_DISABLE_NOTICE": "1"}

# C0 control characters other than whitespace (\t \n \v \f \r) and ESC (ANSI colours in logs are still text).
_C0_CONTROL_BYTES = bytes(b for b in range(0x20) if b not in b"\t\n\x0b\x0c\r\x1b") + b"\x7f"
_NON_CONTROL_BYTES = bytes(b for b in range(256) if b not in _C0_CONTROL_BYTES)
# After decoding: the same C0 set plus C1 controls, which is what binary bytes become under latin-1 and friends.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")
# Above this share of control characters a "text" file is binary; real text, even a terminal log, stays far below.
_MAX_CONTROL_SHARE = 0.05

# A declared title that says nothing; fall back to the first heading instead.
_PLACEHOLDER_TITLES = frozenset({"untitled", "(untitled)", "unspecified", "(unspecified)", "untitled document"})

# A DOCX is a zip; refuse archives that would inflate far beyond the byte limit (zip bombs) before parsing them.
_MAX_DOCX_EXPANSION = 50

_nlp_lock = threading.Lock()


def _opt_out_of_unstructured_telemetry() -> None:
    """Set unstructured's telemetry and notice opt-outs in this process.

    ``import unstructured`` itself sends a synchronous ping (10 s timeout) unless they are set, so this also runs
    when this module is imported, not only before partitioning: code that imports unstructured after importing
    this module stays quiet.
    """
    for key, value in _NO_TELEMETRY_ENV.items():
        os.environ[key] = value


_opt_out_of_unstructured_telemetry()


@dataclass(frozen=True)
class Partitioned:
    """The text of one file and what unstructured saw in it.

    ``title`` prefers a title the author declared (HTML ``<title>``, DOCX core properties, PDF document info) over
    the first element unstructured classified as ``Title``: declared titles are deliberate, while the classifier,
    running without a POS tagger offline, also labels short single-sentence paragraphs as titles.
    """

    title: str | None
    text: str
    file_type: str
    elements: int


def install_offline_nlp() -> None:
    """Idempotent: patch unstructured's spaCy loader with ``spacy.blank("en")`` + sentencizer so nothing downloads.

    unstructured's ``_get_nlp`` installs ``en_core_web_sm`` from GitHub on first use, which hangs or fails offline.
    Its callers only need tokens and sentence boundaries for element-classification heuristics; a blank pipeline
    gives both without a model. The cost is no POS tags, so fewer paragraphs are classified ``NarrativeText``;
    the extracted text is unchanged. The telemetry opt-outs are set again first because ``import unstructured``
    pings.
    """
    _opt_out_of_unstructured_telemetry()
    with _nlp_lock:
        from unstructured.nlp import tokenize

        if getattr(tokenize._get_nlp, "_ragops_offline", False):
            return
        loader = _blank_english_loader()
        setattr(tokenize, "_get_nlp", loader)  # noqa: B010 - a module attribute mypy would type as the lru_cache
        logger.debug("unstructured spaCy loader replaced by a blank English pipeline with a sentencizer")


def _blank_english_loader() -> Callable[[], Language]:
    """A lazily built, cached loader with the same contract as ``unstructured.nlp.tokenize._get_nlp``."""
    import spacy

    lock = threading.Lock()
    cache: list[Language] = []

    def get_nlp() -> Language:
        with lock:
            if not cache:
                nlp = spacy.blank("en")
                nlp.add_pipe("sentencizer")
                cache.append(nlp)
            return cache[0]

    get_nlp._ragops_offline = True  # type: ignore[attr-defined]
    return get_nlp


def partition_file(path: Path, *, max_bytes: int, encodings: Sequence[str] = ("utf-8",)) -> Partitioned:
    """Partition one file into text. Raises :class:`PartitionError` with a one-line human reason for every bad input.

    Checks run cheapest first and before any parsing: the path (stage ``"read"``), then the extension, the size
    (from ``stat``, so a huge file is never read), emptiness, and per-type structure. Only then is unstructured
    called; whatever it raises is converted, and an empty result is "no extractable text".

    Args:
        path: The file. Symlinks are followed.
        max_bytes: Larger files are rejected without being read (``ingest.max_file_bytes``).
        encodings: Tried in order, strictly, for txt/md/html (``ingest.text_encodings``).

    Raises:
        PartitionError: The file is unusable; ``reason`` says why.
        ConfigError: ``max_bytes`` or ``encodings`` cannot work; this is not the document's fault.
    """
    _check_config(max_bytes, encodings)
    path = Path(path)
    size = _stat_regular_file(path)

    ext = path.suffix.lower()
    file_type = _FILE_TYPES.get(ext)
    if file_type is None:
        shown = f"'{path.suffix}'" if path.suffix else "(no extension)"
        raise PartitionError(f"unsupported file type {shown} (supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))})")
    if size > max_bytes:
        raise PartitionError(_too_large(size, max_bytes))
    if size == 0:
        raise PartitionError("empty file (0 bytes)")

    data = _read_bytes(path, max_bytes)
    if not data:
        raise PartitionError("empty file (0 bytes)")

    install_offline_nlp()
    if file_type in _TEXT_TYPES:
        result = _partition_text_like(data, file_type=file_type, ext=ext, encodings=encodings)
    elif file_type == "pdf":
        result = _partition_pdf(data)
    else:
        result = _partition_docx(data, max_bytes=max_bytes)
    logger.debug(
        "partitioned %s: %s, %d elements, %d chars, title=%r",
        path,
        result.file_type,
        result.elements,
        len(result.text),
        result.title,
    )
    return result


# -- checks ------------------------------------------------------------------------------------------------------


def _check_config(max_bytes: int, encodings: Sequence[str]) -> None:
    if max_bytes < 1:
        raise ConfigError(f"max_bytes must be at least 1, got {max_bytes}")
    if isinstance(encodings, str) or not encodings:
        raise ConfigError(f"encodings must be a non-empty list of codec names, got {encodings!r}")
    for encoding in encodings:
        try:
            # A one-byte probe: b"" skips the codec entirely, and this also refuses codecs that exist but are not
            # text encodings ("base64", "rot13").
            b"a".decode(encoding)
        except UnicodeDecodeError:
            pass  # a real text codec that cannot decode the probe alone (utf-16, utf-32)
        except (LookupError, TypeError):
            raise ConfigError(f"unknown text encoding {encoding!r} in ingest.text_encodings") from None


def _stat_regular_file(path: Path) -> int:
    """Size of ``path`` if it is a readable regular file (through symlinks); otherwise a stage-"read" rejection."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise PartitionError(f"broken symlink: target {os.readlink(path)} does not exist", stage="read") from None
        raise PartitionError("file not found", stage="read") from None
    except NotADirectoryError:
        raise PartitionError("file not found (a parent in the path is not a directory)", stage="read") from None
    except PermissionError:
        raise PartitionError("permission denied", stage="read") from None
    except OSError as exc:
        raise PartitionError(f"cannot read file: {exc.strerror or exc}", stage="read") from None
    if stat.S_ISDIR(st.st_mode):
        raise PartitionError("is a directory, not a file", stage="read")
    if not stat.S_ISREG(st.st_mode):
        # Reading a FIFO would block the worker forever; devices and sockets are not documents either.
        raise PartitionError("not a regular file (device, FIFO or socket)", stage="read")
    return st.st_size


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """Read at most ``max_bytes + 1`` bytes, so a file that grew after ``stat`` is still caught by the limit."""
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise PartitionError("file not found (removed while reading)", stage="read") from None
    except PermissionError:
        raise PartitionError("permission denied", stage="read") from None
    except OSError as exc:
        raise PartitionError(f"cannot read file: {exc.strerror or exc}", stage="read") from None
    if len(data) > max_bytes:
        raise PartitionError(_too_large(len(data), max_bytes, at_least=True))
    return data


def _too_large(size: int, max_bytes: int, *, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return (
        f"file too large: {more}{size:,} bytes ({_human(size)}) exceeds the limit of "
        f"{max_bytes:,} bytes ({_human(max_bytes)})"
    )


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# UTF-32 first: its little-endian BOM starts with the UTF-16 one.
_WIDE_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def _is_wide(encoding: str) -> bool:
    """UTF-16/32 text legitimately contains NUL bytes, so byte-level binary checks must not run for it."""
    name = codecs.lookup(encoding).name
    return name.startswith(("utf-16", "utf-32"))


def _binary_reason(data: bytes, ext: str, encodings: Sequence[str]) -> str | None:
    """Why ``data`` is binary rather than text, judged on the raw bytes, or None if it looks like text."""
    if any(_is_wide(e) for e in encodings):
        return None
    for bom, name in _WIDE_BOMS:
        if data.startswith(bom):
            # Say so instead of "binary": the file is text, only in an encoding the settings do not allow.
            return f"cannot decode text: the file is {name} (byte order mark) but the configured encodings are " + (
                ", ".join(encodings)
            )
    if b"\x00" in data:
        return f"binary content in a {ext} file (contains NUL bytes)"
    controls = len(data.translate(None, delete=_NON_CONTROL_BYTES))  # deleting the rest leaves the controls
    if controls > _MAX_CONTROL_SHARE * len(data):
        return f"binary content in a {ext} file ({controls / len(data):.0%} control bytes)"
    return None


def _decode(data: bytes, ext: str, encodings: Sequence[str]) -> str:
    """Decode strictly with the first encoding that fits; the reason names every encoding's failure offset."""
    failures: list[str] = []
    for encoding in encodings:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            bad = data[exc.start : exc.start + 1].hex()
            failures.append(f"{encoding} failed at byte offset {exc.start} (byte 0x{bad}: {exc.reason})")
            continue
        text = text.removeprefix("\ufeff")  # a UTF-8 BOM decodes to U+FEFF under "utf-8"
        controls = len(text) - len(_CONTROL_CHARS.sub("", text))
        if text and controls > _MAX_CONTROL_SHARE * len(text):
            raise PartitionError(f"binary content in a {ext} file ({controls / len(text):.0%} control characters)")
        return text
    raise PartitionError("cannot decode text: " + "; ".join(failures))


# -- per type ----------------------------------------------------------------------------------------------------


def _partition_text_like(data: bytes, *, file_type: str, ext: str, encodings: Sequence[str]) -> Partitioned:
    reason = _binary_reason(data, ext, encodings)
    if reason:
        raise PartitionError(reason)
    text = _decode(data, ext, encodings)
    if not text.strip():
        raise PartitionError("no extractable text (only whitespace)")

    declared: str | None = None
    if file_type == "txt":
        from unstructured.partition.text import partition_text

        elements = _call_unstructured(file_type, lambda: partition_text(text=text))
    elif file_type == "md":
        from unstructured.partition.md import partition_md

        elements = _call_unstructured(file_type, lambda: partition_md(text=text))
    else:
        from unstructured.partition.html import partition_html

        declared = _html_title(text)
        elements = _call_unstructured(file_type, lambda: partition_html(text=text))
    return _result(elements, file_type=file_type, declared_title=declared)


def _partition_pdf(data: bytes) -> Partitioned:
    """Partition with pdfminer (``strategy="fast"``) after pypdf has ruled out a corrupt or encrypted file.

    The explicit checks matter because unstructured swallows pdfminer's errors and returns no elements for corrupt,
    truncated and password-protected PDFs alike, which would all read as "no extractable text".
    """
    if b"%PDF-" not in data[:1024]:
        raise PartitionError("corrupt PDF (no %PDF header)")
    declared, open_error = _inspect_pdf(data)

    from unstructured.partition.pdf import partition_pdf

    try:
        # languages only steers OCR, which "fast" never runs; naming it silences a warning on every call.
        elements = partition_pdf(file=io.BytesIO(data), strategy="fast", languages=["eng"])
    except Exception as exc:
        if open_error:
            raise PartitionError(f"corrupt PDF ({open_error})") from exc
        raise PartitionError(f"could not partition pdf: {_one_line(exc)}") from exc
    if open_error and not _texts(elements):
        raise PartitionError(f"corrupt PDF ({open_error})")
    return _result(elements, file_type="pdf", declared_title=declared, empty_hint="the PDF has no text layer")


def _inspect_pdf(data: bytes) -> tuple[str | None, str | None]:
    """(declared title, error opening it) from pypdf; raises for an encrypted PDF that needs a password.

    An open error is not final: pdfminer repairs some files pypdf cannot read, so the caller decides after trying.
    """
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                # Owner-password-only PDFs (printing/copying restrictions) open with an empty user password.
                opened = bool(reader.decrypt(""))
            except Exception:
                opened = False
            if not opened:
                raise PartitionError("encrypted PDF (password protected)")
        info = reader.metadata
        title = info.title if info is not None else None
    except PartitionError:
        raise
    except Exception as exc:
        return None, _one_line(exc)
    return (title if isinstance(title, str) else None), None


def _partition_docx(data: bytes, *, max_bytes: int) -> Partitioned:
    """Check the zip structure first: python-docx's errors for a non-DOCX are obscure or path-shaped."""
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        raise PartitionError("corrupt docx (not a zip archive)")
    try:
        with zipfile.ZipFile(buffer) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
            if "word/document.xml" not in sizes:
                raise PartitionError("corrupt docx (zip archive without word/document.xml, not a Word document)")
            expanded = sum(sizes.values())
            if expanded > _MAX_DOCX_EXPANSION * max_bytes:
                raise PartitionError(
                    f"docx expands to {_human(expanded)}, more than {_MAX_DOCX_EXPANSION}x the size limit (zip bomb?)"
                )
            core_size = sizes.get("docProps/core.xml")
            core = archive.read("docProps/core.xml") if core_size is not None and core_size < 1024 * 1024 else None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise PartitionError(f"corrupt docx ({_one_line(exc)})") from exc

    from unstructured.partition.docx import partition_docx

    elements = _call_unstructured("docx", lambda: partition_docx(file=io.BytesIO(data)))
    return _result(elements, file_type="docx", declared_title=_docx_title(core))


def _call_unstructured(file_type: str, call: Callable[[], list[Any]]) -> list[Any]:
    """Run an unstructured partitioner; any exception becomes a PartitionError that names the file type."""
    try:
        return call()
    except PartitionError:
        raise
    except Exception as exc:
        raise PartitionError(f"could not partition {file_type}: {_one_line(exc)}") from exc


# -- results and titles ------------------------------------------------------------------------------------------


def _texts(elements: Sequence[Any]) -> list[str]:
    texts: list[str] = []
    for element in elements:
        text = getattr(element, "text", None)
        if isinstance(text, str) and text.strip():
            texts.append(text.strip())
    return texts


def _result(
    elements: Sequence[Any], *, file_type: str, declared_title: str | None, empty_hint: str | None = None
) -> Partitioned:
    text = "\n\n".join(_texts(elements)).strip()
    if not text:
        raise PartitionError(f"no extractable text ({empty_hint})" if empty_hint else "no extractable text")
    title = _clean_title(declared_title) or _first_title_element(elements)
    return Partitioned(title=title, text=text, file_type=file_type, elements=len(elements))


def _first_title_element(elements: Sequence[Any]) -> str | None:
    for element in elements:
        if getattr(element, "category", None) == "Title":
            title = _clean_title(getattr(element, "text", None))
            if title:
                return title
    return None


def _clean_title(title: object) -> str | None:
    if not isinstance(title, str):
        return None
    cleaned = " ".join(title.split())
    if not cleaned or cleaned.lower() in _PLACEHOLDER_TITLES:
        return None
    return cleaned


class _TitleParser(HTMLParser):
    """Collects the text of the first ``<title>`` in the document head (an SVG ``<title>`` in the body is ignored)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._inside = False
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        if tag == "title":
            self._inside = True
        elif tag == "body":
            self.done = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._inside:
            self._inside = False
            self.done = True

    def handle_data(self, data: str) -> None:
        if self._inside and not self.done:
            self.parts.append(data)


def _html_title(html: str) -> str | None:
    parser = _TitleParser()
    # The head is at the start; 64 KiB is generous and bounds the cost on huge pages. html.parser is lenient and
    # does not raise on malformed markup.
    parser.feed(html[:65536])
    parser.close()
    return _clean_title("".join(parser.parts))


def _docx_title(core_xml: bytes | None) -> str | None:
    """``dc:title`` from ``docProps/core.xml``, parsed without entity expansion or network access."""
    if not core_xml:
        return None
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(core_xml, parser=parser)
    except (etree.XMLSyntaxError, ValueError):  # a title is a nicety; the body decides if the document is usable
        return None
    node = root.find("{http://purl.org/dc/elements/1.1/}title")
    return _clean_title(node.text if node is not None else None)


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: quarantine reasons are shown in tables and logs."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if len(message) <= 300 else message[:297] + "..."
