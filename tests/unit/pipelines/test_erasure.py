"""What an erasure names: targets, tombstones that survive restarts, and id matching that never over-reaches."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.erasure import _mentions
from flows.settings import Settings
from pipelines.erasure import ErasureTarget, add_tombstone, erased_items, tombstone_file, tombstones
from pipelines.errors import ConfigError
from pipelines.types import SourceItem


def _item(doc_id: str, source: str, tenant: str | None = None) -> SourceItem:
    return SourceItem(doc_id, source, "file", "h", 1, {"tenant": tenant} if tenant else {})


def test_a_source_covers_its_files_but_not_a_sibling_with_the_same_prefix(tmp_path: Path) -> None:
    target = ErasureTarget.of(collection="docs", doc=None, source=str(tmp_path / "acme"), tenant=None)
    assert target.covers("x", str(tmp_path / "acme" / "a.md"), None)
    assert target.covers("x", str(tmp_path / "acme"), None)
    assert not target.covers("x", str(tmp_path / "acme2" / "a.md"), None)


def test_a_tenant_covers_its_prefixed_ids_and_its_payload() -> None:
    target = ErasureTarget.of(collection="docs", doc=None, source=None, tenant="acme")
    assert target.covers("acme:a.md", "/s/a.md", None)
    assert target.covers("a.md", "/s/a.md", "acme")  # tenant set by a sidecar on an untenanted id
    assert not target.covers("acme2:a.md", "/s/a.md", "acme2")


@pytest.mark.parametrize(("doc", "source", "tenant"), [(None, None, None), ("a", None, "b"), ("a", "/x", None)])
def test_exactly_one_thing_is_named(doc: str | None, source: str | None, tenant: str | None) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        ErasureTarget.of(collection="docs", doc=doc, source=source, tenant=tenant)


def test_tombstones_hide_items_of_their_collection_only_and_skip_malformed_lines(settings: Settings) -> None:
    add_tombstone(settings, ErasureTarget.of(collection="docs", doc="acme:a.md", source=None, tenant=None))
    add_tombstone(settings, ErasureTarget.of(collection="other", doc=None, source=None, tenant="beta"))
    with tombstone_file(settings).open("a") as f:
        f.write("{not json\n")
    stones = tombstones(settings, "docs")
    assert [s.value for s in stones] == ["acme:a.md"]
    items = [_item("acme:a.md", "/s/a.md", "acme"), _item("acme:b.md", "/s/b.md", "acme"), _item("beta:c", "/c")]
    assert erased_items(items, stones) == {"acme:a.md"}
    assert erased_items(items, tombstones(settings, "other")) == {"beta:c"}  # the id prefix names the tenant


def test_a_document_id_is_matched_as_a_whole_token() -> None:
    pattern = _mentions({"a.md", "acme:x/y.md"})
    assert pattern is not None
    assert pattern.search('{"doc_id": "a.md"}') and pattern.search("cited: acme:x/y.md, other")
    assert not pattern.search("data.md") and not pattern.search("a.md.bak") and not pattern.search("acme:x/y.mdx")
    assert _mentions(set()) is None
