"""The task tools end to end: make_tasks builds per-task images for docker, converts SWE-bench
instances; run_episode runs the expert and noop over both, in real sandboxes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from dagger_jax.envs.task_images import build_task_image, task_image_name
from dagger_jax.envs.tasks.synthetic import generate_task
from dagger_jax.envs.tasks.task import Task
from tests.envs.sandbox.test_swebench_source import harness_instance

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *args],
                          capture_output=True, text=True, timeout=900)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_image_name_follows_docker_rules_and_the_content():
    task = generate_task(3, 0)
    name = task_image_name(task)
    repository, tag = name.rsplit(":", 1)
    assert repository.startswith("dagger-jax/task.synthetic.") and repository == repository.lower()
    changed = Task(**{**task.__dict__, "repo_files": {**task.repo_files, "extra.txt": "x\n"}})
    assert task_image_name(changed) != name and task_image_name(task, "other/base:1") != name
    with pytest.raises(ValueError, match="no repo_files"):
        task_image_name(Task(**{**task.__dict__, "repo_files": None, "image": "x:1"}))


def test_synthetic_tasks_get_images_that_docker_episodes_start_from(tmp_path, docker_backend,
                                                                    bwrap_backend):
    out = tmp_path / "tasks.jsonl"
    made = tool("make_tasks.py", "--source", "synthetic", "--n", "2", "--seed", "11",
                "--sandbox", "docker", "--out", str(out))
    assert made.returncode == 0, made.stderr
    tasks = [Task.from_json(json.loads(line)) for line in out.read_text().splitlines()]
    client = docker.from_env()
    for task in tasks:
        assert task.image == task_image_name(task) and task.repo_files
        image = client.images.get(task.image)
        assert image.labels["dagger_jax.task"] == task.instance_id
        # The repo at /testbed is the task's base commit, with a clean tree.
        status = client.containers.run(task.image, ["git", "status", "--porcelain"], remove=True,
                                       network_mode="none")
        assert status.decode() == ""
    assert build_task_image(client, tasks[0]) == tasks[0].image  # cached: found, not rebuilt

    for sandbox, policy, rate in (("docker", "expert", 1.0), ("docker", "noop", 0.0),
                                  ("bwrap", "expert", 1.0)):
        ran = tool("run_episode.py", "--tasks", str(out), "--policy", policy, "--sandbox", sandbox)
        assert ran.returncode == 0, ran.stderr
        lines = json_lines(ran.stdout)
        assert lines[-1]["resolve_rate"] == rate and lines[-1]["episodes"] == 2, ran.stdout
        assert all(line["end_reason"] == "finish" for line in lines[:-1])


def test_make_tasks_takes_the_demo_family_knobs(tmp_path, bwrap_backend):
    out = tmp_path / "tasks.jsonl"
    made = tool("make_tasks.py", "--source", "synthetic", "--n", "6", "--seed", "2", "--templates", "4",
                "--bug-kinds", "compare,arith", "--packages", "1", "--unnumbered-packages",
                "--modules", "1", "--out", str(out))
    assert made.returncode == 0, made.stderr
    tasks = [Task.from_json(json.loads(line)) for line in out.read_text().splitlines()]
    assert len(tasks) == 6 and {t.metadata["target_file"] for t in tasks} == {"ledger/core.py"}
    assert {t.metadata["mutation"]["operator"] for t in tasks} <= {"compare", "arith"}
    bad = tool("make_tasks.py", "--source", "synthetic", "--n", "1", "--modules", "99",
               "--out", str(tmp_path / "bad.jsonl"))
    assert bad.returncode == 2 and "Difficulty.modules=99" in bad.stderr


def test_swebench_instances_become_tasks_the_expert_resolves_in_their_images(tmp_path, docker_backend):
    instance = harness_instance(tmp_path)
    instances = tmp_path / "instances.jsonl"
    instances.write_text(json.dumps(instance) + "\n" + json.dumps({"instance_id": "broken"}) + "\n")
    out = tmp_path / "tasks.jsonl"
    made = tool("make_tasks.py", "--source", "swebench", "--instances", str(instances),
                "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert "1 bad instance(s) skipped" in made.stdout and "'broken'" in made.stderr
    task = Task.from_json(json.loads(out.read_text()))
    assert task.image == instance["image"] and task.repo_files is None

    expert = json_lines(tool("run_episode.py", "--tasks", str(out), "--policy", "expert",
                             "--sandbox", "docker").stdout)
    assert expert[0]["resolved"] and expert[0]["end_reason"] == "finish", expert
    noop = json_lines(tool("run_episode.py", "--instances", str(instances), "--policy", "noop",
                           "--sandbox", "docker").stdout)
    assert noop[-1]["episodes"] == 1 and noop[-1]["resolved"] == 0 and noop[-1]["bad_task_lines"] == 1
    # An image-only task cannot run under bubblewrap: that episode is not run (no outcome of the
    # policy's), the line says why, and the run goes on.
    bwrap = json_lines(tool("run_episode.py", "--tasks", str(out), "--policy", "expert",
                            "--sandbox", "bwrap").stdout)
    assert "docker backend" in bwrap[0]["not_run"] and bwrap[-1]["not_run"] == 1


def test_expert_repairs_damage_in_an_image_task(tmp_path, docker_backend, run_episode):
    """Image tasks have no repo_files: the expert reads the base state from the image's commit."""
    from dagger_jax.envs.tasks.swebench_source import task_from_instance
    from dagger_jax.policies.scripted_expert import ScriptedExpert

    task = task_from_instance(harness_instance(tmp_path))
    target = task.gold_patch.split("+++ b/", 1)[1].split("\n", 1)[0]

    def damage(sandbox):
        sandbox.run(f"cd /testbed && echo 'broken(' >> {target} && rm -f */__init__.py "
                    "&& echo junk > stray.txt", timeout_s=30)

    result = run_episode(task, ScriptedExpert(), docker_backend, setup=damage)
    assert result.resolved, result.summary()
    assert "stray.txt" not in result.patch and result.turns > 2
