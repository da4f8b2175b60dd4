"""data/shard_sync.py against the GCS emulator: a shard directory in a bucket is written through
a local copy and read on another machine (another cache) with the same episodes; the bucket's
manifest lists a shard only once it is uploaded whole; a damaged download is fetched again,
then refused naming the object."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.records import EpisodeRecord
from dagger_jax.data.shard_sync import SyncedShardDir
from dagger_jax.data.shards import MANIFEST, EpisodeSource, ShardError, ShardWriter, read_manifest
from dagger_jax.storage.store import store_path
from tests.data.episodes import episode_batch
from tests.gcs_emulator import create_bucket, object_names


@pytest.fixture(scope="module")
def records(chat: ChatTokenizer) -> list[EpisodeRecord]:
    return episode_batch(chat, 5)


def write(synced: SyncedShardDir, records, per_shard: int = 2) -> None:
    with ShardWriter(synced.pull(), "w0", per_shard, on_listed=synced.push) as writer:
        for record in records:
            writer.write(record)


def ids(directory: Path) -> list[str]:
    return EpisodeSource(directory).episode_ids()


def test_shards_written_here_are_read_on_another_machine(gcs, tmp_path, records):
    bucket = create_bucket(gcs, "sync-roundtrip")
    target = f"{bucket}/data/iter_001"
    write(SyncedShardDir(target, cache=tmp_path / "here"), records)
    # Each shard was published as it was listed: three shards, then the manifest.
    assert sorted(object_names(gcs, "sync-roundtrip", "data/iter_001/")) == [
        f"data/iter_001/{MANIFEST}", *(f"data/iter_001/w0-0000{n}.arecord" for n in range(3))]
    elsewhere = SyncedShardDir(target, cache=tmp_path / "there").pull()
    assert ids(elsewhere) == [r.episode_id for r in records]
    assert [r.to_bytes() for r in EpisodeSource(elsewhere)] == [r.to_bytes() for r in records]
    # A directory the store does not have reads as empty, and leaves no manifest behind.
    empty = SyncedShardDir(f"{bucket}/data/iter_002", cache=tmp_path / "there").pull()
    assert read_manifest(empty) == []


def test_a_cut_upload_lists_nothing_and_the_next_push_publishes_it(gcs, tmp_path, records,
                                                                      monkeypatch):
    bucket = create_bucket(gcs, "sync-cut")
    synced = SyncedShardDir(f"{bucket}/run/iter_001", cache=tmp_path / "here")
    write(synced, records[:2])  # one shard, published
    real_write = type(store_path(bucket)).write_bytes

    def cut(self, data):
        raise ConnectionResetError("connection cut mid-upload")
    monkeypatch.setattr(type(store_path(bucket)), "write_bytes", cut)
    with pytest.raises(ConnectionResetError):
        write(synced, records[2:4])
    # The bucket lists only the first shard; a reader elsewhere sees exactly its episodes.
    reader = SyncedShardDir(f"{bucket}/run/iter_001", cache=tmp_path / "reader")
    assert ids(reader.pull()) == [r.episode_id for r in records[:2]]
    # The process that wrote the second shard keeps it (its manifest extends the store's) and
    # its next push publishes it.
    monkeypatch.setattr(type(store_path(bucket)), "write_bytes", real_write)
    assert ids(synced.pull()) == [r.episode_id for r in records[:4]]
    assert synced.push() == 1
    assert ids(reader.pull()) == [r.episode_id for r in records[:4]]
    # A copy that no longer extends the store's manifest may not publish over it.
    write(SyncedShardDir(f"{bucket}/run/iter_001", cache=tmp_path / "reader"), records[4:])
    with pytest.raises(ShardError, match="does not extend"):
        synced.push()
    # Pulling replaces it with the store's.
    assert ids(synced.pull()) == [r.episode_id for r in records]


def test_a_damaged_download_is_fetched_again_then_refused(gcs, tmp_path, records, monkeypatch,
                                                          caplog):
    bucket = create_bucket(gcs, "sync-damage")
    target = f"{bucket}/iter_001"
    write(SyncedShardDir(target, cache=tmp_path / "here"), records[:2])
    shard = store_path(target) / "w0-00000.arecord"
    whole = shard.read_bytes()
    # One download cut short, the next whole: the shard arrives.
    answers = iter([whole[: len(whole) // 2], whole])
    real_read = type(shard).read_bytes
    monkeypatch.setattr(type(shard), "read_bytes",
                        lambda self: next(answers) if self.name == shard.name else real_read(self))
    with caplog.at_level(logging.WARNING, logger="dagger_jax.storage.store"):
        copy = SyncedShardDir(target, cache=tmp_path / "first").pull()
    assert ids(copy) == [r.episode_id for r in records[:2]]
    assert "download 1 of 2 differs" in caplog.text
    monkeypatch.setattr(type(shard), "read_bytes", real_read)
    # The stored object itself damaged (same size, other bytes): refused, naming it.
    shard.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))
    with pytest.raises(ShardError, match=r"w0-00000.arecord: every download differs"):
        SyncedShardDir(target, cache=tmp_path / "second").pull()
