"""What is particular to the bubblewrap sandbox: its root, its uid, its copy, its reaping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from dagger_jax.envs.sandbox import SandboxError, SandboxSpec
from dagger_jax.envs.sandbox import bwrap as bwrap_module
from dagger_jax.envs.sandbox.bwrap import BwrapBackend
from dagger_jax.envs.sandbox.confine import UID_BASE

from tests.envs.sandbox.conftest import LIMITS, ROOT

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow


def test_uses_the_cached_base_rootfs(bwrap_backend, sandbox_deps):
    assert bwrap_backend.rootfs is not None, f"no base rootfs was built:\n{sandbox_deps.report}"
    assert (bwrap_backend.rootfs / "usr" / "bin" / "python3").exists()


def test_host_root_fallback_still_isolates(task_repo, tmp_path):
    backend = BwrapBackend(LIMITS, work_root=tmp_path / "work", rootfs=None)
    with backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        assert box.run("cat pkg/sub/deep.txt").output == "deep\n"
        denied = box.run("touch /usr/x /etc/x")
        assert denied.exit_code != 0 and "Read-only file system" in denied.output
        assert box.run("ls /root /home 2>&1; echo rc=$?").output.endswith("rc=2\n")


@pytest.mark.parametrize("backend", ["bwrap"], indirect=True)
def test_writes_outside_testbed_fail(sandbox):
    # (docker: such writes land in the container's own layer, removed with it)
    result = sandbox.run("echo x > /etc/x; echo x > /usr/x; echo x > /x")
    assert result.exit_code != 0 and result.output.count("Read-only file system") == 3


@pytest.mark.parametrize("backend", ["bwrap"], indirect=True)
def test_runs_as_its_own_unprivileged_uid(sandbox):
    uid = int(sandbox.run("id -u").output)
    assert uid >= UID_BASE
    assert sandbox.run("grep CapEff /proc/self/status").output.split()[1] == "0" * 16
    assert sandbox.run("stat -c %u /testbed/pkg/calc.py").output.strip() == str(uid)


def test_close_removes_the_copy_and_every_process(bwrap_backend, task_repo):
    box = bwrap_backend.open(SandboxSpec(repo_dir=task_repo))
    uid = int(box.run("id -u").output)
    copy = box._dir
    assert copy.is_dir()
    box.close()
    assert not copy.exists()
    owned = [p for p in os.listdir("/proc") if p.isdigit() and _uid(p) == uid]
    assert owned == []


def _uid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    except (OSError, StopIteration):
        return None


_OWNER = """
import sys, time
from pathlib import Path
from dagger_jax.envs.sandbox import SandboxLimits, SandboxSpec
from dagger_jax.envs.sandbox.bwrap import BwrapBackend
box = BwrapBackend(SandboxLimits(), work_root=Path(sys.argv[2])).open(
    SandboxSpec(repo_dir=Path(sys.argv[1])))
print(box._dir, flush=True)
time.sleep(600)
"""


def test_copies_of_a_killed_owner_are_reaped(task_repo, tmp_path):
    work = tmp_path / "work"
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(task_repo), str(work)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        copy = owner.stdout.readline().strip()
        assert copy, "the owner process did not open a sandbox"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert os.path.isdir(copy)
    backend = BwrapBackend(LIMITS, work_root=work)  # reaps at start
    assert not os.path.exists(copy)
    with backend.open(SandboxSpec(repo_dir=task_repo)) as live:
        assert backend.reap_orphans() == 0 and live._dir.is_dir()


def test_image_only_tasks_are_refused_with_a_reason(bwrap_backend):
    with pytest.raises(SandboxError, match="needs a host repo directory"):
        bwrap_backend.open(SandboxSpec(image="swebench/sweb.eval.x86_64.django:latest"))


def test_missing_bwrap_is_a_sandbox_error(monkeypatch):
    monkeypatch.setattr(bwrap_module.shutil, "which", lambda name: None)
    with pytest.raises(SandboxError, match="ensure_sandbox_deps"):
        BwrapBackend(LIMITS)


def test_without_a_memory_cgroup_it_refuses_unless_told_per_process_limits_will_do(monkeypatch,
                                                                                   tmp_path):
    from dagger_jax.envs.sandbox import cgroup
    from dagger_jax.envs.sandbox.base import SandboxLimits

    with pytest.raises(SandboxError, match="no memory cgroup controller"):
        cgroup.MemoryHierarchy.find(root=tmp_path, self_cgroup="0::/user.slice\n")

    def none(*args, **kwargs):
        raise SandboxError("no memory cgroup controller is mounted at /sys/fs/cgroup")

    monkeypatch.setattr(cgroup.MemoryHierarchy, "find", none)
    with pytest.raises(SandboxError, match="memory_scope='process'"):
        BwrapBackend(LIMITS, work_root=tmp_path / "w")
    per_process = BwrapBackend(SandboxLimits(memory_mb=512, memory_scope="process"),
                               work_root=tmp_path / "w")
    assert per_process.memory is None
    with pytest.raises(ValueError, match="memory_scope"):
        SandboxLimits(memory_scope="host")
