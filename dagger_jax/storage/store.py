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
directory for a whole one. On local disk the directory is renamed into place as before.

Emulator / other endpoints: gcsfs reads STORAGE_EMULATOR_HOST; tensorstore (Orbax's arrays)
reads TENSORSTORE_GCS_HTTP_URL. docs/storage.md lists the variables.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        (target / file.relative_to(source).as_posix()).write_bytes(file.read_bytes())
    marker.write_text(uuid.uuid4().hex)  # names this publication (local_dir's cache key)


def local_dir(source: PathLike, cache: PathLike | None = None) -> Path:
    """A local directory holding `source`'s files: `source` itself on local disk; for a
    published remote directory, a copy under `cache` (default: the system temp dir), made
    once per publication of it and reused."""
    source = store_path(source)
    if not is_remote(source):
        return Path(os.fspath(source))
    if not is_published(source):
        raise FileNotFoundError(f"{source}: not a published directory (no {PUBLISHED} marker)")
    publication = (source / PUBLISHED).read_text()
    key = hashlib.sha256(f"{source}\n{publication}".encode()).hexdigest()[:16]
    root = Path(cache) if cache is not None else Path(tempfile.gettempdir()) / "dagger_jax_store"
    local = root / f"{source.name}-{key}"
    if (local / PUBLISHED).exists():
        return local
    tmp = Path(tempfile.mkdtemp(prefix=f"{local.name}.tmp-", dir=_mkdirs(root)))
    for file in _files_under(source):
        relative = os.path.relpath(os.fspath(file), os.fspath(source))
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp / relative).write_bytes(file.read_bytes())
    shutil.rmtree(local, ignore_errors=True)
    tmp.rename(local)
    return local


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
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _files_under(directory: StorePath) -> list[StorePath]:
    """Every file below a remote directory (epath's glob does not recurse with **)."""
    files, pending = [], [directory]
    while pending:
        for child in pending.pop().iterdir():
            (pending.append if child.is_dir() else files.append)(child)
    return sorted(files, key=str)
