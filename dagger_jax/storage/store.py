"""Run files on local disk or in object storage (`gs://bucket/...`), through one path type.

`store_path` turns a workdir (or any run path) into a pathlib-like path: `pathlib.Path` on
local disk (local runs behave exactly as they always did), and for `gs://` an `etils.epath.Path`
(the path type Orbax already uses; it reaches the bucket through fsspec's gcsfs), so a workdir
in a bucket is written there, never into a local folder named `gs:`. Files written as
a whole (config.json, state.json, manifests) go straight through it; libraries that only write
local files (the tokenizer's save_pretrained, the safetensors export, tensorboardX) write into
a local directory that `staged_dir` then publishes.

Publishing. Object storage has no atomic rename of a directory. A published directory is
complete when its marker (`PUBLISHED`) exists; the marker is written after every other file,
and removed first when the directory is replaced, so a reader never takes a half-copied
directory for a whole one. The marker lists every file with its size and sha256, and a local
copy (`local_dir`) is checked against it file by file. On local disk the directory is renamed
into place as before.

Emulator / other endpoints: gcsfs reads STORAGE_EMULATOR_HOST; tensorstore (Orbax's arrays)
reads TENSORSTORE_GCS_HTTP_URL. docs/storage.md lists the variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import fsspec
from etils import epath

PathLike = str | os.PathLike
PUBLISHED = "PUBLISHED"
log = logging.getLogger(__name__)

# gcsfs caches directory listings per process, so a process would not see what another wrote
# after it listed (a new checkpoint step, a host's shard, the state another host saved). The
# listings are asked fresh; a run lists rarely, so the cache saves little. Set before any gs://
# filesystem exists (fsspec reads its config when it makes one).
fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
REMOTE_SCHEMES = ("gs://",)


def is_remote(path: PathLike) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


StorePath = Path | epath.Path


def store_path(path: PathLike) -> StorePath:
    """`path` as the path type every run file goes through (module doc)."""
    text = os.fspath(path)
    if is_remote(text):
        return path if isinstance(path, epath.Path) else epath.Path(text)
    if "://" in text or text.startswith("gs:/"):
        # "gs:/b/x" is what pathlib makes of "gs://b/x": a remote path that lost its scheme.
        raise ValueError(f"{text!r}: a run location is a local path or gs://bucket/path")
    return Path(text)


class StoreUnavailable(RuntimeError):
    """The store refused or could not be reached (a missing bucket, refused credentials, no
    route): the message names the location and the store's answer."""


def check_writable(path: PathLike) -> None:
    """For a remote location: writes and removes a probe object under it, so that a missing
    bucket or refused credentials stop a run before it starts, in one line."""
    if not is_remote(path):
        return
    probe = store_path(path) / f".write-probe-{uuid.uuid4().hex}"
    try:
        probe.write_text("")
        probe.unlink()
    except Exception as e:  # gcsfs raises FileNotFoundError, OSError, HttpError, aiohttp's
        answer = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise StoreUnavailable(f"{path}: cannot write there ({type(e).__name__}: {answer}); "
                               "check the bucket exists and the credentials may write to it"
                               ) from None


def is_published(directory: PathLike) -> bool:
    """A directory `staged_dir` published: its marker (remote) or the directory (local)."""
    directory = store_path(directory)
    return (directory / PUBLISHED).exists() if is_remote(directory) else directory.is_dir()


@contextlib.contextmanager
def staged_dir(target: PathLike) -> Iterator[Path]:
    """A local directory to write `target`'s files into; on a clean exit they replace
    `target` as a whole (module doc), on an exception nothing of them is published."""
    target = store_path(target)
    if not is_remote(target):
        local = Path(os.fspath(target))
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{local.name}.tmp-", dir=local.parent))
        try:
            yield tmp
            old = local.with_name(f"{local.name}.old-{os.getpid()}")
            if local.exists():
                local.rename(old)
            tmp.rename(local)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="dagger_jax_stage_") as tmp:
        yield Path(tmp)
        publish(Path(tmp), target)


def publish(source: Path, target: StorePath) -> None:
    """Replaces remote directory `target` with the files of local directory `source`: the old
    marker goes first, the new one last (module doc)."""
    marker = target / PUBLISHED
    if marker.exists():
        marker.unlink()
    if target.exists():
        target.rmtree()
    files = {}
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        (target / file.relative_to(source).as_posix()).write_bytes(data)
        files[file.relative_to(source).as_posix()] = {"bytes": len(data),
                                                       "sha256": hashlib.sha256(data).hexdigest()}
    # Names this publication (local_dir's cache key) and lists what a copy is checked against.
    marker.write_text(json.dumps({"publication": uuid.uuid4().hex, "files": files}))


def local_dir(source: PathLike, cache: PathLike | None = None) -> Path:
    """A local directory holding `source`'s files: `source` itself on local disk; for a
    published remote directory, a copy under `cache` (default: the system temp dir), made
    once per publication of it and reused."""
    source = store_path(source)
    if not is_remote(source):
        return Path(os.fspath(source))
    if not is_published(source):
        raise FileNotFoundError(f"{source}: not a published directory (no {PUBLISHED} marker)")
    marker = read_text_whole(source / PUBLISHED)
    key = hashlib.sha256(f"{source}\n{marker}".encode()).hexdigest()[:16]
    root = Path(cache) if cache is not None else Path(tempfile.gettempdir()) / "dagger_jax_store"
    local = root / f"{source.name}-{key}"
    if (local / PUBLISHED).exists():
        return local
    try:
        files = json.loads(marker)["files"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{source / PUBLISHED}: not a publication marker this code wrote "
                         "(no file list); publish the directory again") from None
    tmp = Path(tempfile.mkdtemp(prefix=f"{local.name}.tmp-", dir=_mkdirs(root)))
    try:
        for relative, expected in files.items():
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relative).write_bytes(verified_read(source / relative, expected))
        (tmp / PUBLISHED).write_text(marker)
        shutil.rmtree(local, ignore_errors=True)
        tmp.rename(local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


class DamagedCopy(RuntimeError):
    """A file of a published directory does not match its publication marker."""


FETCH_ATTEMPTS = 2


def verified_read(file: StorePath, expected: dict) -> bytes:
    """The file's bytes, checked against `expected` ({"bytes", "sha256"}: what it was published
    with): a download that differs is fetched again, then refused naming the file."""
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        data = file.read_bytes()
        if len(data) == expected["bytes"] and \
                hashlib.sha256(data).hexdigest() == expected["sha256"]:
            return data
        log.warning("%s: download %d of %d differs from its publication (%d bytes, expected %d, "
                    "or the sha256 differs)", file, attempt, FETCH_ATTEMPTS, len(data),
                    expected["bytes"])
    raise DamagedCopy(f"{file}: every download differs from what was published (size or "
                      "sha256): the stored file is damaged; not used")


def working_copy(source: PathLike, cache: PathLike | None = None) -> Path:
    """The local directory a process works on for remote directory `source` (the same one on
    every call and across restarts on this machine, so work written there and not yet pushed
    survives a killed process); `source` itself on local disk. Nothing is copied: the caller
    syncs it (data/shard_sync.py for trajectory shards)."""
    source = store_path(source)
    if not is_remote(source):
        return Path(os.fspath(source))
    key = hashlib.sha256(str(source).encode()).hexdigest()[:16]
    root = Path(cache) if cache is not None else Path(tempfile.gettempdir()) / "dagger_jax_store"
    return _mkdirs(root / "work" / f"{source.name}-{key}")


def write_text_atomic(path: PathLike, text: str) -> None:
    """Replaces the file at `path` as a whole: a reader sees the old text or the new, never a
    part. Local: a temp file renamed over it. Object storage: one object upload, which is
    atomic there."""
    path = store_path(path)
    if is_remote(path):
        path.write_text(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:12]}")  # one per writer
    tmp.write_text(text)
    os.replace(tmp, path)


def read_text_whole(path: PathLike) -> str:
    """The text of a file that write_text_atomic replaces, read as one version. On object
    storage an opened file is read in ranges after a size lookup, so a reader racing a
    replacement could join the old object's size to the new one's bytes; one GET without a
    range returns a single generation."""
    path = store_path(path)
    if not is_remote(path):
        return path.read_text()
    return fsspec.filesystem("gcs").cat_file(os.fspath(path)).decode()


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
