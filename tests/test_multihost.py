"""Two JAX processes on 127.0.0.1 (gloo collectives) train as one run, the plain job and the
outer loop: the multi-host path of a pod."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dagger_jax.data.shards import EpisodeSource
from tests.conftest import SUBPROCESS_XLA_FLAGS
from tests.recipes.test_loop_resume import OVERRIDES as LOOP_RESUME_OVERRIDES
from tests.recipes.test_loop_resume import checkpoint_steps, mid_training, read_state
from tests.test_main import ROOT, final_params, main_command

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_devices() -> dict:
    return {**os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {SUBPROCESS_XLA_FLAGS}"}


def start_two_processes(workdir: Path, data: list[str], *extra: str) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(
        main_command(workdir, data, *extra, "--config.distributed.enabled=True",
                     f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                     "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"),
        cwd=ROOT, env=two_devices(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]


def test_two_processes_match_one(tmp_path, plain_job_data):
    """Four devices over two hosts, two layouts: rows split between the processes (each feeds
    its own half of every batch), and each row's tokens split over all four devices (a
    sequence group spanning both hosts: both feed the same rows)."""
    common = [f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=3"]
    single = subprocess.run(main_command(tmp_path / "single", plain_job_data, *common), cwd=ROOT,
                            env=two_devices(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    layouts = {"rows": (), "tokens": ("--config.mesh.shape=(1,1,4,1)",)}
    procs = {name: start_two_processes(tmp_path / name, plain_job_data, *common, *extra)
             for name, extra in layouts.items()}
    outputs = {name: [p.communicate(timeout=600)[0] for p in ps] for name, ps in procs.items()}
    step_a, single_params = final_params(tmp_path / "single")
    for name, ps in procs.items():
        for p, out in zip(ps, outputs[name]):
            assert p.returncode == 0, out[-3000:]
        assert "is connected to 3 peer ranks" in outputs[name][0]
        blocks = {"rows": ["block 0 of 2", "block 1 of 2"], "tokens": ["block 0 of 1"] * 2}[name]
        for out, block in zip(outputs[name], blocks):
            assert f"this process feeds row {block}" in out, out[-3000:]
        step_b, multi_params = final_params(tmp_path / name)
        assert step_a == step_b == STEPS
        # Same math on another device layout: reductions differ in order, Adam amplifies
        # near-zero gradients, so compare at 1% of a step (lr 3e-3).
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=3e-5),
                               single_params, multi_params)
        assert (tmp_path / name / "export" / "model.safetensors").is_file()


# configs/local.py:dagger at tests/recipes/test_loop_resume.py's size (its determinism notes
# apply: serial, greedy collection), with four rows per batch so that every layout splits them.
LOOP_OVERRIDES = [
    *(o for o in LOOP_RESUME_OVERRIDES if not o.startswith(
        ("--config.train.batch_size", "--config.train.checkpoint_every",
         "--config.train.keep_checkpoints", "--config.train.log_every"))),
    # A checkpoint after every step: the kill lands between two of them.
    "--config.train.batch_size=4", "--config.train.checkpoint_every=1",
    "--config.train.keep_checkpoints=100", "--config.distributed.barrier_timeout_s=600",
]


def loop_command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dagger_jax.main", "--config=configs/local.py:dagger",
            f"--workdir={workdir}", *LOOP_OVERRIDES, *extra]


def start_loop_processes(workdir: Path, env: dict, logs: list[Path], *extra: str,
                         first_only: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    """The loop on two processes, their output in `logs`; `first_only` goes to process 0
    alone."""
    port = free_port()
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as out:
            procs.append(subprocess.Popen(
                loop_command(workdir, "--config.distributed.enabled=True",
                             f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                             "--config.distributed.num_processes=2",
                             f"--config.distributed.process_id={i}", *extra,
                             *(first_only if i == 0 else ())),
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> list[str]:
    for p in procs:
        p.wait(timeout=timeout)
    return [log.read_text() for log in logs]


def episodes(workdir: Path) -> dict[str, list[tuple]]:
    """Per record directory: each episode's id, and per turn its executor and label tokens."""
    return {str(d.relative_to(workdir)): [
        (r.episode_id, [(t.executor, list(t.label_ids)) for t in r.turns])
        for r in EpisodeSource(d)] for d in [*sorted(workdir.glob("data/iter_*")),
                                             *sorted(workdir.glob("eval/iter_*")),
                                             workdir / "eval" / "teacher"]}


def test_the_loop_on_two_processes_matches_one(tmp_path, bwrap_backend):
    """configs/local.py:dagger, two iterations, on two processes of two devices each: process
    0 collects and evaluates for both, both train their rows of every batch. Killed in the
    middle of iteration 2's training (process 1 first, as a host dies, then process 0, as the
    pod is restarted) and restarted, the pair ends with the episodes of one process with four
    devices and, within the multi-host tolerance, its weights. A leader late at a barrier, two
    processes given different configs, and a mesh that does not cover their devices each stop
    the run with a message."""
    four = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 "
                                       f"{SUBPROCESS_XLA_FLAGS}", "TMPDIR": str(tmp_path)}
    with (tmp_path / "single.log").open("w") as out:
        single = subprocess.Popen(loop_command(tmp_path / "single"), cwd=ROOT, env=four,
                                  stdout=out, stderr=subprocess.STDOUT)
    env = {**two_devices(), "TMPDIR": str(tmp_path)}
    pair_dir = tmp_path / "pair"
    first_logs = [tmp_path / f"pair-{i}.log" for i in range(2)]
    pair = start_loop_processes(pair_dir, env, first_logs)
    deadline = time.monotonic() + 600
    while not mid_training(pair_dir, read_state(pair_dir)):
        assert all(p.poll() is None for p in pair), [log.read_text()[-3000:] for log in first_logs]
        assert time.monotonic() < deadline, "iteration 2's training not reached in 600 s"
        time.sleep(0.05)
    for p in reversed(pair):
        p.send_signal(signal.SIGKILL)
        p.wait()
    killed_at = checkpoint_steps(pair_dir)[-1]
    first = [log.read_text() for log in first_logs]
    assert "this process feeds row block 0 of 2" in first[0]
    assert "this process feeds row block 1 of 2" in first[1]
    # The leader collected and evaluated; the other process only trained.
    assert "iteration 1: collected" in first[0] and "collected" not in first[1], first[1][-3000:]

    logs = [tmp_path / f"pair-restart-{i}.log" for i in range(2)]
    restarted = wait_all(start_loop_processes(pair_dir, env, logs), logs, 600)
    single.wait(timeout=600)
    assert single.returncode == 0, (tmp_path / "single.log").read_text()[-4000:]
    for log in restarted:
        assert "Traceback" not in log and "resuming from" in log, log[-4000:]
        assert re.search(rf"training steps {killed_at}\.\.", log), log[-4000:]

    found = episodes(pair_dir)
    assert found == episodes(tmp_path / "single")
    assert all(found.values()) and len(found) == 5, {k: len(v) for k, v in found.items()}
    single_state = json.loads((tmp_path / "single" / "state.json").read_text())
    pair_state = json.loads((pair_dir / "state.json").read_text())
    assert [r["train_steps"] for r in pair_state["history"]] == \
        [r["train_steps"] for r in single_state["history"]]
    (step_a, params_a), (step_b, params_b) = final_params(tmp_path / "single"), \
        final_params(pair_dir)
    assert step_a == step_b == single_state["history"][-1]["train_steps"]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=3e-5),
                           params_a, params_b)

    # A leader that does not reach a barrier in time (here: collecting or evaluating longer
    # than 1 s) stops the other process with a message that says what to do.
    logs = [tmp_path / f"late-{i}.log" for i in range(2)]
    late = start_loop_processes(tmp_path / "late", env, logs,
                                "--config.distributed.barrier_timeout_s=1")
    late_out = wait_all(late[1:], logs[1:], 300)[0]
    late[0].kill()
    late[0].wait()
    assert late[1].returncode != 0
    assert re.search(r"process 1: not every process reached 'iteration 1 (collected|evaluated)'"
                     r" within 1 s .* restart every process with the same command", late_out), \
        late_out[-3000:]

    # Started with different flags, the two processes refuse before anything runs.
    logs = [tmp_path / f"refused-{i}.log" for i in range(2)]
    outs = wait_all(start_loop_processes(tmp_path / "refused", env, logs,
                                         first_only=("--config.loop.epochs=3",)), logs, 300)
    assert all("process(es) [1] were started with another config than process 0" in out
               for out in outs), outs[0][-3000:]
    assert not (tmp_path / "refused" / "checkpoints").exists()
    # A mesh that does not cover the processes' devices is refused, saying how many there are.
    logs = [tmp_path / f"mesh-{i}.log" for i in range(2)]
    outs = wait_all(start_loop_processes(tmp_path / "mesh", env, logs,
                                         "--config.mesh.shape=(1,8,1,1)"), logs, 300)
    assert all("mesh shape [1, 8, 1, 1] needs 8 devices, 4 are available (2 processes x 2 "
               "devices each" in out for out in outs), outs[0][-3000:]
