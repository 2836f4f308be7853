"""Shared fixtures for the rag tests: one tiny real index (embedded Qdrant) built by the real ingestion, per module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.embed import Embedder
from pipelines.index import IndexReader, VectorIndex
from pipelines.ingest import run_ingest
from pipelines.settings import Settings

# Six short documents with distinct facts, in two tenants. Both tenants have a document about Mount Kerrigan, so a
# tenant filter visibly changes what a volcano question retrieves.
DOCS: dict[str, str] = {
    "acme/volcano.md": (
        "# Mount Kerrigan\n\n"
        "Mount Kerrigan is a dormant volcano in the Aldren Range. "
        "Its last eruption happened in 1847 and covered the valley of Tesh in ash. "
        "The summit reaches 3,412 metres above sea level.\n"
    ),
    "acme/bakery.md": (
        "# The Copper Kettle Bakery\n\n"
        "The Copper Kettle Bakery opened in 1962 on Harbour Street. "
        "Its best-known product is a rye sourdough loaf baked in a wood-fired oven. "
        "The bakery is closed every Monday.\n"
    ),
    "acme/satellite.txt": (
        "Orion-7 Weather Satellite\n\n"
        "The Orion-7 weather satellite was launched on 3 March 2019 from the Kourou spaceport. "
        "It circles the Earth at an altitude of 705 kilometres and measures sea surface temperature. "
        "The mission is planned to end in 2031.\n"
    ),
    "globex/chess.md": (
        "# Zelda Marsh Chess Club\n\n"
        "The Zelda Marsh chess club meets on Thursday evenings in the old library. "
        "The club champion in 2023 was Priya Anand, who won eleven of her twelve games.\n"
    ),
    "globex/grinder.md": (
        "# Burrmaster 500 Coffee Grinder\n\n"
        "The Burrmaster 500 coffee grinder has 40 grind settings. "
        "Descale the grinder every three months with citric acid. "
        "The warranty for the Burrmaster 500 lasts two years.\n"
    ),
    "globex/kerrigan-hike.md": (
        "# Hiking Mount Kerrigan\n\n"
        "The trail to the top of Mount Kerrigan starts in the village of Lorn. "
        "Hikers need about six hours to reach the crater rim and should carry three litres of water.\n"
    ),
}


def write_corpus(root: Path) -> Path:
    """Write :data:`DOCS` under ``root`` with a ``_meta.json`` tenant per folder."""
    for rel, text in DOCS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for tenant in ("acme", "globex"):
        (root / tenant / "_meta.json").write_text(f'{{"tenant": "{tenant}"}}', encoding="utf-8")
    return root


@dataclass(frozen=True)
class BuiltIndex:
    """A published index version of the tiny corpus."""

    settings: Settings
    corpus: Path


@pytest.fixture(scope="module")
def built_index(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[BuiltIndex]:
    """Ingest the tiny corpus once per module (the real pipeline: partition, chunk, embed, upsert, publish)."""
    root = tmp_path_factory.mktemp("rag-index")
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("RAGOPS_"):
                patch.delenv(key)
        patch.setenv("RAGOPS_HOME", str(root / "home"))
        patch.setenv("RAGOPS_CACHE", str(shared_cache))
        settings = Settings()
        settings.ensure_dirs()
        corpus = write_corpus(root / "corpus")
        report = run_ingest(settings, corpus)
        assert report.published and report.documents_failed == 0, report.to_json()
        yield BuiltIndex(settings=settings, corpus=corpus)


@pytest.fixture(scope="module")
def embedder(built_index: BuiltIndex) -> Embedder:
    """The index's embedder, loaded once per module."""
    model = Embedder(built_index.settings.embedder, cache_dir=built_index.settings.cache_dir)
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def reader(built_index: BuiltIndex) -> Iterator[IndexReader]:
    """An open reader on the current version."""
    with VectorIndex(built_index.settings).reader() as opened:
        yield opened


def copy_index(built: BuiltIndex, settings: Settings) -> None:
    """Give a test's own RAGOPS_HOME the module's published index (cheaper than ingesting again)."""
    skip = shutil.ignore_patterns("readers", ".lock")
    shutil.copytree(built.settings.qdrant_dir, settings.qdrant_dir, dirs_exist_ok=True, ignore=skip)
