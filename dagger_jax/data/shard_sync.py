"""Trajectory shards in object storage, written and read through a local working copy.

ArrayRecord reads and writes local files only. A shard directory in a bucket
(`gs://.../data/iter_NNN`) is worked on in a local directory (storage.working_copy: the same
one across restarts on a machine) that `pull` brings up to the store and `push` publishes:

- push uploads every shard the store's manifest does not list yet, each checked against its
  manifest line (size, sha256), then replaces the manifest object with the local manifest's
  finished lines. One object upload is atomic on GCS, and every shard a manifest lists was
  uploaded before it: "a shard counts once its manifest line is written" holds in the bucket,
  for any reader, at any moment a writer is killed.
- pull takes the store's manifest and downloads the listed shards the copy lacks, each checked
  against its line (a damaged download is fetched again, then refused naming the object).
  A local manifest that already extends the store's (shards written here, their push cut off
  by a kill) is kept, and the next push publishes them; a copy of a directory the store does
  not have at all is emptied.

The store's manifest is the truth: a local copy that disagrees with it otherwise is replaced
(its unlisted shards then do not count, and their episodes are collected again). One writer
per remote directory at a time (the collecting process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from dagger_jax.data.shards import MANIFEST, ShardError
from dagger_jax.storage.store import (DamagedCopy, PathLike, StorePath, is_remote,
                                      read_text_whole, store_path,
                                      verified_read, working_copy)

log = logging.getLogger(__name__)


class SyncedShardDir:
    """One shard directory: `local` is where ShardWriter / EpisodeSource work; for a local
    directory that is the directory itself and pull / push do nothing."""

    def __init__(self, directory: PathLike, cache: PathLike | None = None) -> None:
        self.target: StorePath = store_path(directory)
        self.remote = is_remote(self.target)
        self.local = working_copy(self.target, cache)

    def pull(self) -> Path:
        """Brings the local copy up to the store (module doc); returns the local directory."""
        if not self.remote:
            return self.local
        stored = self._stored_lines()
        if not stored:
            # Nothing published (a new directory, or one removed from the bucket): whatever a
            # copy here holds is not this run's, or lost its first push; it goes.
            shutil.rmtree(self.local, ignore_errors=True)
            self.local.mkdir(parents=True)
            return self.local
        held = _finished_lines(self.local / MANIFEST)
        if held[:len(stored)] == stored:
            return self.local  # the same, or ahead by shards not pushed yet
        for number, line in enumerate(stored, start=1):
            entry = _entry(line, f"{self.target / MANIFEST} line {number}")
            destination = self.local / entry["shard"]
            if not _matches(destination, entry):
                self._fetch(entry, destination)
        _write_local(self.local / MANIFEST, "".join(stored))
        log.info("%s: %d shard(s) taken from %s", self.local, len(stored), self.target)
        return self.local

    def push(self, _shard: Path | None = None) -> int:
        """Publishes the local shards the store does not list, then the manifest; returns how
        many shards were uploaded. (Takes a shard path, ignored, to serve as a ShardWriter's
        on_listed.)"""
        if not self.remote:
            return 0
        held = _finished_lines(self.local / MANIFEST)
        stored = self._stored_lines()
        if held == stored:
            return 0
        if held[:len(stored)] != stored:
            raise ShardError(
                f"{self.local}: the local manifest does not extend {self.target / MANIFEST} "
                "(another process wrote there since this copy was pulled); pull first")
        uploaded = 0
        for number, line in enumerate(held[len(stored):], start=len(stored) + 1):
            entry = _entry(line, f"{self.local / MANIFEST} line {number}")
            source = self.local / entry["shard"]
            if not _matches(source, entry):
                raise ShardError(f"{source}: differs from its manifest line {number} (size or "
                                 "sha256): not published")
            (self.target / entry["shard"]).write_bytes(source.read_bytes())
            uploaded += 1
        (self.target / MANIFEST).write_text("".join(held))
        return uploaded

    def _stored_lines(self) -> list[str]:
        manifest = self.target / MANIFEST
        return _split_finished(read_text_whole(manifest)) if manifest.exists() else []

    def _fetch(self, entry: dict, destination: Path) -> None:
        try:
            data = verified_read(self.target / entry["shard"], entry)
        except DamagedCopy as e:
            raise ShardError(str(e)) from None
        tmp = destination.with_name(f"{destination.name}.pull-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, destination)


def pulled(dirs: PathLike | Sequence[PathLike]) -> list[Path]:
    """Local directories holding the shards of `dirs` (each pulled first; local ones as they
    are): what readers (EpisodeSource, the trajectory pipeline) are given."""
    if isinstance(dirs, str | os.PathLike):
        dirs = [dirs]
    return [SyncedShardDir(d).pull() for d in dirs]


def _split_finished(text: str) -> list[str]:
    """The lines of a manifest that end in a newline (a last line without one is unfinished:
    shards.read_manifest ignores it too), each with its newline."""
    lines = text.split("\n")[:-1]
    return [line + "\n" for line in lines if line.strip()]


def _finished_lines(manifest: Path) -> list[str]:
    return _split_finished(manifest.read_text()) if manifest.exists() else []


def _entry(line: str, where: str) -> dict:
    try:
        entry = json.loads(line)
        if not (isinstance(entry["shard"], str) and "/" not in entry["shard"]
                and isinstance(entry["bytes"], int) and isinstance(entry["sha256"], str)):
            raise TypeError("shard, bytes or sha256 of the wrong type")
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{where}: not a manifest entry ({type(e).__name__}: {e})") from None
    return entry


def _matches(path: Path, entry: dict) -> bool:
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
        return False
    return _sha256(path.read_bytes()) == entry["sha256"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_local(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.pull-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
