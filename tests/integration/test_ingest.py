"""End-to-end ingestion: real files, the real embedder, real embedded Qdrant; no mocks.

The invariant checked after every run: the published version's point ids are exactly the union of the chunk ids in
its manifest (no duplicates, no orphans), and no writer lock is left behind.

The first ingestion of the session pays for importing unstructured, llama-index and great-expectations (and the ONNX
export on a cold cache); every later run on these tiny corpora takes well under a second.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.settings import Settings
from pipelines.embed import Embedder, EmbedderIdentity
from pipelines.errors import EmbedderMismatchError, FailureThresholdExceeded, IndexError_
from pipelines.index import IndexReader, Manifest, VectorIndex
from pipelines.ingest import IngestContext, IngestReport, chunk_step, discover_step, read_step, run_ingest
from pipelines.quarantine import Quarantine
from tests.fixtures.files import SAMPLE_PARAGRAPHS, SAMPLE_TITLES, write_bad_inputs, write_sample_docs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FORMATS = ("txt", "md", "html", "pdf", "docx")

# What each file of write_bad_inputs must be quarantined for (a word of its reason, lower-cased).
BAD_REASONS = {
    "empty.txt": "empty file",
    "junk.txt": "binary",
    "corrupt.pdf": "corrupt pdf",
    "encrypted.pdf": "encrypted",
    "latin1.txt": "decode",
    "notes.xyz": "unsupported file type",
    "big.txt": "too large",
    "dangling.md": "dangling symlink",
    "corrupt.docx": "corrupt docx",
}


# ------------------------------------------------------------------------------------------------------ helpers
def _make_settings(home: Path, cache: Path) -> Settings:
    """Settings for a module-scoped fixture (the ``settings`` fixture is per test); no RAGOPS_* leaks in."""
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("RAGOPS_"):
                patch.delenv(key)
        built = Settings(home=home, cache=cache)
    built.ensure_dirs()
    return built


def _tolerant(settings: Settings, share: float = 1.0) -> Settings:
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_failure_share": share})})


def _point_ids(reader: IndexReader) -> list[str]:
    return [p.id for p in reader.scroll(payload=False)]


def _writer_busy(index: VectorIndex) -> bool:
    """Whether a writer holds the collection's lock (an ingestion is writing)."""
    path = index.root / ".writer.lock"
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _manifest_ids(manifest: Manifest) -> list[str]:
    return [cid for entry in manifest.docs.values() for cid in entry.chunk_ids]


def _assert_consistent(index: VectorIndex, *, after_crash: bool = False) -> tuple[Manifest, set[str]]:
    """Published points == union of manifest chunk ids, exactly; returns the manifest and the point ids.

    A killed run may leave staged points in the shard (``after_crash``); readers never see them and the next
    writer deletes them.
    """
    manifest = index.manifest()
    assert manifest is not None, "nothing published"
    listed = _manifest_ids(manifest)
    assert len(listed) == len(set(listed)), "a chunk id is listed twice in the manifest"
    with index.reader() as reader:
        ids = _point_ids(reader)
        assert reader.count() == len(ids)
    assert len(ids) == len(set(ids)), "duplicate point ids"
    assert set(ids) == set(listed), f"orphans {set(ids) - set(listed)}, missing {set(listed) - set(ids)}"
    assert manifest.version.points == len(ids)
    assert manifest.version.documents == len(manifest.docs)
    if not after_crash:
        assert not _writer_busy(index), "a writer lock was left behind"
    return manifest, set(ids)


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def _top_doc(index: VectorIndex, embedder: Embedder, text: str) -> str:
    [vector] = embedder.encode([text])
    with index.reader() as reader:
        hits = reader.search_dense(vector, limit=1, payload=True)
    return str(hits[0].payload["doc_id"])  # type: ignore[index]


def _write_txt(folder: Path, name: str, *paragraphs: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


GOOD_TEXTS = {
    "tides.txt": ("Tide Tables", "High tide arrives about fifty minutes later each day because the moon moves."),
    "bread.txt": ("Sourdough Notes", "A sourdough starter needs flour and water every day to stay active."),
    "chess.txt": ("Chess Openings", "The Sicilian defence answers the king pawn with the c-pawn."),
}


def _write_good(folder: Path) -> None:
    for name, paragraphs in GOOD_TEXTS.items():
        _write_txt(folder, name, *paragraphs)


def _run_with_index(settings: Settings, source: Path, index: VectorIndex) -> IngestReport:
    """``run_ingest`` against a caller-built (server-mode) index."""
    return run_ingest(settings, source, index=index)


# ------------------------------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def sample(
    tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[tuple[Settings, dict, IngestReport]]:
    """One ingestion of the five sample formats, shared by read-only tests."""
    root = tmp_path_factory.mktemp("sample")
    settings = _make_settings(root / "home", shared_cache)
    files = write_sample_docs(root / "corpus")
    report = run_ingest(settings, root / "corpus")
    yield settings, files, report


# ------------------------------------------------------------------------------------------ formats, queries
def test_every_format_lands(sample: tuple[Settings, dict, IngestReport]) -> None:
    settings, files, report = sample
    assert report.documents_new == 5
    assert (report.documents_failed, report.documents_changed, report.documents_deleted) == (0, 0, 0)
    assert report.quarantined == ()
    assert report.published and report.index_version == 1
    assert report.embeddings_computed == report.chunks_upserted == report.points_total
    assert report.chunks_truncated == 0

    manifest, ids = _assert_consistent(VectorIndex(settings))
    assert set(manifest.docs) == {p.name for p in files.values()}
    assert report.points_total == len(ids) == sum(len(e.chunk_ids) for e in manifest.docs.values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_query_finds_the_right_document(
    sample: tuple[Settings, dict, IngestReport], embedder: Embedder, fmt: str
) -> None:
    settings, files, _ = sample
    index = VectorIndex(settings)
    for sentence in SAMPLE_PARAGRAPHS[fmt]:
        assert _top_doc(index, embedder, sentence) == files[fmt].name


def test_payload_carries_document_fields(sample: tuple[Settings, dict, IngestReport]) -> None:
    settings, files, _ = sample
    index = VectorIndex(settings)
    manifest = index.manifest()
    assert manifest is not None
    with index.reader() as reader:
        records = list(reader.scroll())
    by_doc = {r.payload["doc_id"]: r.payload for r in records}  # type: ignore[index]
    assert set(by_doc) == set(manifest.docs)
    md = by_doc[files["md"].name]
    assert md["title"] == SAMPLE_TITLES["md"]
    assert md["source"] == str(files["md"].resolve())
    assert md["source_key"] == manifest.docs[files["md"].name].source_key
    assert md["position"] == 0 and 0 < md["n_tokens"] <= 256


# -------------------------------------------------------------------------------------------- embedder identity
def test_embedder_mismatch_is_refused(sample: tuple[Settings, dict, IngestReport]) -> None:
    settings, _, _ = sample
    index = VectorIndex(settings)
    manifest = index.manifest()
    assert manifest is not None
    own: EmbedderIdentity = manifest.version.embedder
    before = _tree_state(index.root)

    other_weights = dataclasses.replace(own, weights_sha256="0" * 64)
    other_dim = dataclasses.replace(own, dim=768)
    for other in (other_weights, other_dim):
        with pytest.raises(EmbedderMismatchError, match="re-index"):
            index.begin(embedder=other, chunking=manifest.version.chunking, avgdl=100.0, run_id="mismatch")
        with pytest.raises(EmbedderMismatchError):
            index.open_reader(expect=other)

    other_chunking = dataclasses.replace(manifest.version.chunking, chunk_size=128)
    with pytest.raises(IndexError_, match="chunked with"):
        index.begin(embedder=own, chunking=other_chunking, avgdl=100.0, run_id="rechunk")

    # A renamed but identical model is the same vector space.
    with index.reader(expect=dataclasses.replace(own, name="renamed")) as reader:
        assert reader.version.version == 1
    assert index.current_version() == 1
    assert {k: v for k, v in _tree_state(index.root).items() if not k.startswith("readers")} == {
        k: v for k, v in before.items() if not k.startswith("readers")
    }, "a refused writer or reader must not change the index"


# ------------------------------------------------------------------------------------------------ incremental
def test_incremental_runs(settings: Settings) -> None:
    corpus = settings.home.parent / "corpus"
    files = write_sample_docs(corpus)
    index = VectorIndex(settings)

    first = run_ingest(settings, corpus)
    assert first.documents_new == 5 and first.index_version == 1
    v1, _ = _assert_consistent(index)

    # Unchanged source: nothing embedded, nothing published, nothing written.
    state = _tree_state(index.root)
    again = run_ingest(settings, corpus)
    assert again.embeddings_computed == 0 and again.chunks_upserted == 0
    assert again.published is False
    assert again.index_version == 1 and index.current_version() == 1
    assert again.documents_unchanged == 5 and again.documents_new == again.documents_changed == 0
    assert again.points_total == first.points_total
    assert _tree_state(index.root) == state
    assert index.versions() == [1]

    # One file changes: only it is redone, its old chunks are gone, the others are untouched.
    txt = files["txt"]
    old_txt_ids = set(v1.docs[txt.name].chunk_ids)
    txt.write_text(txt.read_text() + "\nA fourth paragraph about cleaning the inverter fan filter.\n")
    changed = run_ingest(settings, corpus)
    assert (changed.documents_changed, changed.documents_new, changed.documents_unchanged) == (1, 0, 4)
    assert changed.published and changed.index_version == 2
    v2, ids = _assert_consistent(index)
    assert not old_txt_ids & ids, "an old chunk of the changed document survived"
    assert changed.chunks_deleted == len(old_txt_ids - set(v2.docs[txt.name].chunk_ids))
    for name, entry in v1.docs.items():
        if name != txt.name:
            assert v2.docs[name] == entry

    # One file is deleted: its points go.
    md = files["md"]
    md_ids = set(v2.docs[md.name].chunk_ids)
    md.unlink()
    deleted = run_ingest(settings, corpus)
    assert deleted.documents_deleted == 1 and deleted.chunks_deleted == len(md_ids)
    assert deleted.published and deleted.index_version == 3
    v3, ids = _assert_consistent(index)
    assert md.name not in v3.docs and not md_ids & ids

    # One file is added.
    _write_txt(corpus, "kites.txt", "Kite Flying", "Stunt kites need steady wind of about fifteen knots.")
    added = run_ingest(settings, corpus)
    assert (added.documents_new, added.documents_changed, added.documents_deleted) == (1, 0, 0)
    assert added.embeddings_computed == 1 and added.embeddings_reused == 0
    v4, _ = _assert_consistent(index)
    assert set(v4.docs) == {"solar.txt", "coffee.html", "beekeeping.pdf", "onboarding.docx", "kites.txt"}
    assert index.versions() == [2, 3, 4]  # keep_versions = 3


def test_changed_tail_reuses_the_vectors_of_unchanged_chunks(settings: Settings) -> None:
    corpus = settings.home.parent / "corpus"
    rng = random.Random(5)
    topics = ["granite", "basalt", "limestone", "sandstone", "marble", "slate", "quartz", "shale"]
    paragraphs = [
        " ".join(
            f"Sample {p}-{s} of {rng.choice(topics)} was cut, weighed at {rng.randint(10, 990)} grams and "
            f"compared with {rng.choice(topics)} from the {rng.choice(['north', 'south', 'east', 'west'])} quarry."
            for s in range(5)
        )
        for p in range(12)
    ]
    doc = _write_txt(corpus, "geology.txt", "Quarry Sample Log", *paragraphs)
    _write_txt(corpus, "other.txt", "Unrelated", "Otters hold hands while they sleep.")
    index = VectorIndex(settings)
    run_ingest(settings, corpus)
    v1, _ = _assert_consistent(index)
    old_ids = list(v1.docs["geology.txt"].chunk_ids)
    assert len(old_ids) >= 3, "the document must span several chunks for this test to mean anything"
    with index.reader() as reader:
        old_vectors = {r.id: r.dense for r in reader.retrieve(old_ids, dense=True)}

    doc.write_text(
        "\n\n".join(["Quarry Sample Log", *paragraphs[:-1], "The final sample was lost in transit."]) + "\n",
        encoding="utf-8",
    )
    report = run_ingest(settings, corpus)

    v2, _ = _assert_consistent(index)
    new_ids = list(v2.docs["geology.txt"].chunk_ids)
    kept = [cid for cid in new_ids if cid in old_vectors]
    assert report.documents_changed == 1 and report.documents_unchanged == 1
    assert report.embeddings_reused == len(kept) > 0
    assert report.embeddings_computed == len(new_ids) - len(kept) >= 1
    assert report.chunks_deleted == len(set(old_ids) - set(new_ids))
    with index.reader() as reader:
        for record in reader.retrieve(kept, dense=True):
            np.testing.assert_array_equal(record.dense, old_vectors[record.id])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_quarantined_and_good_ones_land(settings: Settings, embedder: Embedder) -> None:
    settings = _tolerant(settings)
    corpus = settings.home.parent / "corpus"
    bad = write_bad_inputs(corpus)
    _write_good(corpus)
    assert set(bad) == set(BAD_REASONS)

    report = run_ingest(settings, corpus)

    assert report.documents_new == 3 and report.published
    assert report.documents_failed == len(bad) == len(report.quarantined)
    reasons = {q.doc_id: q.reason for q in report.quarantined}
    assert set(reasons) == set(bad)
    for name, needle in BAD_REASONS.items():
        assert needle in reasons[name].lower(), (name, reasons[name])
    assert all(q.run_id == report.run_id and q.stage for q in report.quarantined)
    stored = Quarantine(settings.quarantine_dir, "docs").list()
    assert {q.doc_id: q.reason for q in stored} == reasons

    index = VectorIndex(settings)
    manifest, _ = _assert_consistent(index)
    assert set(manifest.docs) == set(GOOD_TEXTS)
    assert _top_doc(index, embedder, "How often should I feed my sourdough starter?") == "bread.txt"

    # Fixing two files lands them and clears exactly their quarantine entries.
    bad["latin1.txt"].write_text("Crème brûlée needs a very hot grill to caramelise the sugar.\n", encoding="utf-8")
    bad["empty.txt"].write_text("An empty file that now has a sentence about lighthouses.\n", encoding="utf-8")
    fixed = run_ingest(settings, corpus)
    assert fixed.documents_new == 2 and fixed.documents_failed == len(bad) - 2
    remaining = {q.doc_id for q in Quarantine(settings.quarantine_dir, "docs").list()}
    assert remaining == set(bad) - {"latin1.txt", "empty.txt"}
    manifest, _ = _assert_consistent(index)
    assert {"latin1.txt", "empty.txt"} <= set(manifest.docs)


def test_failure_threshold_publishes_nothing(settings: Settings) -> None:
    # A fresh collection with a mostly bad source: nothing published at all.
    mostly_bad = settings.home.parent / "mostly-bad"
    bad = write_bad_inputs(mostly_bad)
    _write_txt(mostly_bad, "only-good.txt", "Alone", "The only good document in this folder.")
    with pytest.raises(FailureThresholdExceeded, match="nothing was published") as failed:
        run_ingest(settings, mostly_bad, collection="fresh")
    report = failed.value.report
    assert report is not None and not report.published and report.index_version is None
    assert {q.doc_id for q in report.quarantined} == set(bad) and report.documents_seen == len(bad) + 1
    fresh = VectorIndex(settings, collection="fresh")
    assert fresh.current_version() is None and fresh.versions() == []
    assert not _writer_busy(fresh)
    assert {q.doc_id for q in Quarantine(settings.quarantine_dir, "fresh").list()} == set(bad)

    # A published collection whose source turns mostly bad: the published version stays as it was.
    corpus = settings.home.parent / "corpus"
    _write_good(corpus)
    run_ingest(settings, corpus)
    index = VectorIndex(settings)
    before, _ = _assert_consistent(index)
    write_bad_inputs(corpus)
    _write_txt(corpus, "new-good.txt", "New", "A new good document that must not be published alone.")
    with pytest.raises(FailureThresholdExceeded):
        run_ingest(settings, corpus)
    assert index.current_version() == 1 and index.versions() == [1]
    after, _ = _assert_consistent(index)
    assert after == before
    assert {q.doc_id for q in Quarantine(settings.quarantine_dir, "docs").list()} == set(bad)


def test_good_document_turned_corrupt_keeps_its_chunks(settings: Settings, embedder: Embedder) -> None:
    corpus = settings.home.parent / "corpus"
    files = write_sample_docs(corpus)
    index = VectorIndex(settings)
    run_ingest(settings, corpus)
    v1, _ = _assert_consistent(index)
    pdf = files["pdf"]
    original = pdf.read_bytes()

    pdf.write_bytes(b"%PDF-1.7\n" + random.Random(3).randbytes(1024))  # e.g. a half-finished sync
    files["txt"].write_text(files["txt"].read_text() + "\nOne more line about panel warranties.\n")
    report = run_ingest(settings, corpus)  # 1 of 5 failed: within the default 25 %

    assert report.published and report.documents_changed == 1 and report.documents_failed == 1
    [record] = report.quarantined
    assert record.doc_id == pdf.name and "corrupt pdf" in record.reason.lower()
    assert [q.doc_id for q in Quarantine(settings.quarantine_dir, "docs").list()] == [pdf.name]
    v2, ids = _assert_consistent(index)
    assert v2.docs[pdf.name] == v1.docs[pdf.name], "the corrupt document's last good version must stay"
    assert set(v1.docs[pdf.name].chunk_ids) <= ids
    assert _top_doc(index, embedder, SAMPLE_PARAGRAPHS["pdf"][1]) == pdf.name

    # Still corrupt on the next run: retried, quarantined again, nothing to publish.
    retry = run_ingest(settings, corpus)
    assert retry.published is False and retry.documents_failed == 1 and index.current_version() == 2

    # Repaired with new content: it lands and leaves the quarantine.
    pdf.write_bytes(original.replace(b"Annual", b"Yearly") if b"Annual" in original else original + b"\n")
    repaired = run_ingest(settings, corpus)
    assert repaired.documents_failed == 0
    assert Quarantine(settings.quarantine_dir, "docs").list() == []
    _assert_consistent(index)


def test_restored_document_leaves_the_quarantine(settings: Settings) -> None:
    corpus = settings.home.parent / "corpus"
    _write_good(corpus)
    run_ingest(settings, corpus)
    doc = corpus / "tides.txt"
    original = doc.read_bytes()
    doc.write_bytes(b"")
    run_ingest(_tolerant(settings), corpus)
    assert [q.doc_id for q in Quarantine(settings.quarantine_dir, "docs").list()] == ["tides.txt"]

    doc.write_bytes(original)
    report = run_ingest(settings, corpus)
    assert report.documents_failed == 0
    assert Quarantine(settings.quarantine_dir, "docs").list() == []


def test_fixed_jsonl_record_leaves_the_quarantine(settings: Settings) -> None:
    path = settings.home.parent / "records.jsonl"
    records = [
        {"_id": "a", "text": "Apples grow on trees in the orchard."},
        {"_id": "b", "text": 42},
        {"_id": "c", "text": "Cherries are small, red and sweet."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    first = run_ingest(_tolerant(settings), path)
    assert [q.doc_id for q in first.quarantined] == ["b"]

    records[1]["text"] = "Bananas are a yellow fruit from the tropics."
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    fixed = run_ingest(settings, path)
    assert fixed.documents_new == 1 and fixed.documents_failed == 0
    assert Quarantine(settings.quarantine_dir, "docs").list() == []


def test_runaway_title_record_lands_within_the_window(settings: Settings) -> None:
    path = settings.home.parent / "records.jsonl"
    records = [
        {"_id": "a", "title": "Apples", "text": "Apples grow on trees in the orchard."},
        {"_id": "url", "title": "https://example.com/" + "abcdefghijkl/" * 60, "text": "A page with a long address."},
        {"_id": "c", "title": "Cherries", "text": "Cherries are small, red and sweet."},
        {"_id": "d", "title": "Dates", "text": "Dates grow on palms in hot, dry places."},
        {"_id": "e", "title": "Elderberries", "text": "Elderberries must be cooked before eating."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = run_ingest(settings, path)
    assert report.documents_new == 5  # the URL title is capped, not a reason to lose the document
    assert report.quarantined == ()
    assert report.chunks_truncated == 0


# ------------------------------------------------------------------------------------------- reader isolation
def test_open_reader_keeps_its_version_while_new_ones_publish(settings: Settings, embedder: Embedder) -> None:
    corpus = settings.home.parent / "corpus"
    _write_good(corpus)
    index = VectorIndex(settings)
    run_ingest(settings, corpus)
    old = index.open_reader()
    try:
        points_v1 = old.count()
        assert old.version.version == 1

        for n in range(3):  # publishes v2, v3, v4; gc then deletes v1's folder while the reader still uses it
            _write_txt(corpus, f"extra-{n}.txt", f"Extra {n}", f"Extra document number {n} about walruses.")
            assert run_ingest(settings, corpus).index_version == n + 2
        assert 1 not in index.versions()

        assert old.count() == points_v1
        [vector] = embedder.encode(["Why does high tide come later every day?"])
        hits = old.search_dense(vector, limit=5)
        assert hits and len(hits) == points_v1 == 3
        with index.reader() as new:
            assert new.version.version == 4
            assert new.count() == points_v1 + 3
    finally:
        old.close()
    assert not any(index.root.joinpath("readers").iterdir()), "closed readers must delete their private copies"


# ----------------------------------------------------------------------------------------------- server mode
def test_server_mode_publishes_through_an_alias(settings: Settings, tmp_path: Path) -> None:
    """The alias-switching code path, against qdrant-client's local mode (which supports aliases).

    Local mode locks its folder per instance, so one client serves every factory call, wrapped so that the
    index's close() calls (each caller closes the client it got, as with a real server) leave it open.
    """
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(tmp_path / "srv"))

    class Unclosable:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def close(self) -> None:
            pass

    try:
        _server_mode_scenario(settings, client, Unclosable)
    finally:
        client.close()


def _collections(client: Any) -> set[str]:
    return {c.name for c in client.get_collections().collections}


def _aliases(client: Any) -> dict[str, str]:
    return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}


def _server_mode_scenario(settings: Settings, client: Any, factory: Callable[[], Any]) -> None:
    corpus = settings.home.parent / "corpus"
    _write_good(corpus)
    settings = settings.model_copy(update={"qdrant": settings.qdrant.model_copy(update={"lease_seconds": 1.0})})

    def ingest() -> IngestReport:
        return _run_with_index(settings, corpus, VectorIndex(settings, client_factory=factory))

    index = VectorIndex(settings, client_factory=factory)
    assert index.server_mode

    first = ingest()
    assert first.index_version == 1
    assert _aliases(client) == {"docs": "docs__data"}
    assert _collections(client) == {"docs__data", "docs__ragops"}
    assert client.get_collection("docs").config.metadata["ragops"]["current"] == 1  # the alias reads the state

    _write_txt(corpus, "chess.txt", "Chess Openings", "The French defence answers the king pawn with e6.")
    second = ingest()
    assert second.index_version == 2 and second.documents_changed == 1
    assert index.versions() == [1, 2]  # the previous version is kept for rollback, in the same collection

    manifest = index.manifest()
    assert manifest is not None and manifest.version.version == 2
    with index.reader() as reader:
        ids = _point_ids(reader)
    assert len(ids) == len(set(ids)) and set(ids) == set(_manifest_ids(manifest))
    with index.reader(1) as old:
        assert old.count() == first.points_total
    # Server mode keeps no local state: another disk sees the same versions.
    assert not index.root.exists() or not any(index.root.iterdir())

    # A crash: one run wrote part of v3 and died holding the lease.
    crashed = index.begin(
        embedder=manifest.version.embedder, chunking=manifest.version.chunking, avgdl=1.0, run_id="crashed"
    )
    crashed.delete(ids)  # half-done work that must never be published
    with index.reader() as reader:
        assert set(_point_ids(reader)) == set(ids)
    time.sleep(1.2)  # its lease expires

    _write_txt(corpus, "kites.txt", "Kite Flying", "Stunt kites need steady wind of about fifteen knots.")
    third = ingest()
    assert third.index_version == 3 and third.documents_new == 1
    manifest = index.manifest()
    assert manifest is not None
    with index.reader() as reader:
        ids = _point_ids(reader)
    assert len(ids) == len(set(ids)) and set(ids) == set(_manifest_ids(manifest))
    assert set(manifest.docs) == {*GOOD_TEXTS, "kites.txt"}

    # A fourth version: keep_versions = 3 forgets the oldest, and deletes the points only it saw.
    (corpus / "kites.txt").unlink()
    fourth = ingest()
    assert fourth.index_version == 4 and fourth.documents_deleted == 1
    assert index.versions() == [2, 3, 4]
    with index.reader() as reader:
        assert reader.count() == fourth.points_total == second.points_total


# --------------------------------------------------------------------------------------------- crash safety
_SUBJECTS = (
    "The river authority",
    "A small bakery",
    "The city council",
    "Our research team",
    "The night nurse",
    "A retired pilot",
    "The school orchestra",
    "The rescue crew",
    "An old bookshop",
    "The harbour master",
)
_VERBS = ("repaired", "measured", "documented", "replaced", "inspected", "painted", "catalogued", "delivered")
_OBJECTS = (
    "the water pumps",
    "forty benches",
    "the signal lights",
    "the seed packets",
    "the weather station",
    "a box of maps",
    "the radios",
    "the greenhouse heaters",
    "the broken clocks",
    "the flood barriers",
)
_PLACES = ("near the bridge", "behind the town hall", "in the valley", "at the quarry", "by the lake")


def _records(count: int, *, seed: int = 7, start: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(start, start + count):
        sentences = [
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)} "
            f"in entry {i}-{k}."
            for k in range(rng.randint(1, 2))
        ]
        out.append({"_id": f"rec-{i:04d}", "title": f"Log {i}", "text": " ".join(sentences)})
    return out


def _write_records(path: Path, records: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


_DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from pipelines.env import apply_offline_env
    from pipelines.ingest import run_ingest
    from flows.settings import Settings

    settings = Settings()
    apply_offline_env(settings)
    settings.ensure_dirs()
    report = run_ingest(settings, Path(sys.argv[1]))
    print("published", report.index_version, flush=True)
    """
)


def _assert_matches_fresh_chunking(settings: Settings, source: Path, index: VectorIndex) -> None:
    """The published index equals chunking the whole source from scratch: same documents, same chunk ids."""
    manifest, ids = _assert_consistent(index)
    ctx = IngestContext(settings)
    discovery = discover_step(ctx, source)
    docs, rejected = read_step(ctx, discovery.items)
    assert rejected == []
    chunks, chunk_rejects = chunk_step(ctx, docs)
    assert chunk_rejects == []
    assert set(manifest.docs) == {item.doc_id for item in discovery.items}
    assert ids == {c.chunk_id for c in chunks}
    assert manifest.version.points == len(chunks)
    for doc_id, entry in manifest.docs.items():
        assert set(entry.chunk_ids) <= ids, doc_id


@pytest.mark.integration
def test_kill_9_at_any_moment_converges(settings: Settings, embedder: Embedder) -> None:
    """kill -9 a real ingest process at several moments; the next run always converges to exactly the source."""
    work = settings.home.parent
    source = work / "logs.jsonl"
    records = _records(400)
    _write_records(source, records)
    script = work / "driver.py"
    script.write_text(_DRIVER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGOPS_")}
    env.update(
        RAGOPS_HOME=str(settings.home),
        RAGOPS_CACHE=str(settings.cache_dir),  # warm: the embedder fixture exported the ONNX graph already
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    index = VectorIndex(settings)

    log = work / "driver.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as sink:
            return subprocess.Popen(
                [sys.executable, str(script), str(source)], env=env, cwd=work, stdout=sink, stderr=sink
            )

    def tail() -> str:
        return log.read_text(errors="replace")[-2000:]

    def kill(proc: subprocess.Popen[bytes]) -> None:
        assert proc.poll() is None, f"the ingest ended before it could be killed; the test proves nothing\n{tail()}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL

    def kill_when_staging(proc: subprocess.Popen[bytes], *, delay: float) -> None:
        deadline = time.monotonic() + 180
        while not _writer_busy(index):
            assert proc.poll() is None, f"the ingest exited before writing anything\n{tail()}"
            assert time.monotonic() < deadline, "no writer took the lock"
            time.sleep(0.02)
        time.sleep(delay)
        kill(proc)

    # First version: killed while importing, and while embedding into its staging copy.
    for delay in (1.0, 2.5):
        proc = start()
        time.sleep(delay)
        kill(proc)
        assert index.current_version() is None
    proc = start()
    kill_when_staging(proc, delay=0.0)
    assert index.current_version() is None

    report = run_ingest(settings, source)
    assert report.documents_new == 400 and report.index_version == 1
    _assert_matches_fresh_chunking(settings, source, index)

    # Second version: change, delete and add records, then kill while the copy of version 1 is being modified.
    changed = [dict(r, text=r["text"] + " It was checked twice.") if i % 10 == 0 else r for i, r in enumerate(records)]
    _write_records(source, changed[20:] + _records(20, seed=8, start=400))
    proc = start()
    kill_when_staging(proc, delay=0.0)
    assert index.current_version() == 1
    published, _ = _assert_consistent(index, after_crash=True)  # readers still see an intact version 1
    assert len(published.docs) == 400

    report = run_ingest(settings, source)
    assert report.index_version == 2
    assert (report.documents_new, report.documents_deleted) == (20, 20)
    assert report.documents_changed == 38  # every tenth of the 380 surviving records
    _assert_matches_fresh_chunking(settings, source, index)
