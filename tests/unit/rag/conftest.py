"""Shared fixtures for the rag tests: one tiny real index (embedded Qdrant) built by the real ingestion, per module."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.settings import Settings
from pipelines.embed import Embedder
from pipelines.index import IndexReader, VectorIndex
from pipelines.ingest import run_ingest
from tests.fixtures.corpus import write_corpus


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
