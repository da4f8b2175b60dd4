"""Two JAX processes on 127.0.0.1 (gloo collectives) train as one run: the multi-host path of a pod."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import SUBPROCESS_XLA_FLAGS
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
