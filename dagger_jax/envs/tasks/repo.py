"""Writes a task's files as a git repository at its base state (the episode's /testbed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dagger_jax.envs.tasks.task import Task

_GIT_IDENTITY = ["-c", "user.name=dagger_jax", "-c", "user.email=tasks@dagger-jax.invalid",
                 "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]


def materialize_repo(task: Task, dest: str | Path) -> Path:
    """Creates `dest` holding the task's repo_files committed as the base state.

    Our own generated files, written and committed on the host; nothing of the task runs here.
    """
    if task.repo_files is None:
        raise ValueError(f"task {task.instance_id!r} has no repo_files (it lives in image {task.image})")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    for rel, text in task.repo_files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    dest.mkdir(parents=True, exist_ok=True)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", f"base state of {task.instance_id}"]):
        subprocess.run(["git", *_GIT_IDENTITY, *args], cwd=dest, check=True, capture_output=True)
    return dest
