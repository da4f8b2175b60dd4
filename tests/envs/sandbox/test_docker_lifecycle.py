"""Docker sandbox lifecycle: labels, removal, orphan reaping, and infrastructure faults."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time

import docker.errors
import pytest

from dagger_jax.envs.sandbox import SandboxError, SandboxSpec
from dagger_jax.envs.sandbox.docker_backend import DockerBackend, connect
from dagger_jax.envs.sandbox.docker_sandbox import LABEL_OWNER_PID, LABEL_RUN, LABEL_SANDBOX

from tests.envs.sandbox.conftest import LIMITS, ROOT

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow


def _exists(client, container_id: str) -> bool:
    try:
        client.containers.get(container_id)
        return True
    except docker.errors.NotFound:
        return False


def test_container_is_labelled_limited_and_offline(docker_backend, task_repo):
    with docker_backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        attrs = docker_backend.client.containers.get(box.container_id).attrs
    labels, host = attrs["Config"]["Labels"], attrs["HostConfig"]
    assert labels[LABEL_SANDBOX] == "1" and labels[LABEL_RUN] == "pytest"
    assert labels[LABEL_OWNER_PID] == str(os.getpid())
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == LIMITS.memory_mb * 2**20 and host["PidsLimit"] == LIMITS.pids
    assert host["NanoCpus"] == int(LIMITS.cpus * 1e9)
    assert attrs["Config"]["WorkingDir"] == "/testbed"


def test_container_is_removed_on_close_and_on_error(docker_backend, task_repo):
    with docker_backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        container_id = box.container_id
        assert _exists(docker_backend.client, container_id)
    assert not _exists(docker_backend.client, container_id)
    with pytest.raises(RuntimeError, match="boom"):
        with docker_backend.open(SandboxSpec(repo_dir=task_repo)) as box:
            container_id = box.container_id
            raise RuntimeError("boom")
    assert not _exists(docker_backend.client, container_id)


_OWNER = """
import sys, time
from dagger_jax.envs.sandbox import SandboxLimits, SandboxSpec
from dagger_jax.envs.sandbox.docker_backend import DockerBackend
box = DockerBackend(SandboxLimits(), run_id="doomed").open(SandboxSpec(image=sys.argv[1]))
print(box.container_id, flush=True)
time.sleep(600)
"""


def test_containers_of_a_killed_owner_are_reaped(docker_backend):
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, docker_backend.default_image],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        container_id = owner.stdout.readline().strip()
        assert container_id, "the owner process did not open a sandbox"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    client = docker_backend.client
    assert _exists(client, container_id), "SIGKILL left nothing to reap; the test proves nothing"
    with docker_backend.open(SandboxSpec(image=docker_backend.default_image)) as live:
        reaped = docker_backend.reap_orphans()
        assert reaped >= 1 and not _exists(client, container_id)
        assert _exists(client, live.container_id), "a live owner's container was reaped"
    # A new backend reaps at start, which is what a restarted run relies on.
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, docker_backend.default_image],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    container_id = owner.stdout.readline().strip()
    owner.kill()
    owner.wait()
    DockerBackend(LIMITS, run_id="restarted", client=client)
    assert not _exists(client, container_id)


def test_missing_image_is_a_sandbox_error_naming_it(docker_backend):
    with pytest.raises(SandboxError, match="no-such/image:v0 not found.*build_base_image") as info:
        docker_backend.open(SandboxSpec(image="no-such/image:v0"))
    assert "no-such/image:v0" in info.value.reason


def test_container_killed_between_commands_is_a_sandbox_error(docker_backend, task_repo):
    with docker_backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        assert box.run("echo up").output == "up\n"
        docker_backend.client.api.kill(box.container_id)
        with pytest.raises(SandboxError, match="died.*exit code 137") as info:
            box.run("echo again")
        assert "died" in info.value.reason


def test_container_killed_during_a_command_is_a_sandbox_error(docker_backend, task_repo):
    with docker_backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        threading.Timer(1.0, docker_backend.client.api.kill, [box.container_id]).start()
        start = time.monotonic()
        with pytest.raises(SandboxError, match="died"):
            box.run("sleep 30")
        assert time.monotonic() - start < 20


def test_container_removed_from_outside_is_a_sandbox_error(docker_backend, task_repo):
    box = docker_backend.open(SandboxSpec(repo_dir=task_repo))
    docker_backend.client.api.remove_container(box.container_id, force=True)
    with pytest.raises(SandboxError, match="removed"):
        box.run("true")
    box.close()  # nothing left to remove: still fine


def test_image_with_a_repo_at_testbed_and_an_overlaid_host_repo(docker_backend, task_repo):
    client = docker_backend.client
    seed = client.containers.create(docker_backend.default_image, entrypoint=["true"])
    try:
        seed.put_archive("/testbed", _one_file_tar("inside.txt", b"from the image\n"))
        image = seed.commit(repository="dagger-jax/test-task", tag=f"t{os.getpid()}")
    finally:
        seed.remove(force=True)
    try:
        with docker_backend.open(SandboxSpec(image=image.id)) as box:
            assert box.run("cat inside.txt; ls").output == "from the image\ninside.txt\n"
        with docker_backend.open(SandboxSpec(image=image.id, repo_dir=task_repo)) as box:
            listing = box.run("ls").output.split()
            assert "inside.txt" in listing and "pkg" in listing
    finally:
        client.images.remove(image.id, force=True)


def _one_file_tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_unreachable_daemon_is_a_sandbox_error(monkeypatch, sandbox_deps):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxError, match="not reachable.*ensure_sandbox_deps"):
        connect()


def test_git_works_on_the_copied_repo(docker_backend, task_repo):
    with docker_backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        result = box.run("git init -q && git add -A && git -c user.email=a@b -c user.name=a "
                         "commit -qm base && echo x >> pkg/calc.py && git diff --stat")
        assert "pkg/calc.py" in result.output, result.output


def test_a_wedged_exec_is_ended_by_the_client_deadline(docker_backend, task_repo):
    # The command stops the wrapper that would report its end, so only the client's own
    # deadline (a container restart) can end it; the files must survive that.
    with docker_backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        box.run("echo kept > /testbed/mark")
        result = box.run("read -r _ _ _ pp _ < /proc/$PPID/stat; kill -STOP $pp; sleep 1000",
                         timeout_s=1)
        assert result.timed_out and result.exit_code == 124
        assert box.run("cat /testbed/mark").output == "kept\n"


def test_a_daemon_that_cannot_size_containers_is_said_once_and_one_that_can_sizes_them(
        docker_backend, caplog):
    import logging

    from dagger_jax.envs.sandbox.docker_backend import DockerBackend
    from tests.envs.sandbox.conftest import LIMITS

    with caplog.at_level(logging.WARNING):
        backend = DockerBackend(LIMITS, run_id="pytest-quota")
    warned = [r.getMessage() for r in caplog.records if "without a disk quota" in r.getMessage()]
    if backend.disk_quota:
        assert not warned and backend.storage_opt(backend.default_image)["size"].isdigit()
    else:
        assert len(warned) == 1 and backend.driver in warned[0]
        assert backend.storage_opt(backend.default_image) is None
    assert not DockerBackend(dataclasses.replace(LIMITS, disk_mb=0), run_id="pytest-q0").disk_quota
