"""Shards and replication of the server collections ragops creates (``RAGOPS_QDRANT__SHARD_NUMBER``, ...).

No Qdrant server installs here, so the "server" is qdrant-client's in-memory mode, which accepts these arguments and
ignores them (a collection there always reads back one shard, one replica). What can be checked without a cluster is
the wiring, through qdrant-client's real ``QdrantClient.create_collection``: it refuses unknown keyword arguments,
so a misspelled or renamed parameter fails here, and the values each creation receives are recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from qdrant_client import QdrantClient

from flows.settings import Settings
from pipelines.chunk import ChunkingParams
from pipelines.embed import EmbedderIdentity
from pipelines.index import DocEntry, VectorIndex
from pipelines.sparse import SparseVector
from pipelines.store import ClientStore, Placement, StoreSchema

DIM = 4
IDENTITY = EmbedderIdentity(name="test", weights_sha256="b" * 64, dim=DIM, max_tokens=128)
CHUNKING = ChunkingParams(splitter="sentence", chunk_size=128, chunk_overlap=0, tokenizer="t")
PLACEMENT_KEYS = ("shard_number", "replication_factor", "write_consistency_factor")


class RecordingClient(QdrantClient):
    """The in-memory client, shared by every caller (``close`` is a no-op), recording each collection's creation."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.created: dict[str, dict[str, Any]] = {}

    def create_collection(self, collection_name: str, **kwargs: Any) -> bool:  # type: ignore[override]
        self.created[collection_name] = {k: kwargs.get(k) for k in PLACEMENT_KEYS}
        return super().create_collection(collection_name, **kwargs)

    def close(self, **kwargs: Any) -> None:
        pass

    def really_close(self) -> None:
        super().close()


@pytest.fixture
def client() -> Iterator[RecordingClient]:
    recording = RecordingClient()
    yield recording
    recording.really_close()


def _settings(tmp_path: Path, **qdrant: Any) -> Settings:
    settings = Settings(home=tmp_path / "home", cache=tmp_path / "cache")
    return settings.model_copy(update={"qdrant": settings.qdrant.model_copy(update=qdrant)})


def _publish_one(index: VectorIndex) -> None:
    writer = index.begin(embedder=IDENTITY, chunking=CHUNKING, avgdl=5.0, run_id="r")
    chunk = str(uuid.uuid5(uuid.NAMESPACE_OID, "c0"))
    writer.upsert_points(
        [chunk],
        np.array([[1.0, 0.0, 0.0, 0.0]], np.float32),
        [SparseVector([1, 2], [1.0, 1.0])],
        [{"doc_id": "d", "tenant": "t", "source": "s", "text": "c0"}],
    )
    writer.publish({"d": DocEntry("d", "h", "src", "s", "d", (chunk,))})


# ------------------------------------------------------------------------------------------------------- settings
def test_env_names_reach_the_qdrant_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGOPS_QDRANT__SHARD_NUMBER", "6")
    monkeypatch.setenv("RAGOPS_QDRANT__REPLICATION_FACTOR", "2")
    monkeypatch.setenv("RAGOPS_QDRANT__WRITE_CONSISTENCY_FACTOR", "1")
    cfg = Settings(home=tmp_path).qdrant
    assert (cfg.shard_number, cfg.replication_factor, cfg.write_consistency_factor) == (6, 2, 1)


def test_unset_means_qdrants_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in PLACEMENT_KEYS:
        monkeypatch.delenv(f"RAGOPS_QDRANT__{key.upper()}", raising=False)
    assert VectorIndex(Settings(home=tmp_path)).placement == Placement()


@pytest.mark.parametrize("key", PLACEMENT_KEYS)
def test_zero_is_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=key):
        Settings(home=tmp_path, qdrant={key: 0})


def test_more_write_acknowledgements_than_copies_is_refused(tmp_path: Path) -> None:
    # Qdrant would create the collection and then fail every write to it.
    with pytest.raises(ValidationError, match=r"write_consistency_factor \(3\) exceeds .*replication_factor \(2\)"):
        Settings(home=tmp_path, qdrant={"replication_factor": 2, "write_consistency_factor": 3})
    # Unknown replication factor (the cluster's default): nothing to compare against, accepted.
    assert Settings(home=tmp_path, qdrant={"write_consistency_factor": 2}).qdrant.write_consistency_factor == 2


# ---------------------------------------------------------------------------------------------------- server mode
def test_server_collections_are_created_with_the_placement(client: RecordingClient, tmp_path: Path) -> None:
    settings = _settings(tmp_path, shard_number=6, replication_factor=2, write_consistency_factor=1)
    index = VectorIndex(settings, collection="docs", client_factory=lambda: client)
    _publish_one(index)
    expected = {"shard_number": 6, "replication_factor": 2, "write_consistency_factor": 1}
    # The data and the catalog (manifests, writer lease) alike: losing a node must not lose either.
    assert client.created == {"docs__data": expected, "docs__ragops": expected}
    with index.reader() as reader:
        assert reader.count() == 1


def test_server_collections_leave_unset_values_to_qdrant(client: RecordingClient, tmp_path: Path) -> None:
    index = VectorIndex(_settings(tmp_path), collection="docs", client_factory=lambda: client)
    _publish_one(index)
    unset = dict.fromkeys(PLACEMENT_KEYS)
    assert client.created == {"docs__data": unset, "docs__ragops": unset}


def test_client_store_passes_the_placement(client: RecordingClient) -> None:
    ClientStore.create(client, "c", StoreSchema(dim=DIM), placement=Placement(shard_number=3, replication_factor=1))
    assert client.created["c"] == {"shard_number": 3, "replication_factor": 1, "write_consistency_factor": None}


# ------------------------------------------------------------------------------------------------------- embedded
def test_embedded_mode_ignores_the_placement(tmp_path: Path) -> None:
    """The Edge engine is one shard in one process: the settings are accepted and change nothing."""
    index = VectorIndex(_settings(tmp_path, shard_number=6, replication_factor=2, write_consistency_factor=2))
    assert not index.server_mode
    _publish_one(index)
    with index.reader() as reader:
        assert reader.count() == 1
