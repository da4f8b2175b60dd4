"""Grading in real sandboxes agrees with swebench: noop fails, gold resolves, test edits don't count."""

from __future__ import annotations

import pytest
from swebench.harness.constants import FAIL_TO_PASS, PASS_TO_PASS, ResolvedStatus
from swebench.harness.grading import get_logs_eval, get_eval_tests_report, get_resolution_status
from swebench import types as swebench_types

from dagger_jax.envs.grading import grade, verdict
from dagger_jax.envs.sandbox import SandboxSpec
from dagger_jax.envs.tasks.repo import materialize_repo
from dagger_jax.envs.tasks.synthetic import Difficulty, generate_tasks

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

TASKS = generate_tasks(2, seed=21, difficulty=Difficulty(files=2, functions_per_file=2))


def apply(sandbox, patch: str) -> None:
    result = sandbox.run(f"cd /testbed && git apply - <<'PATCH'\n{patch}\nPATCH", timeout_s=30)
    assert result.exit_code == 0, result.output


def open_task(backend, task, tmp_path):
    repo = materialize_repo(task, tmp_path / task.instance_id)
    return backend.open(SandboxSpec(image="dagger-jax/base:bookworm", repo_dir=repo))


def swebench_verdict(task, log: str, tmp_path) -> str:
    """The harness's own path: its log reader on the log file, then its report and rule."""
    spec = swebench_types.TestSpec(instance_id=task.instance_id, image="", eval_script_list=[],
                    repo="synthetic/" + task.instance_id, version="0",
                    FAIL_TO_PASS=list(task.fail_to_pass), PASS_TO_PASS=list(task.pass_to_pass),
                    log_parser=task.log_parser)
    log_file = tmp_path / "eval.log"
    log_file.write_text(log)
    status_map, ok = get_logs_eval(spec, str(log_file))
    assert ok, log[-2000:]
    report = get_eval_tests_report(status_map, {FAIL_TO_PASS: list(task.fail_to_pass),
                                                PASS_TO_PASS: list(task.pass_to_pass)})
    return get_resolution_status(report)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.instance_id)
def test_noop_fails_gold_resolves_and_swebench_agrees(backend, task, tmp_path):
    with open_task(backend, task, tmp_path) as sandbox:
        noop = grade(sandbox, task)
    assert noop.error is None, noop.error
    assert not noop.resolved and noop.status == ResolvedStatus.NO.value
    assert noop.fail_to_pass_passed == 0 and noop.pass_to_pass_passed == len(task.pass_to_pass)
    assert noop.patch == ""
    assert swebench_verdict(task, noop.log, tmp_path) == noop.status

    with open_task(backend, task, tmp_path / "gold") as sandbox:
        apply(sandbox, task.gold_patch)
        gold = grade(sandbox, task)
    assert gold.resolved and gold.status == ResolvedStatus.FULL.value, gold.log[-2000:]
    assert gold.fail_to_pass_passed == len(task.fail_to_pass)
    assert task.metadata["target_file"] in gold.patch
    assert swebench_verdict(task, gold.log, tmp_path) == gold.status


def test_editing_the_tests_does_not_resolve(backend, tmp_path):
    task = TASKS[0]
    with open_task(backend, task, tmp_path) as sandbox:
        # Cheat: make every failing test trivially pass instead of fixing the code.
        for path in task.test_files:
            sandbox.write_file(f"/testbed/{path}", sandbox.read_file(f"/testbed/{path}")
                               .replace("assert ", "assert True or "))
        cheat = grade(sandbox, task)
    assert not cheat.resolved and cheat.fail_to_pass_passed == 0
    assert "assert True or" in cheat.patch  # the edit is recorded in the episode's patch


def test_a_log_without_results_is_not_resolved():
    status, report = verdict(TASKS[0], "collected 0 items\n")
    assert status == ResolvedStatus.NO.value
    assert report[FAIL_TO_PASS]["failure"] == list(TASKS[0].fail_to_pass)
