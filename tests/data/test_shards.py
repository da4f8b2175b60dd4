"""ArrayRecord shards and their manifest: only listed shards count, damage is named, no duplicates."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import msgpack
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.records import EpisodeRecord, SchemaVersionError
from dagger_jax.data.shards import (
    MANIFEST,
    EpisodeSource,
    ShardError,
    ShardWriter,
    existing_episode_ids,
    iter_records,
    read_manifest,
)
from dagger_jax.storage.layout import all_iteration_dirs, iteration_dir
from tests.data.episodes import episode_batch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def records(chat: ChatTokenizer) -> list[EpisodeRecord]:
    return episode_batch(chat, 7)


def _write(directory: Path, records, prefix: str = "w0", per_shard: int = 3) -> list[Path]:
    with ShardWriter(directory, prefix, per_shard) as writer:
        for record in records:
            writer.write(record)
    return writer.shards_written


def test_write_then_read_back(tmp_path: Path, records) -> None:
    shards = _write(tmp_path, records)
    assert [p.name for p in shards] == ["w0-00000.arecord", "w0-00001.arecord", "w0-00002.arecord"]
    listed = read_manifest(tmp_path)
    assert [(s.name, s.num_episodes) for s in listed] == [(p.name, n) for p, n in zip(shards, (3, 3, 1))]
    assert [i for s in listed for i in s.episode_ids] == [r.episode_id for r in records]
    assert all(s.bytes == s.path.stat().st_size and s.schema_version == 1 for s in listed)
    assert list(iter_records(tmp_path)) == records
    assert existing_episode_ids(tmp_path) == {r.episode_id for r in records}
    manifest_line = json.loads((tmp_path / MANIFEST).read_text().splitlines()[0])
    assert manifest_line["turn_summaries"] == [r.turn_summaries() for r in records[:3]]
    # Random access (group_size:1) with zstd, as the DESIGN's wire format says.
    options = ArrayRecordReader(str(shards[0])).writer_options_string()
    assert "group_size:1," in options and "zstd:3" in options


def test_random_access_source_works_with_grain(tmp_path: Path, records) -> None:
    _write(tmp_path, records)
    source = EpisodeSource(tmp_path)
    assert len(source) == 7 and source[5] == records[5] and source[0] == records[0]
    dataset = grain.MapDataset.source(source).map(lambda r: r.episode_id)
    assert [dataset[i] for i in (6, 2, 4)] == [records[i].episode_id for i in (6, 2, 4)]
    assert source.turn_summaries(4) == records[4].turn_summaries()


def test_write_refuses_an_episode_already_stored(tmp_path: Path, records) -> None:
    _write(tmp_path, records[:3])
    with ShardWriter(tmp_path, "w1", 3) as writer:
        assert writer.write(records[1]) is False  # listed by another writer already
        assert writer.write(records[3]) is True
        assert writer.write(records[3]) is False  # written by this writer
    assert list(iter_records(tmp_path)) == records[:4]


# A collector that is SIGKILLed with a full shard listed and a second one half written.
_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import msgpack
    from dagger_jax.data.records import EpisodeRecord
    from dagger_jax.data.shards import ShardWriter
    blobs = msgpack.unpackb(Path(sys.argv[2]).read_bytes())
    writer = ShardWriter(sys.argv[1], "w0", 2)
    for blob in blobs:
        writer.write(EpisodeRecord.from_bytes(blob))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_writer_loses_no_listed_shard(tmp_path: Path, records) -> None:
    data = tmp_path / "iter_000"
    blobs = tmp_path / "blobs.msgpack"
    blobs.write_bytes(msgpack.packb([r.to_bytes() for r in records[:3]]))
    run = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(data), str(blobs)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert (data / "w0-00001.arecord.tmp").exists()  # the half shard, never listed
    assert [s.name for s in read_manifest(data)] == ["w0-00000.arecord"]
    assert list(iter_records(data)) == records[:2]
    assert existing_episode_ids(data) == {records[0].episode_id, records[1].episode_id}
    # A resumed collector: the temp goes, numbering goes on, the lost episode is redone.
    with ShardWriter(data, "w0", 2) as writer:
        assert not (data / "w0-00001.arecord.tmp").exists()
        for record in records:
            if record.episode_id not in existing_episode_ids(data):
                writer.write(record)
    assert [s.name for s in read_manifest(data)][0] == "w0-00000.arecord"
    assert list(iter_records(data)) == records


def test_killed_between_rename_and_manifest_line(tmp_path: Path, records, monkeypatch, caplog) -> None:
    _write(tmp_path, records[:3])
    writer = ShardWriter(tmp_path, "w0", 2)

    class Killed(Exception):
        pass

    def crash(line: bytes) -> None:
        raise Killed

    monkeypatch.setattr(writer, "_append_manifest", crash)
    writer.write(records[3])
    with pytest.raises(Killed):
        writer.write(records[4])  # the shard fills, is renamed, and is never listed
    assert (tmp_path / "w0-00001.arecord").exists()
    assert list(iter_records(tmp_path)) == records[:3]
    os.close(writer._lock_fd)  # the process dies: the kernel drops its prefix lock
    writer._lock_fd = -1
    with caplog.at_level(logging.WARNING):
        resumed = ShardWriter(tmp_path, "w0", 2)
    assert "w0-00001.arecord is not listed" in caplog.text
    resumed.write(records[3])
    assert resumed.flush().name == "w0-00002.arecord"  # the unlisted file is never overwritten
    assert [r.episode_id for r in iter_records(tmp_path)] == [r.episode_id for r in records[:4]]


def test_an_unfinished_manifest_line_is_ignored_then_repaired(tmp_path: Path, records, caplog) -> None:
    _write(tmp_path, records[:3])
    with open(tmp_path / MANIFEST, "a") as f:
        f.write('{"shard": "w0-00009.arecord", "num_epi')  # a writer killed mid-append
    with caplog.at_level(logging.WARNING):
        assert len(read_manifest(tmp_path)) == 1
    assert "unfinished last line" in caplog.text
    _write(tmp_path, records[3:5], prefix="w1")
    assert (tmp_path / MANIFEST).read_text().count("\n") == 2
    assert list(iter_records(tmp_path)) == records[:5]


def test_a_bad_manifest_line_is_named(tmp_path: Path, records) -> None:
    _write(tmp_path, records[:3])
    with open(tmp_path / MANIFEST, "a") as f:
        f.write("not json\n")
    with pytest.raises(ShardError, match=rf"{MANIFEST} line 2: not a manifest entry"):
        read_manifest(tmp_path)


def test_a_listed_shard_that_is_missing_is_named(tmp_path: Path, records) -> None:
    shards = _write(tmp_path, records[:3])
    shards[0].unlink()
    with pytest.raises(ShardError, match=r"listed shard .*w0-00000.arecord does not exist"):
        read_manifest(tmp_path)


def test_a_truncated_shard_is_refused_naming_the_file(tmp_path: Path, records) -> None:
    shards = _write(tmp_path, records, per_shard=4)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    source = EpisodeSource(tmp_path)
    assert source[0] == records[0]  # the other shard is fine
    with pytest.raises(ShardError, match=r"w0-00001.arecord .*truncated"):
        source[5]
    with pytest.raises(ShardError, match=r"w0-00001.arecord"):
        list(iter_records(tmp_path))


def test_a_corrupt_shard_is_refused_naming_file_and_record(tmp_path: Path, records) -> None:
    (shard,) = _write(tmp_path, records[:1], per_shard=4)
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF  # inside the first record's chunk; the size stays the same
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"w0-00000.arecord"):
        EpisodeSource(tmp_path)[0]


class _FutureRecord(EpisodeRecord):
    """Encodes as a record of the next schema version (as a newer collector would write)."""

    def to_bytes(self) -> bytes:
        raw = msgpack.unpackb(super().to_bytes())
        raw["schema_version"] += 1
        return msgpack.packb(raw)


def test_a_record_from_a_newer_schema_is_refused_clearly(tmp_path: Path, records) -> None:
    import dataclasses

    future = _FutureRecord(**{f.name: getattr(records[1], f.name) for f in dataclasses.fields(records[1])})
    _write(tmp_path, [records[0], future])
    source = EpisodeSource(tmp_path)
    assert source[0] == records[0]
    with pytest.raises(SchemaVersionError, match=r"w0-00000.arecord record 1: .*schema_version 2"):
        source[1]


def test_a_shard_listed_with_a_newer_schema_is_refused(tmp_path: Path, records) -> None:
    _write(tmp_path, records[:2])
    manifest = tmp_path / MANIFEST
    entry = json.loads(manifest.read_text())
    entry["schema_version"] = 2
    manifest.write_text(json.dumps(entry) + "\n")
    with pytest.raises(SchemaVersionError, match=r"line 1 \(shard w0-00000.arecord\).*schema_version 2"):
        existing_episode_ids(tmp_path)


def test_duplicates_across_shards_and_dirs_are_read_once(tmp_path: Path, records, caplog) -> None:
    first, second = iteration_dir(tmp_path, 0), iteration_dir(tmp_path, 1)
    concurrent = ShardWriter(first, "w9", 3)  # opened before episode 0 was listed
    _write(first, records[:4])
    _write(second, records[2:6])  # an episode re-collected in a later iteration: ids 2 and 3
    with concurrent:
        assert concurrent.write(records[6]) and concurrent.write(records[0])
    with caplog.at_level(logging.WARNING):
        source = EpisodeSource(all_iteration_dirs(tmp_path))
    assert source.episode_ids() == [r.episode_id for r in (*records[:4], records[6], *records[4:6])]
    assert source.num_duplicates == 3
    assert "3 duplicate episode(s) skipped" in caplog.text
    assert len(list(iter_records([first, second]))) == 7


def test_iteration_layout(tmp_path: Path, records) -> None:
    assert iteration_dir(tmp_path, 3) == tmp_path / "data" / "iter_003"
    for i in (10, 2, 0):
        _write(iteration_dir(tmp_path, i), records[:1])
    (tmp_path / "data" / "iter_x").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("")
    assert [p.name for p in all_iteration_dirs(tmp_path)] == ["iter_000", "iter_002", "iter_010"]
    assert all_iteration_dirs(tmp_path / "nothing") == []
    with pytest.raises(ValueError):
        iteration_dir(tmp_path, -1)


def test_writers_of_other_prefixes_keep_their_temp_files(tmp_path: Path, records) -> None:
    busy = ShardWriter(tmp_path, "w1", 10)
    busy.write(records[0])  # w1 has an open temp shard
    assert (tmp_path / "w1-00000.arecord.tmp").exists()
    _write(tmp_path, records[1:3], prefix="w2")
    assert (tmp_path / "w1-00000.arecord.tmp").exists()
    with pytest.raises(RuntimeError, match="prefix 'w1' is in use"):
        ShardWriter(tmp_path, "w1")  # would remove busy's temp file
    busy.close()
    with pytest.raises(ValueError, match="is closed"):
        busy.write(records[5])
    assert {r.episode_id for r in iter_records(tmp_path)} == {r.episode_id for r in records[:3]}
    ShardWriter(tmp_path, "w1").close()  # free again


def test_bad_writer_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prefix"):
        ShardWriter(tmp_path, "a/b")
    with pytest.raises(ValueError, match="records_per_shard"):
        ShardWriter(tmp_path, "w", 0)
    with pytest.raises(FileNotFoundError, match="no record directory"):
        read_manifest(tmp_path / "missing")
    assert read_manifest(tmp_path) == [] and list(iter_records(tmp_path)) == []
    ShardWriter(tmp_path, "w").close()
    assert os.listdir(tmp_path) == [".w.lock"]  # a writer that wrote nothing lists nothing


def test_a_failed_listing_leaves_the_writer_usable(tmp_path: Path, records, monkeypatch) -> None:
    writer = ShardWriter(tmp_path, "w0", 2)
    real_append = writer._append_manifest

    def disk_full(line: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_append_manifest", disk_full)
    writer.write(records[0])
    with pytest.raises(OSError, match="No space"):
        writer.write(records[1])
    monkeypatch.setattr(writer, "_append_manifest", real_append)
    with writer:  # the collector goes on: both episodes can be written again
        assert writer.write(records[0]) and writer.write(records[1]) and writer.write(records[2])
    assert [s.name for s in read_manifest(tmp_path)] == ["w0-00001.arecord", "w0-00002.arecord"]
    assert list(iter_records(tmp_path)) == records[:3]
