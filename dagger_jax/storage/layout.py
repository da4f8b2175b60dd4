"""The workdir layout: the one place that names every path of a run, so main, the loop, the
trainer and the tools agree on it. A workdir is a local directory or gs://bucket/path
(storage/store.py: every path here is a store path).

<workdir>/config.json              the config of the last start
<workdir>/state.json               the outer loop's decisions (recipes/loop.py)
<workdir>/tokenizer/               the run's tokenizer (copied in: the workdir is self-contained)
<workdir>/checkpoints/<step>/      Orbax: params, opt_state, meta
<workdir>/tensorboard/             metrics
<workdir>/export/                  the latest Hugging Face export
<workdir>/exports/iter_NNN/        the student after iteration NNN (iter_000: before training)
<workdir>/data/iter_NNN/           iteration NNN's trajectory shards and their manifest
<workdir>/eval/iter_NNN/           held-out episodes of the student after iteration NNN
<workdir>/eval/teacher/            held-out episodes of the teacher (covariate-shift reference)
<workdir>/tasks/train.jsonl        the training tasks, for a rollout service that reads files
"""

from __future__ import annotations

import re

from dagger_jax.storage.store import PathLike, StorePath, is_published, store_path

_ITER_RE = re.compile(r"iter_(\d+)")


def _iter_name(iteration: int) -> str:
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    return f"iter_{iteration:03d}"


def config_file(workdir: PathLike) -> StorePath:
    return store_path(workdir) / "config.json"


def state_file(workdir: PathLike) -> StorePath:
    return store_path(workdir) / "state.json"


def tokenizer_dir(workdir: PathLike) -> StorePath:
    return store_path(workdir) / "tokenizer"


def has_tokenizer(workdir: PathLike) -> bool:
    directory = tokenizer_dir(workdir)
    return is_published(directory) and ((directory / "tokenizer.json").is_file()
                                        or (directory / "tokenizer_config.json").is_file())


def checkpoints_dir(workdir: PathLike) -> StorePath:
    return store_path(workdir) / "checkpoints"


def tensorboard_dir(workdir: PathLike) -> StorePath:
    return store_path(workdir) / "tensorboard"


def export_dir(workdir: PathLike) -> StorePath:
    return store_path(workdir) / "export"


def iteration_export_dir(workdir: PathLike, iteration: int) -> StorePath:
    """The student exported after iteration `iteration` (0: before any training)."""
    return store_path(workdir) / "exports" / _iter_name(iteration)


def data_dir(workdir: PathLike) -> StorePath:
    return store_path(workdir) / "data"


def iteration_dir(workdir: PathLike, iteration: int) -> StorePath:
    """Where iteration `iteration`'s training episodes are written."""
    return data_dir(workdir) / _iter_name(iteration)


def eval_dir(workdir: PathLike, iteration: int) -> StorePath:
    """Where the held-out episodes of the student after iteration `iteration` are written."""
    return store_path(workdir) / "eval" / _iter_name(iteration)


def teacher_eval_dir(workdir: PathLike) -> StorePath:
    """The teacher's held-out episodes (the same for every iteration)."""
    return store_path(workdir) / "eval" / "teacher"


def train_tasks_file(workdir: PathLike) -> StorePath:
    return store_path(workdir) / "tasks" / "train.jsonl"


def iteration_of(directory: PathLike) -> int | None:
    """N for a directory named iter_N, else None."""
    match = _ITER_RE.fullmatch(store_path(directory).name)
    return int(match.group(1)) if match else None


def iteration_dirs_in(parent: PathLike) -> list[StorePath]:
    """The iter_NNN directories directly under parent, by iteration number."""
    parent = store_path(parent)
    if not parent.is_dir():
        return []
    found = [(iteration_of(p), p) for p in parent.iterdir() if p.is_dir()]
    return [p for i, p in sorted((i, p) for i, p in found if i is not None)]


def all_iteration_dirs(workdir: PathLike) -> list[StorePath]:
    """Every iteration's data directory in a workdir, in iteration order (aggregation)."""
    return iteration_dirs_in(data_dir(workdir))
