"""storage/store.py against the GCS emulator and on local disk: a published directory is
whole or absent, a local copy follows republication, and a path that lost its scheme is
refused."""

from __future__ import annotations

import pytest

from dagger_jax.storage.store import (PUBLISHED, DamagedCopy, is_published, local_dir,
                                      read_text_whole, staged_dir, store_path, write_text_atomic)
from tests.gcs_emulator import create_bucket, object_names


def test_a_directory_is_published_whole_or_not_at_all(gcs, tmp_path):
    bucket = create_bucket(gcs, "store-tests")
    for root in (bucket, str(tmp_path)):
        target = store_path(root) / "export"
        with pytest.raises(RuntimeError, match="disk full"):
            with staged_dir(target) as staged:
                (staged / "model.safetensors").write_text("half")
                raise RuntimeError("disk full")
        assert not is_published(target) and not target.exists(), root
        for version in ("v1", "v2"):
            with staged_dir(target) as staged:
                (staged / "config.json").write_text(version)
                (staged / "nested").mkdir()
                (staged / "nested" / "file.txt").write_text(version)
            assert is_published(target)
            assert (target / "config.json").read_text() == version
            copy = local_dir(target, cache=tmp_path / "cache")
            assert (copy / "nested" / "file.txt").read_text() == version  # not a stale copy
    # In the bucket: every file, the marker among them.
    names = object_names(gcs, "store-tests", "export/")
    assert sorted(names) == ["export/PUBLISHED", "export/config.json", "export/nested/file.txt"]
    assert PUBLISHED in {n.rsplit("/", 1)[-1] for n in names}


def test_an_unpublished_remote_directory_is_not_read(gcs):
    bucket = create_bucket(gcs, "store-unpublished")
    half = store_path(bucket) / "export"
    (half / "config.json").write_text("{}")  # files without the marker: a copy cut short
    with pytest.raises(FileNotFoundError, match="not a published directory"):
        local_dir(half)


def test_a_replaced_file_reads_as_one_version_while_it_is_rewritten(gcs, tmp_path):
    """A reader racing write_text_atomic (another host polling state.json) gets the old text
    or the new, never one's length with the other's bytes."""
    import threading

    versions = [("{" + f'"v": {i}, "pad": "' + "x" * (i * 37 % 500) + '"}') for i in range(60)]
    for root in (create_bucket(gcs, "store-whole"), str(tmp_path)):
        path = store_path(root) / "state.json"
        write_text_atomic(path, versions[0])
        done = threading.Event()
        seen: list[str] = []

        def writer():
            for text in versions[1:]:
                write_text_atomic(path, text)
            done.set()

        threading.Thread(target=writer).start()
        while not done.is_set():
            seen.append(read_text_whole(path))
        assert seen and set(seen) <= set(versions)
        assert read_text_whole(path) == versions[-1]


@pytest.mark.parametrize("text", ["gs:/bucket/run", "s3://bucket/run"])
def test_a_location_that_is_neither_local_nor_gs_is_refused(text):
    with pytest.raises(ValueError, match="a local path or gs://bucket/path"):
        store_path(text)


def test_a_copy_is_checked_file_by_file_against_its_publication(gcs, tmp_path):
    bucket = create_bucket(gcs, "store-damaged")
    target = store_path(bucket) / "export"
    with staged_dir(target) as staged:
        (staged / "model.safetensors").write_bytes(b"weights" * 100)
    stored = target / "model.safetensors"
    # The object changed after publication (same size, other bytes): both downloads differ.
    stored.write_bytes(b"Weights" + b"weights" * 99)
    with pytest.raises(DamagedCopy, match=r"export/model.safetensors: every download differs"):
        local_dir(target, cache=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("export-*/model.safetensors"))  # no copy kept
