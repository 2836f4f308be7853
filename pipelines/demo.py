"""The demo corpus: documents about the fictional company Northwind Robotics, materialised on first start.

The sources live in ``pipelines/demo_corpus``. Markdown, HTML and plain-text documents are shipped as they are; PDF and
DOCX documents are generated from Markdown-like sources in ``_pdf_src`` and ``_docx_src`` so that the repository holds
no binaries and every format the ingestion pipeline supports is exercised. A generated source looks like this::

    # Document title
    <!-- folder: products -->

    A paragraph, possibly spanning
    several lines.

    ## A subheading

    - a bullet

The second line names the folder of the generated file inside the built corpus (default ``generated``). Generation
is deterministic: building an unchanged corpus twice gives byte-identical files, so content hashes (and with them
the incremental ingestion's change detection) stay stable across builds and releases of the same library versions.

The evaluation set ``evaluation/testsets/demo_qa.jsonl`` refers to documents by their path relative to the built
corpus root, e.g. ``products/nr-200-datasheet.pdf``.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Literal
from xml.sax.saxutils import escape

logger = logging.getLogger(__name__)

DEMO_CORPUS_DIR: Path = Path(__file__).resolve().parent / "demo_corpus"
"""Where the demo corpus sources are shipped inside the package."""

PDF_SOURCE_DIR = "_pdf_src"
DOCX_SOURCE_DIR = "_docx_src"
COPIED_SUFFIXES: frozenset[str] = frozenset({".md", ".html", ".txt"})
DEFAULT_FOLDER = "generated"
AUTHOR = "Northwind Robotics"
CREATOR = "ragops demo corpus"

FIXED_TIMESTAMP = datetime(2025, 1, 1, tzinfo=UTC)
"""Creation and modification date written into generated documents, so that rebuilding changes no bytes."""

_ZIP_DATE_TIME = (2025, 1, 1, 0, 0, 0)
_ZIP_UNIX_SYSTEM = 3
_FILE_MODE = 0o100644
_FOLDER_RE = re.compile(r"^<!--\s*folder:\s*(?P<folder>[A-Za-z0-9_./-]+)\s*-->\s*$")
_BULLET_RE = re.compile(r"^\s*[-*]\s+(?P<text>.*)$")

BlockKind = Literal["heading", "subheading", "paragraph", "bullet"]
OutputKind = Literal["copy", "pdf", "docx"]


@dataclass(frozen=True)
class Block:
    """One block of a generated document's body: a heading (``##``), subheading (``###``), paragraph or bullet."""

    kind: BlockKind
    text: str


@dataclass(frozen=True)
class SourceDocument:
    """A parsed ``_pdf_src``/``_docx_src`` source: title, output folder and body blocks."""

    title: str
    folder: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class PlannedFile:
    """One file of the built corpus: its document id (relative POSIX path), its source and how it is produced."""

    doc_id: str
    source: Path
    kind: OutputKind


def parse_source(path: Path) -> SourceDocument:
    """Parse a Markdown-like source of a generated document.

    Args:
        path: A ``.md`` file whose first line is ``# Title`` and whose optional second line is
            ``<!-- folder: name -->``.

    Raises:
        ValueError: The title line is missing or the folder is not a safe relative path.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# ") or not lines[0][2:].strip():
        raise ValueError(f"{path}: the first line must be the title, written as '# Title'")
    title = lines[0][2:].strip()
    body = lines[1:]
    folder = DEFAULT_FOLDER
    if body and (match := _FOLDER_RE.match(body[0].strip())):
        folder = match.group("folder").strip("/")
        body = body[1:]
    folder_path = PurePosixPath(folder)
    if not folder or folder_path.is_absolute() or ".." in folder_path.parts:
        raise ValueError(f"{path}: folder {folder!r} must be a relative path inside the corpus")

    blocks: list[Block] = []
    pending: list[str] = []
    pending_kind: BlockKind = "paragraph"

    def flush() -> None:
        nonlocal pending, pending_kind
        if pending:
            blocks.append(Block(pending_kind, " ".join(pending)))
        pending = []
        pending_kind = "paragraph"

    for raw in body:
        line = raw.strip()
        if not line:
            flush()
        elif raw.startswith("### "):
            flush()
            blocks.append(Block("subheading", raw[4:].strip()))
        elif raw.startswith("## "):
            flush()
            blocks.append(Block("heading", raw[3:].strip()))
        elif bullet := _BULLET_RE.match(raw):
            flush()
            pending, pending_kind = [bullet.group("text").strip()], "bullet"
        else:
            # A continuation line: joins the open paragraph or bullet.
            pending.append(line)
    flush()
    return SourceDocument(title=title, folder=folder, blocks=tuple(blocks))


def plan_demo_corpus(source: Path = DEMO_CORPUS_DIR) -> list[PlannedFile]:
    """List the files a build of ``source`` produces, sorted by document id.

    Copied: every ``.md``/``.html``/``.txt`` outside the generator folders, hidden files and ``__pycache__``.
    Generated: ``_pdf_src/X.md`` becomes ``<folder>/X.pdf`` and ``_docx_src/X.md`` becomes ``<folder>/X.docx``.

    Raises:
        FileNotFoundError: ``source`` is not a directory.
        ValueError: Two sources would produce the same document id, or a generated source is malformed.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"demo corpus sources not found at {source}")
    planned: dict[str, PlannedFile] = {}

    def add(item: PlannedFile) -> None:
        if item.doc_id in planned:
            raise ValueError(f"{item.source} and {planned[item.doc_id].source} both produce {item.doc_id}")
        planned[item.doc_id] = item

    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or any(part.startswith((".", "__")) for part in rel.parts):
            continue
        top = rel.parts[0]
        if top in (PDF_SOURCE_DIR, DOCX_SOURCE_DIR):
            if len(rel.parts) != 2 or path.suffix != ".md":
                continue
            kind: OutputKind = "pdf" if top == PDF_SOURCE_DIR else "docx"
            folder = parse_source(path).folder
            add(PlannedFile(f"{folder}/{path.stem}.{kind}", path, kind))
        elif path.suffix.lower() in COPIED_SUFFIXES:
            add(PlannedFile(rel.as_posix(), path, "copy"))
    return [planned[doc_id] for doc_id in sorted(planned)]


def build_demo_corpus(target: Path, *, overwrite: bool = False, source: Path | None = None) -> list[Path]:
    """Materialise the demo corpus into ``target``.

    ``.md``/``.html``/``.txt`` files are copied as they are (same relative paths); each ``_pdf_src/X.md`` is rendered
    to ``<folder>/X.pdf`` with reportlab and each ``_docx_src/X.md`` to ``<folder>/X.docx`` with python-docx, the
    folder coming from the source's ``<!-- folder: ... -->`` line. Output is deterministic, and a file whose bytes
    are already what the build would write is left untouched (its modification time included).

    Args:
        target: The corpus root to write into; created if missing. Files already there that are not part of the
            corpus are left alone.
        overwrite: Replace corpus files that already exist in ``target`` with different content. Without it, such a
            file makes the build fail before anything is written.
        source: The sources to build from; defaults to the corpus shipped with the package.

    Returns:
        Every corpus file in ``target`` (written or already identical), sorted.

    Raises:
        FileExistsError: A corpus file exists in ``target`` with other content and ``overwrite`` is false.
        FileNotFoundError: The sources are missing.
        ValueError: A generated source is malformed or two sources collide.
    """
    plan = plan_demo_corpus(source or DEMO_CORPUS_DIR)
    rendered: list[tuple[Path, bytes]] = []
    for item in plan:
        if item.kind == "copy":
            data = item.source.read_bytes()
        elif item.kind == "pdf":
            data = render_pdf(parse_source(item.source))
        else:
            data = render_docx(parse_source(item.source))
        rendered.append((target.joinpath(*PurePosixPath(item.doc_id).parts), data))

    conflicts = [path for path, data in rendered if path.exists() and path.read_bytes() != data]
    if conflicts and not overwrite:
        raise FileExistsError(
            f"{len(conflicts)} demo corpus file(s) already exist in {target} with other content, e.g. "
            f"{conflicts[0]}; pass overwrite=True to replace them"
        )

    written = unchanged = 0
    for path, data in rendered:
        if path.exists() and path.read_bytes() == data:
            unchanged += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += 1
        logger.debug("wrote %s (%d bytes)", path, len(data))
    logger.info("demo corpus in %s: %d files written, %d unchanged", target, written, unchanged)
    return sorted(path for path, _ in rendered)


def render_pdf(document: SourceDocument) -> bytes:
    """Render a parsed source to PDF bytes: bold title and headings, bullets, title and author in the metadata.

    reportlab's invariant mode fixes the creation date and the document id, so equal input gives equal bytes.
    """
    from reportlab.lib.enums import TA_LEFT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

    sample = getSampleStyleSheet()
    body = ParagraphStyle(
        "DemoBody",
        parent=sample["BodyText"],
        fontName="Helvetica",
        fontSize=10,
        leading=14,
    )
    styles: dict[str, ParagraphStyle] = {
        "title": ParagraphStyle(
            "DemoTitle",
            parent=sample["Title"],
            fontName="Helvetica-Bold",
            fontSize=20,
            leading=24,
            alignment=TA_LEFT,
        ),
        "heading": ParagraphStyle(
            "DemoHeading1",
            parent=sample["Heading2"],
            fontName="Helvetica-Bold",
            fontSize=14,
            leading=18,
        ),
        "subheading": ParagraphStyle(
            "DemoHeading2",
            parent=sample["Heading3"],
            fontName="Helvetica-Bold",
            fontSize=12,
            leading=15,
        ),
        "paragraph": body,
        "bullet": ParagraphStyle("DemoBullet", parent=body, leftIndent=6 * mm, bulletIndent=2 * mm),
    }

    flowables: list[Paragraph | Spacer] = [
        Paragraph(escape(document.title), styles["title"]),
        Spacer(1, 4 * mm),
    ]
    for block in document.blocks:
        bullet_text = "\u2022" if block.kind == "bullet" else None
        flowables.append(Paragraph(escape(block.text), styles[block.kind], bulletText=bullet_text))

    buffer = io.BytesIO()
    template = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=20 * mm,
        bottomMargin=20 * mm,
        title=document.title,
        author=AUTHOR,
        subject=document.folder,
        creator=CREATOR,
        invariant=1,
    )
    template.build(flowables)
    return buffer.getvalue()


def render_docx(document: SourceDocument) -> bytes:
    """Render a parsed source to DOCX bytes with real heading styles and fixed core properties.

    python-docx stamps every zip member with the current time, so the archive is re-packed with a fixed timestamp.
    """
    import docx

    doc = docx.Document()
    props = doc.core_properties
    props.title = document.title
    props.author = AUTHOR
    props.last_modified_by = AUTHOR
    props.subject = document.folder
    props.revision = 1
    props.created = FIXED_TIMESTAMP
    props.modified = FIXED_TIMESTAMP

    doc.add_heading(document.title, level=0)
    for block in document.blocks:
        if block.kind == "heading":
            doc.add_heading(block.text, level=1)
        elif block.kind == "subheading":
            doc.add_heading(block.text, level=2)
        elif block.kind == "bullet":
            doc.add_paragraph(block.text, style="List Bullet")
        else:
            doc.add_paragraph(block.text)

    buffer = io.BytesIO()
    doc.save(buffer)
    return _normalise_zip(buffer.getvalue())


def _normalise_zip(data: bytes) -> bytes:
    """Re-pack a zip archive with fixed timestamps and attributes, keeping member order and content."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=_ZIP_DATE_TIME)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.create_system = _ZIP_UNIX_SYSTEM
            member.external_attr = _FILE_MODE << 16
            dst.writestr(member, src.read(info.filename))
    return out.getvalue()
