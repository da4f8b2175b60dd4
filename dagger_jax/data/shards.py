"""Episode records in ArrayRecord shards, and the manifest that says which shards count.

Layout: <workdir>/data/iter_NNN/ holds `<prefix>-NNNNN.arecord` shards and `manifest.jsonl`.
A shard counts only once its manifest line is written. The writer fills a temp file
(`<name>.tmp`), closes and fsyncs it, renames it to its final name, fsyncs the directory,
then appends the manifest line (flush + fsync). A writer killed at any point leaves either a
temp file (ignored by readers, removed by the next writer with that prefix) or a renamed but
unlisted shard (ignored; its episodes are collected again): never a half shard that counts.

Several writers may share a directory if each has its own prefix (a second writer with a
prefix in use is refused): appends to the manifest are single O_APPEND writes under an flock,
and a writer only cleans up its own prefix's temps.

Readers trust only the manifest, check each shard's size and record count against it before
reading (a truncated shard is refused, naming the file), and read each episode_id once: a
duplicate (an episode collected again after a crash between rename and manifest line was
recovered, say) is skipped with a warning.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from dagger_jax.data.records import (
    SCHEMA_VERSION,
    EpisodeRecord,
    RecordError,
    SchemaVersionError,
    newer_schema_message,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SHARD_SUFFIX = ".arecord"
TEMP_SUFFIX = ".tmp"
# group_size:1 makes every record its own chunk, so any record can be read without
# decompressing its neighbours (grain's random access); zstd:3 compresses the ids well.
WRITER_OPTIONS = "group_size:1,zstd:3"
# Random access: no readahead (it would read past the one record we want).
RANDOM_READER_OPTIONS = "readahead_buffer_size:0"

_PREFIX_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

PathLike = str | os.PathLike


class ShardError(RuntimeError):
    """A shard or manifest that cannot be read as listed; the message names the file."""


# --- manifest -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One manifest line: a finished shard."""

    path: Path
    num_episodes: int
    episode_ids: tuple[str, ...]
    schema_version: int
    bytes: int
    # Per episode, EpisodeRecord.turn_summaries(): lets the trainer plan examples unread.
    turn_summaries: tuple[list, ...]
    manifest: Path
    line: int
    # Per episode, [task_id, resolved]: lets the trainer filter (rejection-sampling SFT) and
    # group (GRPO) episodes unread.
    outcomes: tuple[list, ...]
    # Of the whole file: what a copy of the shard (data/shard_sync.py) is checked against.
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(directory: PathLike) -> list[ShardInfo]:
    """The shards listed in directory's manifest, in the order they were written.

    A directory without a manifest has no shards. A final line without its newline is what a
    writer killed mid-append leaves: it is ignored (its shard does not count) with a warning.
    Any other unreadable line, a listed shard that is missing, or one from a newer schema
    raises ShardError / SchemaVersionError naming the manifest and line.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no record directory {directory}")
    manifest = directory / MANIFEST
    if not manifest.exists():
        return []
    text = manifest.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1]:
        log.warning(
            "%s: ignoring an unfinished last line (%d characters): a writer was stopped while "
            "listing a shard, which therefore does not count", manifest, len(lines[-1]))
    shards: list[ShardInfo] = []
    seen: set[str] = set()
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        where = f"{manifest} line {number}"
        try:
            entry = json.loads(line)
            name, count = entry["shard"], entry["num_episodes"]
            ids, version, size = entry["episode_ids"], entry["schema_version"], entry["bytes"]
            summaries, outcomes = entry.get("turn_summaries"), entry.get("outcomes")
            digest = entry["sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise ShardError(f"{where}: not a manifest entry ({type(e).__name__}: {e})") from e
        if summaries is None or outcomes is None:
            raise ShardError(f"{where}: the entry for shard {name!r} lists no "
                             f"{'turn summaries' if summaries is None else 'outcomes'}: a manifest "
                             "written by an older dagger_jax; collect the iteration again")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SchemaVersionError(newer_schema_message(version, f"{where} (shard {name})"))
        if (
            not isinstance(name, str)
            or "/" in name
            or not isinstance(ids, list)
            or not isinstance(size, int)
            or not _valid_digest(digest)
            or len(ids) != count
            or not _valid_summaries(summaries, count)
            or not _valid_outcomes(outcomes, count)
        ):
            raise ShardError(f"{where}: malformed entry for shard {name!r}")
        if name in seen:
            raise ShardError(f"{where}: shard {name} is listed twice")
        seen.add(name)
        path = directory / name
        if not path.is_file():
            raise ShardError(f"{where}: listed shard {path} does not exist")
        shards.append(
            ShardInfo(path, count, tuple(ids), version, size, tuple(summaries), manifest, number,
                      tuple(outcomes), digest)
        )
    return shards


def _valid_digest(digest: Any) -> bool:
    return isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None


def file_sha256(path: PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _valid_summaries(summaries: Any, count: int) -> bool:
    # Five fields per turn: [executor, prompt_len, executed_end, label length, label executed].
    return (isinstance(summaries, list) and len(summaries) == count
            and all(isinstance(turns, list) and all(isinstance(t, list) and len(t) == 5
                                                    for t in turns) for turns in summaries))


def _valid_outcomes(outcomes: Any, count: int) -> bool:
    return (isinstance(outcomes, list) and len(outcomes) == count
            and all(isinstance(o, list) and len(o) == 2 and isinstance(o[0], str)
                    and isinstance(o[1], bool) for o in outcomes))


def _as_dirs(dirs: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(dirs, str | os.PathLike):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


def existing_episode_ids(dirs: PathLike | Sequence[PathLike]) -> set[str]:
    """The episode_ids already stored (manifest-listed) in dirs: what a resumed collector skips."""
    return {eid for d in _as_dirs(dirs) for shard in read_manifest(d) for eid in shard.episode_ids}


# --- writing ------------------------------------------------------------------------------


class ShardWriter:
    """Writes episode records into shards of records_per_shard, each listed once it is whole.

    Use as a context manager (or call close()): the last, partly filled shard is finished
    on exit. write() returns False, writing nothing, for an episode_id already listed in
    the directory (as of opening) or already written by this writer. `on_listed`, when given,
    is called with each shard's path once its manifest line is written (the collector
    publishes the shard to object storage there: data/shard_sync.py).
    """

    def __init__(self, directory: PathLike, prefix: str, records_per_shard: int = 64,
                 *, options: str = WRITER_OPTIONS,
                 on_listed: Callable[[Path], None] | None = None) -> None:
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"shard prefix {prefix!r} must match {_PREFIX_RE.pattern}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.records_per_shard = records_per_shard
        self.options = options
        self.on_listed = on_listed
        self._name_re = re.compile(
            rf"{re.escape(prefix)}-(\d+){re.escape(SHARD_SUFFIX)}(?:{re.escape(TEMP_SUFFIX)})?")
        self._lock_fd = self._lock_prefix()
        self._repair_manifest()
        listed = read_manifest(self.directory)
        self._known = {eid for shard in listed for eid in shard.episode_ids}
        self._next_number = self._recover(listed)
        self._writer: ArrayRecordWriter | None = None
        self._temp: Path | None = None
        self._ids: list[str] = []
        self._summaries: list[list] = []
        self._outcomes: list[list] = []
        self.shards_written: list[Path] = []

    # Cleaning up temp files is only safe if no live writer uses this prefix: hold an flock
    # on a per-prefix lock file for the writer's life (the kernel drops it if we are killed).
    def _lock_prefix(self) -> int:
        path = self.directory / f".{self.prefix}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"another writer holds {path}: shard prefix {self.prefix!r} is in use in "
                f"{self.directory}; give each concurrent writer its own prefix") from None
        return fd

    # A killed writer can leave a manifest line without its newline; cut it off before
    # appending, or the next line would be glued to it.
    def _repair_manifest(self) -> None:
        manifest = self.directory / MANIFEST
        if not manifest.exists():
            return
        with open(manifest, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            data = f.read()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                log.warning("%s: removing an unfinished last line left by a stopped writer",
                            manifest)
                f.truncate(keep)
                os.fsync(f.fileno())

    def _recover(self, listed: list[ShardInfo]) -> int:
        """Remove this prefix's temp files; return the first unused shard number."""
        listed_names = {s.name for s in listed}
        numbers = [-1]
        for path in self.directory.iterdir():
            match = self._name_re.fullmatch(path.name)
            if not match:
                continue
            numbers.append(int(match.group(1)))
            if path.name.endswith(TEMP_SUFFIX):
                log.warning("removing %s, left unfinished by a stopped writer", path)
                path.unlink(missing_ok=True)
            elif path.name not in listed_names:
                # Renamed but never listed: it does not count, and its episodes will be
                # collected again. Kept (never delete finished data), its number skipped.
                log.warning("%s is not listed in %s and does not count", path, MANIFEST)
        return max(numbers) + 1

    def write(self, record: EpisodeRecord) -> bool:
        """Append one record (validated); False if its episode_id is already stored."""
        if self._lock_fd < 0:
            raise ValueError(f"shard writer {self.prefix!r} in {self.directory} is closed")
        if record.episode_id in self._known:
            log.warning("%s: episode %s is already stored; not writing it again",
                        self.directory, record.episode_id)
            return False
        blob = record.to_bytes()  # validates: a bad record never reaches the disk
        if self._writer is None:
            name = f"{self.prefix}-{self._next_number:05d}{SHARD_SUFFIX}"
            self._temp = self.directory / (name + TEMP_SUFFIX)
            self._writer = ArrayRecordWriter(str(self._temp), self.options)
        self._writer.write(blob)
        self._known.add(record.episode_id)
        self._ids.append(record.episode_id)
        self._summaries.append(record.turn_summaries())
        self._outcomes.append([record.task_id, record.outcome.resolved])
        if len(self._ids) >= self.records_per_shard:
            self.flush()
        return True

    def flush(self) -> Path | None:
        """Finish the current shard (if it has records) and list it; returns its path.

        If finishing fails (a full disk, say), the shard is not listed, its episodes count
        as not stored (write() takes them again) and the writer goes on with a new shard.
        """
        if self._writer is None:
            return None
        writer, temp, ids, summaries = self._writer, self._temp, self._ids, self._summaries
        outcomes = self._outcomes
        assert temp is not None
        self._writer, self._temp, self._ids, self._summaries = None, None, [], []
        self._outcomes = []
        self._next_number += 1  # never reuse a number: the failed file may still be there
        final = temp.with_name(temp.name[: -len(TEMP_SUFFIX)])
        try:
            writer.close()
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(temp, final)
            _fsync_dir(self.directory)
            entry = {
                "shard": final.name,
                "num_episodes": len(ids),
                "episode_ids": ids,
                "schema_version": SCHEMA_VERSION,
                "bytes": final.stat().st_size,
                "sha256": file_sha256(final),
                "turn_summaries": summaries,
                "outcomes": outcomes,
            }
            self._append_manifest((json.dumps(entry, separators=(",", ":")) + "\n").encode())
        except BaseException:
            self._known.difference_update(ids)
            raise
        self.shards_written.append(final)
        if self.on_listed is not None:
            self.on_listed(final)
        return final

    def _append_manifest(self, line: bytes) -> None:
        fd = os.open(self.directory / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(
                    f"short write to {self.directory / MANIFEST}: {written} of {len(line)}")
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Finish the current shard and let another writer take this prefix."""
        if self._lock_fd < 0:
            return
        try:
            self.flush()
        finally:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Even after an error the records written so far are whole: keep them.
        self.close()


# --- reading ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordLocation:
    shard: int  # index into EpisodeSource.shards
    position: int  # record number within the shard
    episode_id: str


class EpisodeSource:
    """Random access to the manifest-listed episodes of one or more directories, deduplicated.

    A grain RandomAccessDataSource (len, getitem): source[k] is the k-th distinct episode,
    decoded, in directory order, then manifest order, then position in shard. The first copy
    of an episode_id wins; later copies are skipped with a warning. Shards are opened lazily;
    opening checks the file's size and record count against its manifest line, so a truncated
    or rewritten shard is refused with a ShardError naming it; a record that cannot be read
    or decoded raises naming the shard and position.
    """

    def __init__(self, dirs: PathLike | Sequence[PathLike]) -> None:
        self.dirs = _as_dirs(dirs)
        self.shards: list[ShardInfo] = [s for d in self.dirs for s in read_manifest(d)]
        self.locations: list[RecordLocation] = []
        first_seen: dict[str, RecordLocation] = {}
        duplicates: list[str] = []
        for shard_index, shard in enumerate(self.shards):
            for position, episode_id in enumerate(shard.episode_ids):
                if episode_id in first_seen:
                    duplicates.append(f"{episode_id} ({shard.path} #{position})")
                    continue
                location = RecordLocation(shard_index, position, episode_id)
                first_seen[episode_id] = location
                self.locations.append(location)
        if duplicates:
            log.warning("%d duplicate episode(s) skipped (first copy kept): %s%s",
                        len(duplicates), ", ".join(duplicates[:5]),
                        ", ..." if len(duplicates) > 5 else "")
        self.num_duplicates = len(duplicates)
        self._readers: dict[int, ArrayRecordReader] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.locations)

    def check_files(self) -> None:
        """Raise ShardError for a listed shard whose size differs from its manifest line.

        One stat per shard: lets a trainer refuse a truncated shard at startup rather than
        at the first batch that happens to read it.
        """
        for shard in self.shards:
            _check_size(shard)

    def __getitem__(self, key: int) -> EpisodeRecord:
        location = self.locations[key]
        return self._decode(location, self.read_bytes(key))

    def episode_ids(self) -> list[str]:
        return [loc.episode_id for loc in self.locations]

    def turn_summaries(self, key: int) -> list:
        """The manifest's turn summaries of source[key]."""
        location = self.locations[key]
        return self.shards[location.shard].turn_summaries[location.position]

    def outcome(self, key: int) -> tuple[str, bool]:
        """(task_id, resolved) of source[key], from the manifest."""
        location = self.locations[key]
        task_id, resolved = self.shards[location.shard].outcomes[location.position]
        return task_id, resolved

    def directory(self, key: int) -> Path:
        """The directory (iteration) whose manifest lists source[key]."""
        return self.shards[self.locations[key].shard].manifest.parent

    def read_bytes(self, key: int) -> bytes:
        location = self.locations[key]
        reader = self._reader(location.shard)
        try:
            return reader.read([location.position])[0]
        except Exception as e:  # noqa: BLE001 - riegeli reports corruption as RuntimeError
            raise ShardError(self._where(location) + f": cannot read the record: {e}") from e

    def _where(self, location: RecordLocation) -> str:
        return f"{self.shards[location.shard].path} record {location.position}"

    def _decode(self, location: RecordLocation, blob: bytes) -> EpisodeRecord:
        where = self._where(location)
        record = EpisodeRecord.from_bytes(blob, where)
        if record.episode_id != location.episode_id:
            raise RecordError(
                f"{where}: holds episode {record.episode_id!r} but the manifest lists "
                f"{location.episode_id!r} there")
        return record

    def _reader(self, shard_index: int) -> ArrayRecordReader:
        reader = self._readers.get(shard_index)
        if reader is None:
            with self._lock:
                reader = self._readers.get(shard_index)
                if reader is None:
                    reader = open_shard(self.shards[shard_index], RANDOM_READER_OPTIONS)
                    self._readers[shard_index] = reader
        return reader

    def __iter__(self) -> Iterator[EpisodeRecord]:
        """Every distinct episode in order, read shard by shard with readahead."""
        by_shard: dict[int, list[RecordLocation]] = {}
        for location in self.locations:
            by_shard.setdefault(location.shard, []).append(location)
        for shard_index, wanted in by_shard.items():
            reader = open_shard(self.shards[shard_index])
            try:
                for location in wanted:
                    try:
                        blob = reader.read([location.position])[0]
                    except Exception as e:  # noqa: BLE001
                        raise ShardError(
                            self._where(location) + f": cannot read the record: {e}") from e
                    yield self._decode(location, blob)
            finally:
                reader.close()

    def close(self) -> None:
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()

    # Readers hold C++ state; a copy sent to a grain worker process opens its own.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _check_size(shard: ShardInfo) -> str:
    """Raise ShardError unless the shard has the size it was listed with; returns its name."""
    where = f"shard {shard.path} (listed in {shard.manifest} line {shard.line})"
    try:
        size = shard.path.stat().st_size
    except OSError as e:
        raise ShardError(f"{where}: cannot stat: {e}") from e
    if size != shard.bytes:
        raise ShardError(
            f"{where}: {size} bytes on disk but {shard.bytes} when it was written: the file is "
            "truncated or was overwritten")
    return where


def open_shard(shard: ShardInfo, options: str = "") -> ArrayRecordReader:
    """An ArrayRecord reader of a listed shard, after checking it is whole.

    Riegeli opens a truncated file without complaint (it then reports zero records), so the
    size and record count are checked against the manifest before anything is read.
    """
    where = _check_size(shard)
    try:
        reader = ArrayRecordReader(str(shard.path), options) if options else \
            ArrayRecordReader(str(shard.path))
        count = reader.num_records()
    except Exception as e:  # noqa: BLE001 - the C++ reader raises RuntimeError / ValueError
        raise ShardError(f"{where}: not a readable ArrayRecord file: {e}") from e
    if count != shard.num_episodes:
        reader.close()
        raise ShardError(
            f"{where}: holds {count} records but the manifest lists {shard.num_episodes}: the "
            "file is damaged")
    return reader


def iter_records(dirs: PathLike | Sequence[PathLike]) -> Iterator[EpisodeRecord]:
    """Every distinct manifest-listed episode in dirs, in order (duplicates skipped, warned)."""
    yield from EpisodeSource(dirs)


def labelled_turns(dirs: PathLike | Sequence[PathLike]) -> int:
    """Teacher-labelled turns stored in dirs (the budget recipes are compared at), from the
    manifests' turn summaries (no record is decoded)."""
    dirs = [d for d in _as_dirs(dirs) if d.exists()]
    if not dirs:
        return 0
    source = EpisodeSource(dirs)
    total = 0
    for key in range(len(source)):
        total += sum(1 for summary in source.turn_summaries(key) if summary[3])
    return total
