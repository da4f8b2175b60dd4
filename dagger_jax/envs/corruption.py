"""Random wrong edits to a task's sandbox: the states a bad student leaves behind.

Used to check that a teacher recovers from any state (and by the demo to start episodes off
the expert's path). Every edit goes through the sandbox, never the host.
"""

from __future__ import annotations

import random

from dagger_jax.envs.sandbox.base import Sandbox
from dagger_jax.envs.tasks.task import Task

REPO = "/testbed"
KINDS = ("syntax_error", "delete_file", "edit_test", "junk_file", "delete_line", "duplicate_line")


def corrupt(sandbox: Sandbox, task: Task, rng: random.Random, edits: int = 1) -> list[str]:
    """Applies `edits` random wrong edits; returns a description of each."""
    if task.repo_files is None:
        raise ValueError(f"task {task.instance_id} has no repo_files to corrupt")
    sources = sorted(p for p in task.repo_files
                     if p.endswith(".py") and p not in task.test_files and task.repo_files[p])
    done = []
    for _ in range(edits):
        kind = rng.choice(KINDS)
        path = rng.choice(list(task.test_files) if kind == "edit_test" else sources)
        full = f"{REPO}/{path}"
        if kind == "junk_file":
            junk = f"{REPO}/notes_{rng.randint(0, 999)}.py"
            sandbox.write_file(junk, "print('scratch')\n")
            done.append(f"junk_file {junk}")
            continue
        if kind == "delete_file":
            sandbox.run(f"rm -f {full}", timeout_s=30)
            done.append(f"delete_file {path}")
            continue
        result = sandbox.run(f"cat {full}", timeout_s=30)
        if result.exit_code != 0:  # deleted by an earlier edit
            continue
        lines = result.output.splitlines(keepends=True) or ["\n"]
        i = rng.randrange(len(lines))
        if kind == "syntax_error":
            lines[i] = "    def broken(:\n"
        elif kind == "delete_line":
            del lines[i]
        elif kind == "duplicate_line":
            lines.insert(i, lines[i])
        else:  # edit_test: make an assertion expect something else
            asserts = [j for j, line in enumerate(lines) if "assert " in line]
            i = rng.choice(asserts) if asserts else i
            lines[i] = lines[i].replace("==", "!=", 1) if "==" in lines[i] else "assert True\n"
        sandbox.write_file(full, "".join(lines))
        done.append(f"{kind} {path}:{i + 1}")
    return done
