"""A run's task sets: the training tasks and the held-out tasks, never sharing a repo or a fix.

Either generated (a synthetic family, `Difficulty`) or read from task files (SWE-Gym / SWE-bench
rows converted by tools/make_tasks.py, or generated tasks written out).
"""

from __future__ import annotations

import dataclasses
import json
import logging

from dagger_jax.envs.tasks.synthetic import Difficulty, generate_task, generate_tasks
from dagger_jax.envs.tasks.task import BadTaskLine, Task, read_tasks

log = logging.getLogger(__name__)
SOURCES = ("synthetic", "file")


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """Where a run's tasks come from (config.tasks)."""

    source: str = "synthetic"
    num_train: int = 64
    num_heldout: int = 16
    train_seed: int = 0
    heldout_seed: int = 1
    difficulty: Difficulty = Difficulty()
    train_path: str = ""
    heldout_path: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"config.tasks.source={self.source!r}: choose from {SOURCES}")
        if self.source == "file":
            for key in ("train_path", "heldout_path"):
                if not getattr(self, key):
                    raise ValueError(f"config.tasks.{key} is empty but config.tasks.source is 'file'")
        elif self.num_train < 1 or self.num_heldout < 0:
            raise ValueError(f"config.tasks.num_train={self.num_train} must be >= 1 and "
                             f"num_heldout={self.num_heldout} >= 0")


@dataclasses.dataclass(frozen=True)
class TaskSets:
    train: tuple[Task, ...]
    heldout: tuple[Task, ...]

    def window(self, iteration: int, size: int) -> list[Task]:
        """Iteration `iteration`'s training tasks: a window of `size` that walks through the
        training set, wrapping around."""
        pool = self.train
        start = ((iteration - 1) * size) % len(pool)
        return [pool[(start + k) % len(pool)] for k in range(min(size, len(pool)))]


def load_task_sets(settings: TaskSettings, heldout_needed: int = 0) -> TaskSets:
    """(train, held-out) tasks; an overlap between them is an error, not a silent leak, and so is
    having fewer than `heldout_needed` held-out tasks."""
    if settings.source == "synthetic":
        train = list(generate_tasks(settings.num_train, settings.train_seed, "train",
                                    settings.difficulty))
        heldout = unseen_heldout(train, settings.num_heldout, settings.heldout_seed,
                                 settings.difficulty)
    else:
        train = _read(settings.train_path, "tasks.train_path")
        heldout = _read(settings.heldout_path, "tasks.heldout_path")
    if not train:
        raise ValueError(f"config.tasks ({settings.source}) gives no training task")
    overlap = {x.instance_id for x in train} & {x.instance_id for x in heldout}
    shared = {same_task_key(x) for x in train} & {same_task_key(x) for x in heldout} - {""}
    if overlap or shared:
        raise ValueError(f"the evaluation tasks overlap the training tasks ({len(overlap)} shared ids, "
                         f"{len(shared)} shared repos or gold patches; e.g. {sorted(overlap)[:3]}): "
                         "use different seeds or files")
    if heldout_needed > len(heldout):
        raise ValueError(f"config.eval.num_tasks={heldout_needed} but there are only "
                         f"{len(heldout)} held-out tasks (config.tasks.num_heldout / "
                         "tasks.heldout_path): evaluate on fewer or make more")
    return TaskSets(tuple(train), tuple(heldout))


def same_task_key(task: Task) -> str:
    """What two tasks must not share across train and held-out: the repo's contents where the
    task carries them (generated tasks; a narrow family repeats a fix in a different repo, which
    is a new instance), else the fix itself (image tasks: one fix, one instance)."""
    if task.repo_files is not None:
        return json.dumps(task.repo_files, sort_keys=True)
    return task.gold_patch or ""


def unseen_heldout(train: list[Task], count: int, seed: int, difficulty: Difficulty) -> list[Task]:
    """The first `count` held-out tasks whose repo no training task has (skipped by index, so
    the held-out set stays the same for a given config)."""
    seen = {same_task_key(task) for task in train}
    out: list[Task] = []
    for index in range(count * 50):
        task = generate_task(seed, index, "heldout", difficulty)
        if same_task_key(task) not in seen:
            out.append(task)
            if len(out) == count:
                return out
    if count == 0:
        return out
    raise ValueError(f"only {len(out)} of {count * 50} held-out synthetic tasks differ from every "
                     f"training task ({difficulty}): widen config.tasks or lower num_train")


def _read(path: str, key: str) -> list[Task]:
    items = list(read_tasks(path))
    bad = [i.reason for i in items if isinstance(i, BadTaskLine)]
    if bad:
        log.warning("%d bad task lines in %s (config.%s) skipped, e.g. %s", len(bad), path, key,
                    bad[0])
    return [i for i in items if isinstance(i, Task)]
