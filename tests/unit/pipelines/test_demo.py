"""The demo corpus: complete, in every format, deterministic, and its generated documents readable with their titles."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from pipelines.demo import (
    DEMO_CORPUS_DIR,
    DOCX_SOURCE_DIR,
    PDF_SOURCE_DIR,
    build_demo_corpus,
    parse_source,
)

EXTENSIONS = (".md", ".html", ".txt", ".pdf", ".docx")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _pdf_text_and_title(path: Path) -> tuple[str, str | None]:
    """The text of a PDF and its metadata title, with pypdf, or pdfminer.six when pypdf is missing."""
    try:
        from pypdf import PdfReader
    except ImportError:  # pragma: no cover - depends on the environment
        from pdfminer.high_level import extract_text
        from pdfminer.pdfdocument import PDFDocument
        from pdfminer.pdfparser import PDFParser

        with path.open("rb") as fh:
            info = PDFDocument(PDFParser(fh)).info
        raw = info[0].get("Title") if info else None
        title = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return extract_text(str(path)), title
    reader = PdfReader(path)
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    return text, reader.metadata.title if reader.metadata else None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("demo_corpus")
    return root, build_demo_corpus(root)


def test_builds_at_least_30_documents(built: tuple[Path, list[Path]]) -> None:
    root, paths = built
    assert len(paths) >= 30
    assert paths == sorted(paths)
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths)
    on_disk = sorted(path for path in root.rglob("*") if path.is_file())
    assert on_disk == paths


def test_every_format_has_at_least_six_documents(
    built: tuple[Path, list[Path]],
) -> None:
    counts = Counter(path.suffix for path in built[1])
    assert set(counts) == set(EXTENSIONS)
    for extension in EXTENSIONS:
        assert counts[extension] >= 6, f"only {counts[extension]} {extension} documents"


def test_layout_uses_subfolders_and_leaves_out_generator_sources(
    built: tuple[Path, list[Path]],
) -> None:
    root, paths = built
    relative = [path.relative_to(root) for path in paths]
    assert all(len(rel.parts) == 2 for rel in relative), "every document sits in one subfolder"
    assert not any(part.startswith("_") for rel in relative for part in rel.parts)
    assert not any(rel.suffix == ".py" for rel in relative)
    assert all(re.fullmatch(r"[a-z0-9-]+", rel.stem) for rel in relative), "file names are lowercase-with-dashes"


def test_generated_files_land_in_the_folder_their_source_names(
    built: tuple[Path, list[Path]],
) -> None:
    root, _ = built
    for source_dir, extension in ((PDF_SOURCE_DIR, ".pdf"), (DOCX_SOURCE_DIR, ".docx")):
        sources = sorted((DEMO_CORPUS_DIR / source_dir).glob("*.md"))
        assert sources
        for source in sources:
            folder = parse_source(source).folder
            assert (root / folder / f"{source.stem}{extension}").is_file()


def test_copied_documents_are_byte_identical_to_their_sources(
    built: tuple[Path, list[Path]],
) -> None:
    root, paths = built
    for path in paths:
        if path.suffix in (".md", ".html", ".txt"):
            assert path.read_bytes() == (DEMO_CORPUS_DIR / path.relative_to(root)).read_bytes()


def test_second_build_is_byte_identical(built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root, first = built
    second = build_demo_corpus(tmp_path / "again")
    assert [p.relative_to(root) for p in first] == [p.relative_to(tmp_path / "again") for p in second]
    generated = [p for p in first if p.suffix in (".pdf", ".docx")]
    assert len(generated) >= 12
    for path in first:
        assert _digest(path) == _digest(tmp_path / "again" / path.relative_to(root)), path.relative_to(root)


def test_pdfs_open_and_contain_their_title(built: tuple[Path, list[Path]]) -> None:
    root, paths = built
    pdfs = [path for path in paths if path.suffix == ".pdf"]
    for pdf in pdfs:
        title = parse_source(DEMO_CORPUS_DIR / PDF_SOURCE_DIR / f"{pdf.stem}.md").title
        text, metadata_title = _pdf_text_and_title(pdf)
        assert _squash(title) in _squash(text), pdf.relative_to(root)
        assert metadata_title == title


def test_docx_files_carry_title_metadata_and_real_headings(
    built: tuple[Path, list[Path]],
) -> None:
    import docx

    root, paths = built
    for path in (p for p in paths if p.suffix == ".docx"):
        source = parse_source(DEMO_CORPUS_DIR / DOCX_SOURCE_DIR / f"{path.stem}.md")
        document = docx.Document(str(path))
        assert document.core_properties.title == source.title
        styles = [paragraph.style.name for paragraph in document.paragraphs if paragraph.style is not None]
        assert document.paragraphs[0].text == source.title
        assert "Heading 1" in styles, path.relative_to(root)


def test_rebuild_keeps_identical_files_and_refuses_to_clobber_changed_ones(
    tmp_path: Path,
) -> None:
    target = tmp_path / "corpus"
    paths = build_demo_corpus(target)
    edited = next(path for path in paths if path.suffix == ".html")
    untouched = next(path for path in paths if path.suffix == ".pdf")
    mtime = untouched.stat().st_mtime_ns

    assert build_demo_corpus(target) == paths
    assert untouched.stat().st_mtime_ns == mtime

    edited.write_text("local edit", encoding="utf-8")
    with pytest.raises(FileExistsError):
        build_demo_corpus(target)
    assert edited.read_text(encoding="utf-8") == "local edit"

    build_demo_corpus(target, overwrite=True)
    assert edited.read_bytes() == (DEMO_CORPUS_DIR / edited.relative_to(target)).read_bytes()


def test_parse_source_reads_title_folder_and_blocks(tmp_path: Path) -> None:
    source = tmp_path / "sample.md"
    source.write_text(
        "# Sample Title\n<!-- folder: products -->\n\nFirst line\ncontinues here.\n\n## Section\n\n"
        "- one\n- two\n\n### Detail\n\nLast.\n",
        encoding="utf-8",
    )
    parsed = parse_source(source)
    assert parsed.title == "Sample Title"
    assert parsed.folder == "products"
    assert [(block.kind, block.text) for block in parsed.blocks] == [
        ("paragraph", "First line continues here."),
        ("heading", "Section"),
        ("bullet", "one"),
        ("bullet", "two"),
        ("subheading", "Detail"),
        ("paragraph", "Last."),
    ]


def test_parse_source_defaults_the_folder_and_rejects_a_missing_title(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "plain.md"
    plain.write_text("# Plain\n\nBody.\n", encoding="utf-8")
    assert parse_source(plain).folder == "generated"

    untitled = tmp_path / "untitled.md"
    untitled.write_text("No title here.\n", encoding="utf-8")
    with pytest.raises(ValueError, match="title"):
        parse_source(untitled)

    escaping = tmp_path / "escaping.md"
    escaping.write_text("# Escaping\n<!-- folder: ../outside -->\n", encoding="utf-8")
    with pytest.raises(ValueError, match="folder"):
        parse_source(escaping)
