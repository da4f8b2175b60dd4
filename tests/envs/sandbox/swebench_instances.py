"""Harness-shaped SWE-bench instances built locally (no SWE-bench image can be fetched here).

`harness_instance` recasts a generated task as an instance in the harness's dataset format: the
repo at /testbed of an image named the harness's way (built from the base image), a test patch
that adds the failing tests, and an eval script in the harness's shape (xtrace markers, test
files reset, test patch applied). Shared by the swebench source tests and the eval tool's tests.
"""

from __future__ import annotations

import io
import json
import tarfile

import docker

from dagger_jax.envs.tasks.repo import materialize_repo
from dagger_jax.envs.tasks.synthetic import generate_task, unified_diff
from dagger_jax.envs.tasks.task import Task

BASE_IMAGE = "dagger-jax/base:bookworm"


def harness_instance(tmp_path) -> dict:
    """A generated task recast as a SWE-bench instance: its failing tests arrive by test patch."""
    task = generate_task(17, 0)
    target = task.metadata["target_function"]
    test_path = next(p for p in task.test_files if f"test_{target}_" in task.repo_files[p])
    full_tests = task.repo_files[test_path]
    blocks = full_tests.split("\n\n\n")
    without = "\n\n\n".join(b for b in blocks if f"def test_{target}_" not in b)
    base_files = {**task.repo_files, test_path: without}
    repo = materialize_repo(Task(**{**task.__dict__, "repo_files": base_files}), tmp_path / "repo")
    instance_id = f"synthetic__{task.metadata['package']}-1"
    image = f"sweb.eval.x86_64.{instance_id.lower()}:latest"
    build_image(repo, image)
    test_patch = unified_diff(test_path, without, full_tests)
    eval_script = "\n".join([
        "#!/bin/bash", "set -uxo pipefail", "cd /testbed",
        f"git checkout HEAD {test_path}",
        f"git apply -v - <<'EOF_114329324912'\n{test_patch}\nEOF_114329324912",
        ": '>>>>> Start Test Output'",
        "python3 -m pytest -rA -p no:cacheprovider tests",
        ": '>>>>> End Test Output'",
        f"git checkout HEAD {test_path}"]) + "\n"
    return {
        "instance_id": instance_id, "repo": "synthetic/" + task.metadata["package"], "version": "0.1",
        "base_commit": "HEAD", "problem_statement": task.problem_statement,
        "patch": task.gold_patch, "test_patch": test_patch,
        "FAIL_TO_PASS": json.dumps(list(task.fail_to_pass)),
        "PASS_TO_PASS": json.dumps(list(task.pass_to_pass)),
        "image": image, "eval_script": eval_script, "log_parser": "parse_log_pytest",
        "eval_type": "pass_and_fail",
    }


def build_image(repo, image: str) -> None:
    """The repo committed at /testbed on the base image. STOPSIGNAL SIGKILL: the harness's
    containers idle in `tail -f /dev/null` as PID 1, which ignores `docker stop`'s SIGTERM, so
    each would otherwise take the full 15 s stop timeout to go."""
    client = docker.from_env()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(repo, arcname="testbed")
    container = client.containers.create(BASE_IMAGE, command="true")
    try:
        container.put_archive("/", buffer.getvalue())
        container.commit(repository=image.split(":")[0], tag="latest", conf={"StopSignal": "SIGKILL"})
    finally:
        container.remove(force=True)
