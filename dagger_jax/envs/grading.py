"""Grades an episode the way the SWE-bench harness does, inside the episode's sandbox.

Order matters: the episode's patch is taken first (`git diff` of everything the agent changed),
then the task's test files are restored to their base state (and the task's test patch applied),
so an agent that edited the tests gains nothing; then the test command runs between the
harness's log markers, its log is parsed by `swebench`'s parser, and the verdict is
`swebench`'s own: resolved when every FAIL_TO_PASS and every PASS_TO_PASS test passes.
"""

from __future__ import annotations

import dataclasses
import shlex

from swebench.harness.constants import (END_TEST_OUTPUT, FAIL_TO_PASS, PASS_TO_PASS,
                                        START_TEST_OUTPUT, ResolvedStatus)
from swebench.harness.grading import get_eval_tests_report, get_resolution_status
from swebench.harness.log_parsers import PARSER_REGISTRY

from dagger_jax.envs.sandbox.base import Sandbox
from dagger_jax.envs.tasks.task import Task

REPO = "/testbed"


@dataclasses.dataclass(frozen=True)
class GradeResult:
    resolved: bool
    status: str                    # swebench ResolvedStatus value: RESOLVED_FULL / PARTIAL / NO
    fail_to_pass_passed: int
    fail_to_pass_total: int
    pass_to_pass_passed: int
    pass_to_pass_total: int
    patch: str                     # the episode's changes, as `git diff` against the base
    log: str                       # the test run's output, markers included
    error: str | None = None       # why grading could not judge (then resolved is False)


def episode_patch(sandbox: Sandbox, timeout_s: float = 60) -> str:
    """Everything changed in /testbed since the base commit, new files included."""
    result = sandbox.run(f"cd {REPO} && git add -A >/dev/null && git diff --cached --no-color HEAD",
                         timeout_s=timeout_s)
    if result.exit_code != 0:
        raise RuntimeError(f"git diff in {REPO} failed ({result.exit_code}): {result.output[-500:]}")
    return result.output


def _restore_tests_command(task: Task) -> str:
    files = " ".join(shlex.quote(f) for f in task.test_files)
    steps = [f"cd {REPO}", "git reset -q", f"git checkout -q HEAD -- {files}" if files else "true"]
    if task.test_patch:
        steps.append(f"git apply -v - <<'DAGGER_JAX_TEST_PATCH'\n{task.test_patch}\nDAGGER_JAX_TEST_PATCH")
    return " && ".join(steps)


def run_tests(sandbox: Sandbox, task: Task, timeout_s: float) -> str:
    """Restores the test files, runs the task's tests, returns the log with harness markers."""
    restore = sandbox.run(_restore_tests_command(task), timeout_s=60)
    if restore.exit_code != 0:
        raise RuntimeError(f"restoring test files failed ({restore.exit_code}): {restore.output[-500:]}")
    command = (f"cd {REPO} && echo {shlex.quote(START_TEST_OUTPUT)} && "
               f"{{ {task.test_command} ; }} ; echo {shlex.quote(END_TEST_OUTPUT)}")
    return sandbox.run(command, timeout_s=timeout_s).output


def verdict(task: Task, log: str) -> tuple[str, dict]:
    """(swebench resolution status, swebench report) of a test log for this task."""
    if task.log_parser not in PARSER_REGISTRY:
        raise ValueError(f"task {task.instance_id}: log parser {task.log_parser!r} is not in "
                         f"swebench's PARSER_REGISTRY")
    if START_TEST_OUTPUT in log and END_TEST_OUTPUT in log:
        log = log.split(START_TEST_OUTPUT, 1)[1].split(END_TEST_OUTPUT, 1)[0]
    status_map = PARSER_REGISTRY[task.log_parser](log, None)
    report = get_eval_tests_report(status_map, {FAIL_TO_PASS: list(task.fail_to_pass),
                                                PASS_TO_PASS: list(task.pass_to_pass)})
    return get_resolution_status(report), report


def grade(sandbox: Sandbox, task: Task, timeout_s: float = 300) -> GradeResult:
    """Takes the patch, restores the tests, runs them and judges; never raises for a bad episode."""
    patch, log = "", ""
    try:
        patch = episode_patch(sandbox)
        log = run_tests(sandbox, task, timeout_s)
        status, report = verdict(task, log)
    except Exception as e:  # noqa: BLE001 - any fault is this episode's recorded reason
        return GradeResult(False, ResolvedStatus.NO.value, 0, len(task.fail_to_pass), 0,
                           len(task.pass_to_pass), patch, log, error=f"{type(e).__name__}: {e}")
    f2p, p2p = report[FAIL_TO_PASS], report[PASS_TO_PASS]
    return GradeResult(
        resolved=status == ResolvedStatus.FULL.value, status=status,
        fail_to_pass_passed=len(f2p["success"]), fail_to_pass_total=len(task.fail_to_pass),
        pass_to_pass_passed=len(p2p["success"]), pass_to_pass_total=len(task.pass_to_pass),
        patch=patch, log=log)
