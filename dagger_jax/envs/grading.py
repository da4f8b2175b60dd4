"""Grades an episode the way the SWE-bench harness does, inside the episode's sandbox.

Order matters: the episode's patch is taken first (`git diff` of everything the agent changed),
then the tests run with the task's test files restored (so an agent that edited the tests gains
nothing): for SWE-bench instances through the harness's own eval script, for generated tasks by
restoring the files, applying the test patch and running the test command between the
harness's log markers. The full log is written to a file in the sandbox and read back (never
the capped command output), then judged by `swebench` itself: its log reader
(`get_logs_eval`, with its checks for a suite that did not run), its report and its rule
(resolved = every FAIL_TO_PASS and every PASS_TO_PASS test passes).
"""

from __future__ import annotations

import dataclasses
import shlex
import tempfile
from pathlib import Path

from swebench import types as swebench_types
from swebench.harness.constants import (END_TEST_OUTPUT, FAIL_TO_PASS, PASS_TO_PASS,
                                        START_TEST_OUTPUT, TEST_EXIT_CODE_VAR, EvalType,
                                        ResolvedStatus)
from swebench.harness.grading import get_eval_tests_report, get_logs_eval, get_resolution_status
from swebench.harness.log_parsers import PARSER_REGISTRY
from swebench.harness.utils import parse_eval_script, record_test_exit_code

from dagger_jax.envs.sandbox.base import Sandbox
from dagger_jax.envs.tasks.task import Task

REPO = "/testbed"
EVAL_SCRIPT = "/tmp/dagger_jax_eval.sh"
EVAL_LOG = "/tmp/dagger_jax_eval.log"


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


def test_spec(task: Task) -> swebench_types.TestSpec:
    """The harness's view of the task (what its log reader and report need)."""
    if task.log_parser not in PARSER_REGISTRY:
        raise ValueError(f"task {task.instance_id}: log parser {task.log_parser!r} is not in "
                         f"swebench's PARSER_REGISTRY")
    return swebench_types.TestSpec(
        instance_id=task.instance_id, image=task.image or "", eval_script_list=eval_script_lines(task),
        repo=str(task.metadata.get("repo", task.source)), version=str(task.metadata.get("version", "")),
        FAIL_TO_PASS=list(task.fail_to_pass), PASS_TO_PASS=list(task.pass_to_pass),
        log_parser=task.log_parser, eval_type=task.eval_type)


def eval_script_lines(task: Task) -> list[str]:
    """The eval script's commands: the task's own (SWE-bench), else one built like the harness's."""
    if task.eval_script:
        lines = parse_eval_script(task.eval_script)
        # A TestSpec's script (what swebench_source keeps) records the exit code already; a
        # second capture would read the first one's status (0) and hide the tests' own.
        return lines if any(TEST_EXIT_CODE_VAR in line for line in lines) else record_test_exit_code(lines)
    files = " ".join(shlex.quote(f) for f in task.test_files)
    lines = [f"cd {REPO}", "git reset -q"]
    if files:
        lines.append(f"git checkout -q HEAD -- {files}")
    if task.test_patch:
        lines.append(f"git apply -v - <<'DAGGER_JAX_TEST_PATCH'\n{task.test_patch}\nDAGGER_JAX_TEST_PATCH")
    lines += [f"echo {shlex.quote(START_TEST_OUTPUT)}", task.test_command,
              f"echo {shlex.quote(END_TEST_OUTPUT)}"]
    return record_test_exit_code(lines)


def episode_patch(sandbox: Sandbox, timeout_s: float = 60) -> str:
    """Everything changed in /testbed since the base commit, new files included."""
    result = sandbox.run(f"cd {REPO} && git add -A >/dev/null && git diff --cached --no-color HEAD "
                         f"> {EVAL_LOG}.patch", timeout_s=timeout_s)
    if result.exit_code != 0:
        raise RuntimeError(f"git diff in {REPO} failed ({result.exit_code}): {result.output[-500:]}")
    return sandbox.read_file(f"{EVAL_LOG}.patch")


def run_tests(sandbox: Sandbox, task: Task, timeout_s: float) -> str:
    """Runs the eval script; returns its whole log (read from a file, not the capped output)."""
    script = "\n".join(["#!/bin/bash", "set -uxo pipefail", *eval_script_lines(task)]) + "\n"
    sandbox.write_file(EVAL_SCRIPT, script)
    sandbox.run(f"bash {EVAL_SCRIPT} > {EVAL_LOG} 2>&1", timeout_s=timeout_s)
    return sandbox.read_file(EVAL_LOG)


def verdict(task: Task, log: str) -> tuple[str, dict]:
    """(swebench resolution status, swebench report) of a test log for this task."""
    spec = test_spec(task)
    with tempfile.TemporaryDirectory(prefix="dagger_jax-grade-") as tmp:
        log_file = Path(tmp) / "eval.log"
        log_file.write_text(log)
        status_map, usable = get_logs_eval(spec, str(log_file))
    gold = {FAIL_TO_PASS: list(task.fail_to_pass), PASS_TO_PASS: list(task.pass_to_pass)}
    report = get_eval_tests_report(status_map if usable else {}, gold,
                                   eval_type=EvalType(task.eval_type))
    return (get_resolution_status(report) if usable else ResolvedStatus.NO.value), report


def grade(sandbox: Sandbox, task: Task, timeout_s: float = 600) -> GradeResult:
    """Takes the patch, runs the tests, judges; never raises for a bad episode."""
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
