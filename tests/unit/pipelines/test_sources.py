"""Discovery: which files and records a source holds, their metadata, their content hashes, and what is rejected.

Pure filesystem work (no model, no Qdrant), so every test here runs in milliseconds.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from pipelines.errors import SourceError
from pipelines.settings import IngestSettings
from pipelines.sources import Discovery, discover


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, lines: list[object | str]) -> Path:
    """One line per entry: dicts are dumped as JSON, strings are written verbatim (malformed lines)."""
    body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(body)
    else:
        path.write_text(body, encoding="utf-8")
    return path


def _ids(discovery: Discovery) -> list[str]:
    """Document ids, sorted (discovery walks folder by folder, files before subfolders)."""
    return sorted(item.doc_id for item in discovery.items)


def _bare(doc_id: str) -> str:
    """The id without the ``<tenant>:`` prefix a ``tenant=`` discovery adds (tested on its own below)."""
    return doc_id.split(":", 1)[-1]


def _by_id(discovery: Discovery) -> dict[str, object]:
    return {_bare(item.doc_id): item for item in discovery.items}


def _hashes(discovery: Discovery) -> dict[str, str]:
    return {_bare(item.doc_id): item.content_hash for item in discovery.items}


def test_a_tenant_prefixes_document_ids(tmp_path: Path) -> None:
    """Two tenants' folders share relative paths: the tenant is part of a document's identity, so neither
    ingestion can replace the other's document. Without a tenant the id stays the bare path."""
    _write(tmp_path / "policy.md", "p")
    _write(tmp_path / "sub" / "b.txt", "b")
    assert sorted(i.doc_id for i in discover(tmp_path, settings=DEFAULTS, tenant="acme").items) == [
        "acme:policy.md",
        "acme:sub/b.txt",
    ]
    assert sorted(i.doc_id for i in discover(tmp_path, settings=DEFAULTS).items) == ["policy.md", "sub/b.txt"]
    records = _jsonl(tmp_path / "r.jsonl", [{"_id": "d1", "text": "t"}])
    (item,) = discover(records, settings=DEFAULTS, tenant="beta").items
    assert (item.doc_id, item.source) == ("beta:d1", f"{records.resolve()}#d1")


@pytest.mark.parametrize("tenant", ["a:b", "a/b", " acme", "-x", "x" * 65, "ünï"])
def test_a_tenant_name_that_would_make_ids_ambiguous_is_refused(tmp_path: Path, tenant: str) -> None:
    _write(tmp_path / "a.txt", "a")
    with pytest.raises(SourceError, match="not valid"):
        discover(tmp_path, settings=DEFAULTS, tenant=tenant)


DEFAULTS = IngestSettings()


# ------------------------------------------------------------------------------------------------ directory trees
def test_tree_lists_files_with_relative_posix_ids(tmp_path: Path) -> None:
    _write(tmp_path / "b.txt", "b")
    _write(tmp_path / "a" / "z.md", "z")
    _write(tmp_path / "a" / "deeper" / "y.txt", "y")

    found = discover(tmp_path, settings=DEFAULTS)

    assert found.kind == "tree"
    assert found.source_key == str(tmp_path.resolve())
    assert _ids(found) == ["a/deeper/y.txt", "a/z.md", "b.txt"]
    item = _by_id(found)["a/z.md"]
    assert item.kind == "file"
    assert item.path == (tmp_path / "a" / "z.md").resolve()
    assert item.size == 1
    assert found.rejected == ()


def test_hidden_files_and_folders_are_excluded_by_default(tmp_path: Path) -> None:
    _write(tmp_path / "visible.txt", "v")
    _write(tmp_path / ".env", "SECRET=1")
    _write(tmp_path / "sub" / ".hidden.md", "h")
    _write(tmp_path / ".git" / "config", "[core]")
    _write(tmp_path / "sub" / ".cache" / "deep" / "blob.txt", "c")
    _write(tmp_path / "sub" / "kept.md", "k")

    assert _ids(discover(tmp_path, settings=DEFAULTS)) == ["sub/kept.md", "visible.txt"]


def test_sidecars_are_never_documents(tmp_path: Path) -> None:
    _write(tmp_path / "doc.txt", "d")
    _write(tmp_path / "doc.txt.ragops.json", json.dumps({"tenant": "t"}))
    _write(tmp_path / "_meta.json", json.dumps({"tenant": "t"}))
    _write(tmp_path / "sub" / "_meta.json", json.dumps({"tenant": "u"}))

    assert _ids(discover(tmp_path, settings=DEFAULTS)) == ["doc.txt"]


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    for rel in ("a.md", "b.txt", "notes/c.md", "notes/d.pdf", "drafts/e.md", "drafts/old/f.md"):
        _write(tmp_path / rel, rel)

    only_md = DEFAULTS.model_copy(update={"include": ["**/*.md"]})
    assert _ids(discover(tmp_path, settings=only_md)) == ["a.md", "drafts/e.md", "drafts/old/f.md", "notes/c.md"]

    no_drafts = DEFAULTS.model_copy(update={"include": ["**/*.md"], "exclude": [*DEFAULTS.exclude, "drafts/**"]})
    assert _ids(discover(tmp_path, settings=no_drafts)) == ["a.md", "notes/c.md"]

    # Overriding exclude replaces the defaults: hidden files come back only when asked for.
    _write(tmp_path / ".hidden.md", "h")
    assert ".hidden.md" not in _ids(discover(tmp_path, settings=only_md))
    with_hidden = DEFAULTS.model_copy(update={"include": ["**/*.md"], "exclude": []})
    assert ".hidden.md" in _ids(discover(tmp_path, settings=with_hidden))


def test_empty_folder_discovers_nothing(tmp_path: Path) -> None:
    found = discover(tmp_path, settings=DEFAULTS)
    assert found.items == () and found.rejected == ()


# ----------------------------------------------------------------------------------------------------- metadata
def test_metadata_precedence_parameter_folder_sidecar_doc_sidecar(tmp_path: Path) -> None:
    _write(tmp_path / "_meta.json", json.dumps({"tenant": "root-tenant", "acl": ["staff"], "lang": "en"}))
    _write(tmp_path / "team" / "_meta.json", json.dumps({"tenant": "team-tenant"}))
    _write(tmp_path / "plain.txt", "at the root")
    _write(tmp_path / "team" / "report.txt", "in the team folder")
    _write(tmp_path / "team" / "secret.txt", "with its own sidecar")
    _write(tmp_path / "team" / "secret.txt.ragops.json", json.dumps({"tenant": "doc-tenant", "acl": ["hr"]}))
    _write(tmp_path / "other" / "free.txt", "no folder sidecar here")

    found = _by_id(discover(tmp_path, settings=DEFAULTS, tenant="param-tenant"))

    assert found["plain.txt"].metadata == {"tenant": "root-tenant", "acl": ["staff"], "lang": "en"}
    assert found["other/free.txt"].metadata["tenant"] == "root-tenant"  # the root sidecar covers every subfolder
    assert found["team/report.txt"].metadata == {"tenant": "team-tenant", "acl": ["staff"], "lang": "en"}
    assert found["team/secret.txt"].metadata == {"tenant": "doc-tenant", "acl": ["hr"], "lang": "en"}


def test_tenant_parameter_applies_when_no_sidecar_says_otherwise(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "a")
    _write(tmp_path / "sub" / "b.txt", "b")
    _write(tmp_path / "sub" / "b.txt.ragops.json", json.dumps({"author": "kim"}))

    found = _by_id(discover(tmp_path, settings=DEFAULTS, tenant="acme", extra_metadata={"acl": ["all"]}))

    assert found["a.txt"].metadata == {"tenant": "acme", "acl": ["all"]}
    assert found["sub/b.txt"].metadata == {"tenant": "acme", "acl": ["all"], "author": "kim"}
    assert _by_id(discover(tmp_path, settings=DEFAULTS))["a.txt"].metadata == {}


@pytest.mark.parametrize(
    ("sidecar", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        (json.dumps({"tenant": {"nested": True}}), "must be a string, number, boolean or list of strings"),
    ],
)
def test_bad_sidecar_rejects_only_the_documents_it_covers(tmp_path: Path, sidecar: str, needle: str) -> None:
    _write(tmp_path / "good.txt", "g")
    _write(tmp_path / "bad.txt", "b")
    _write(tmp_path / "bad.txt.ragops.json", sidecar)

    found = discover(tmp_path, settings=DEFAULTS)

    assert _ids(found) == ["good.txt"]
    [record] = found.rejected
    assert record.doc_id == "bad.txt"
    assert record.stage == "discover"
    assert needle in record.reason
    assert "bad.txt.ragops.json" in record.reason  # the reason names the file to fix


def test_dangling_symlink_is_rejected_with_a_reason(tmp_path: Path) -> None:
    _write(tmp_path / "ok.txt", "ok")
    os.symlink(tmp_path / "gone.txt", tmp_path / "link.txt")

    found = discover(tmp_path, settings=DEFAULTS)

    assert _ids(found) == ["ok.txt"]
    [record] = found.rejected
    assert (record.doc_id, record.reason) == ("link.txt", "dangling symlink")


def test_oversized_file_is_discovered_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as handle:
        handle.write(b"x")
        handle.truncate(5000)
    small = DEFAULTS.model_copy(update={"max_file_bytes": 1000})

    [item] = discover(tmp_path, settings=small).items

    # Hashed by identity (size, mtime), so the partition step can quarantine it with the size in the reason.
    assert item.size == 5000
    assert item.content_hash.startswith("size:5000:")


# ------------------------------------------------------------------------------------------------ content hashes
def test_file_hash_is_stable_and_ignores_mtime(tmp_path: Path) -> None:
    doc = _write(tmp_path / "a.txt", "same bytes")
    _write(tmp_path / "b.txt", "other")
    first = _hashes(discover(tmp_path, settings=DEFAULTS))

    os.utime(doc, (1_000_000, 1_000_000))
    doc.write_bytes(doc.read_bytes())  # rewritten, identical bytes

    assert _hashes(discover(tmp_path, settings=DEFAULTS)) == first


def test_file_hash_changes_with_bytes_and_only_for_that_file(tmp_path: Path) -> None:
    doc = _write(tmp_path / "a.txt", "version one")
    _write(tmp_path / "b.txt", "untouched")
    first = _hashes(discover(tmp_path, settings=DEFAULTS))

    doc.write_text("version two", encoding="utf-8")
    second = _hashes(discover(tmp_path, settings=DEFAULTS))

    assert second["a.txt"] != first["a.txt"]
    assert second["b.txt"] == first["b.txt"]


def test_file_hash_changes_with_metadata(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "text")
    _write(tmp_path / "b.txt", "text")
    base = _hashes(discover(tmp_path, settings=DEFAULTS))

    # Same bytes, different metadata: the tenant parameter ...
    tenant = _hashes(discover(tmp_path, settings=DEFAULTS, tenant="acme"))
    assert tenant["a.txt"] != base["a.txt"]
    assert tenant != _hashes(discover(tmp_path, settings=DEFAULTS, tenant="other"))

    # ... a document sidecar (only the file it belongs to changes) ...
    _write(tmp_path / "a.txt.ragops.json", json.dumps({"tenant": "acme"}))
    sidecar = _hashes(discover(tmp_path, settings=DEFAULTS))
    assert sidecar["a.txt"] != base["a.txt"]
    assert sidecar["b.txt"] == base["b.txt"]

    # ... and a folder sidecar (every file below it changes).
    _write(tmp_path / "_meta.json", json.dumps({"acl": ["staff"]}))
    folder = _hashes(discover(tmp_path, settings=DEFAULTS))
    assert folder["a.txt"] != sidecar["a.txt"]
    assert folder["b.txt"] != sidecar["b.txt"]


# ----------------------------------------------------------------------------------------------------- JSONL
GOOD_RECORDS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces the risk of stroke."},
    {"id": "d2", "text": "Statins lower cholesterol.", "metadata": {"tenant": "lab", "tags": ["cardio"]}},
    {"_id": 3, "title": "  Numeric id  ", "text": "Ids are strings after discovery."},
]


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz", "records.jsonl"])
def test_jsonl_file_records(tmp_path: Path, name: str) -> None:
    path = _jsonl(tmp_path / name, GOOD_RECORDS)

    found = discover(path, settings=DEFAULTS, tenant="default")

    assert found.kind == "jsonl"
    assert found.source_key == str(path.resolve())
    assert [item.doc_id for item in found.items] == ["default:d1", "default:d2", "default:3"]  # file order
    items = _by_id(found)
    assert items["d1"].kind == "record"
    assert items["d1"].title == "Aspirin"
    assert items["d1"].text == "Aspirin reduces the risk of stroke."
    assert items["d1"].source == f"{path.resolve()}#d1"
    assert items["d1"].metadata == {"tenant": "default"}
    assert items["d2"].title == ""
    assert items["d2"].metadata == {"tenant": "lab", "tags": ["cardio"]}  # the record overrides the parameter
    assert items["3"].title == "Numeric id"
    assert found.rejected == ()


@pytest.mark.parametrize("name", ["corpus.jsonl.gz", "corpus.jsonl"])
def test_beir_folder_is_detected(tmp_path: Path, name: str) -> None:
    beir = tmp_path / "scifact-mini"
    beir.mkdir()
    corpus = _jsonl(beir / name, GOOD_RECORDS)
    _jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "does aspirin help?"}])
    (beir / "qrels").mkdir()
    _write(beir / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")

    found = discover(beir, settings=DEFAULTS)

    assert found.kind == "jsonl"
    assert found.source_key == str(corpus.resolve())
    assert _ids(found) == ["3", "d1", "d2"]  # the queries and qrels are not documents


def test_malformed_records_are_rejected_and_good_ones_survive(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"_id": "ok-1", "text": "First good record."},
            "{this is not json",
            "[1, 2, 3]",
            {"text": "A record without any id."},
            {"_id": "", "text": "A record with a blank id."},
            {"_id": "ok-1", "text": "Same id again."},
            {"_id": "no-text", "title": "Title only"},
            {"_id": "num-text", "text": 42},
            {"_id": "bad-meta", "text": "Metadata is a list.", "metadata": ["x"]},
            {"_id": "bad-meta-value", "text": "Nested metadata.", "metadata": {"acl": {"x": 1}}},
            "",
            {"_id": "ok-2", "text": "Second good record."},
        ],
    )
    where = str(path.resolve())

    found = discover(path, settings=DEFAULTS)

    assert _ids(found) == ["ok-1", "ok-2"]
    reasons = {(r.doc_id, r.source): r.reason for r in found.rejected}
    assert reasons[("line-2", f"{where}:2")].startswith("invalid JSON")
    assert reasons[("line-3", f"{where}:3")] == "not a JSON object"
    assert reasons[("line-4", f"{where}:4")] == "record has no _id or id"
    assert reasons[("line-5", f"{where}:5")] == "record has no _id or id"
    assert reasons[("ok-1", f"{where}:6")] == "duplicate id 'ok-1'"
    assert reasons[("no-text", f"{where}#no-text")] == "record has no string 'text'"
    assert reasons[("num-text", f"{where}#num-text")] == "record has no string 'text'"
    assert reasons[("bad-meta", f"{where}#bad-meta")] == "'metadata' must be a JSON object"
    assert (
        "must be a string, number, boolean or list of strings" in reasons[("bad-meta-value", f"{where}#bad-meta-value")]
    )
    assert len(found.rejected) == 9  # the blank line is skipped, not rejected
    assert {r.stage for r in found.rejected} == {"read"}


def test_record_hash_changes_with_text_title_and_metadata_only(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    records = [
        {"_id": "a", "title": "T", "text": "alpha", "metadata": {"lang": "en"}},
        {"_id": "b", "title": "T", "text": "beta"},
    ]
    _jsonl(path, records)
    base = _hashes(discover(path, settings=DEFAULTS))
    assert base == _hashes(discover(path, settings=DEFAULTS))

    # Reordering the file or the keys of a record changes nothing.
    _jsonl(path, [dict(reversed(list(records[1].items()))), records[0]])
    assert _hashes(discover(path, settings=DEFAULTS)) == base

    for change in ({"text": "alpha!"}, {"title": "T2"}, {"metadata": {"lang": "de"}}):
        _jsonl(path, [{**records[0], **change}, records[1]])
        changed = _hashes(discover(path, settings=DEFAULTS))
        assert changed["a"] != base["a"], change
        assert changed["b"] == base["b"], change

    _jsonl(path, records)
    assert _hashes(discover(path, settings=DEFAULTS, tenant="acme"))["b"] != base["b"]


def test_gzip_and_plain_jsonl_give_the_same_hashes(tmp_path: Path) -> None:
    plain = _hashes(discover(_jsonl(tmp_path / "c.jsonl", GOOD_RECORDS), settings=DEFAULTS))
    packed = _hashes(discover(_jsonl(tmp_path / "c.jsonl.gz", GOOD_RECORDS), settings=DEFAULTS))
    assert plain == packed


# ---------------------------------------------------------------------------------------------- bad sources
def test_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        discover(tmp_path / "nowhere", settings=DEFAULTS)


def test_plain_file_source_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a file"):
        discover(_write(tmp_path / "notes.txt", "x"), settings=DEFAULTS)


def test_truncated_gzip_raises(tmp_path: Path) -> None:
    whole = _jsonl(tmp_path / "whole.jsonl.gz", GOOD_RECORDS * 50).read_bytes()
    path = tmp_path / "truncated.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceError, match="cannot read"):
        discover(path, settings=DEFAULTS)


def test_corrupt_gzip_raises_source_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"definitely not deflate data" * 4)
    with pytest.raises(SourceError, match="cannot read"):
        discover(path, settings=DEFAULTS)


def test_non_utf8_jsonl_raises(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"_id": "a", "text": "x"}).encode() + b"\n" + b'{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(SourceError, match="cannot read"):
        discover(path, settings=DEFAULTS)
