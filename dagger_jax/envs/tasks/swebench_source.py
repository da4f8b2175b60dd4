"""SWE-bench-style instances (SWE-bench Verified, SWE-Gym) as tasks, via the harness's TestSpec.

An instance is a record in the harness's own dataset format (instance_id, repo, version,
problem_statement, patch, test_patch, FAIL_TO_PASS, PASS_TO_PASS, image, eval_script,
log_parser, eval_type). `swebench.harness.utils.make_test_spec` builds its TestSpec; the task
keeps the TestSpec's image name (the harness's naming) and eval script, so grading runs exactly
the harness's script and log reader (see dagger_jax/envs/grading.py). Built against swebench
5.0.2 (pinned in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import unidiff
from swebench.harness.utils import make_test_spec

from dagger_jax.envs.tasks.task import BadTaskLine, Task, read_jsonl_tasks

REQUIRED = ("instance_id", "repo", "version", "problem_statement", "FAIL_TO_PASS", "PASS_TO_PASS",
            "image", "eval_script", "log_parser", "eval_type")


def files_touched_by(test_patch: str | None) -> tuple[str, ...]:
    """Repo paths the test patch touches: what an agent's edits must not decide."""
    if not test_patch:
        return ()
    return tuple(sorted({f.path for f in unidiff.PatchSet(test_patch)}))


def task_from_instance(instance: Mapping[str, Any], split: str = "test", where: str = "instance") -> Task:
    """A Task from one harness-format instance; ValueError names the instance and what is wrong."""
    missing = [k for k in REQUIRED if k not in instance]
    name = instance.get("instance_id", "?")
    if missing:
        raise ValueError(f"{where}: SWE-bench instance {name!r} lacks {missing}")
    spec = make_test_spec(dict(instance))
    return Task(
        instance_id=spec.instance_id, source="swebench",
        problem_statement=instance["problem_statement"],
        fail_to_pass=tuple(spec.FAIL_TO_PASS), pass_to_pass=tuple(spec.PASS_TO_PASS),
        test_files=files_touched_by(instance.get("test_patch")), split=split,
        image=spec.image, eval_script=spec.eval_script, log_parser=spec.log_parser,
        eval_type=spec.eval_type or "pass_and_fail",
        gold_patch=instance.get("patch"), test_patch=instance.get("test_patch"),
        metadata={"repo": spec.repo, "version": spec.version,
                  "base_commit": instance.get("base_commit")})


def read_instance_pairs(source: str | Path, split: str = "test"
                        ) -> Iterator[tuple[Task, dict[str, Any]] | BadTaskLine]:
    """`read_instances`, each task with the harness-format instance it came from (what the
    harness's own evaluation, `make_test_spec` and `run_instance`, takes)."""
    if Path(source).is_file():
        yield from read_jsonl_tasks(
            source, lambda data, where: (task_from_instance(data, split, where), dict(data)))
        return
    try:
        import datasets
        rows = datasets.load_dataset(str(source), split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, ...: say which and why
        raise FileNotFoundError(f"{source!r} is neither a JSONL file nor a loadable dataset "
                                f"(split {split!r}): {type(e).__name__}: {e}") from None
    for number, row in enumerate(rows, start=1):
        try:
            yield task_from_instance(row, split, f"{source}[{number - 1}]"), dict(row)
        except (ValueError, KeyError, TypeError) as e:
            yield BadTaskLine(str(source), number, f"{source}[{number - 1}]: {e}")


def read_instances(source: str | Path, split: str = "test") -> Iterator[Task | BadTaskLine]:
    """Tasks from a JSONL file of instances, or from a `datasets` name (needs the hub or its cache)."""
    for item in read_instance_pairs(source, split):
        yield item if isinstance(item, BadTaskLine) else item[0]
