"""The docker sandbox: one container per episode, no network, memory / pids / CPU limits.

The container's pid 1 is a bash loop that only sleeps and reaps. Each command is an exec of
`timeout -s KILL N bash -lc ...` in /testbed, followed by `kill -9 -1`: whatever the command
left behind (background jobs, a fork bomb, daemons that left its process group) dies with it,
as in the bubblewrap sandbox. The client keeps its own deadline too: a command still running
past it is ended by restarting the container, which kills every process but keeps the files.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
import threading
import time
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from dagger_jax.envs.sandbox.base import (TIMEOUT_EXIT_CODE, WORKDIR, CommandResult, Sandbox,
                                          SandboxError, SandboxFileError, SandboxLimits,
                                          check_command, check_path, timeout_note)
from dagger_jax.envs.sandbox.output import OutputCapture

LABEL_SANDBOX = "dagger_jax.sandbox"
LABEL_RUN = "dagger_jax.run"
LABEL_OWNER_PID = "dagger_jax.owner_pid"
LABEL_OWNER = "dagger_jax.owner"  # Owner.token(): host, boot id, pid, start time
# Beyond `timeout` inside, how long the client waits before it restarts the container.
CLIENT_GRACE_S = 5.0
# Root's usual capabilities minus the ones a coding task has no use for (raw sockets, mknod,
# chroot, audit, setpcap/setfcap, binding low ports).
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]
_API_ERRORS = (docker.errors.APIError, requests.exceptions.RequestException)
# pid 1: bash reaps every orphan (a plain `sleep` would collect zombies) and survives the
# `kill -9 -1` after each command, which spares pid 1 and the caller. It sets no signal
# handler on purpose: the kernel then drops every signal sent to a namespace's pid 1 from
# inside it, so an agent's `kill -TERM 1` or `kill -9 1` cannot end its own sandbox (which
# would look like a fault of the machinery). We stop containers with SIGKILL from outside.
_IDLE = ["bash", "-c", "while :; do sleep 3600 & wait $!; done"]
# Every exec: the command with stdout+stderr on one pipe (kept in order), killed at the
# deadline, then everything it left behind killed; the exit code goes out on stderr last, so
# an exec that ends without it was cut short from outside.
_WRAPPER = ('t=$1; shift; timeout -s KILL "$t" "$@" 2>&1; rc=$?; kill -9 -1 2>/dev/null; '
            'echo "dagger_jax_rc=$rc" >&2')
_TRAILER = re.compile(rb"dagger_jax_rc=(\d+)")
# How long a container whose exec was cut short may take to show as stopped.
STATE_SETTLE_S = 2.0


def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A tarfile filter: files owned by root (the container's user), so git sees no foreign owner."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _repo_tar(repo_dir: Path) -> io.BytesIO:
    """The repo as a tar owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(repo_dir), arcname=".", filter=owned_by_root)
    buffer.seek(0)
    return buffer


class DockerSandbox(Sandbox):
    """One episode's container; `close()` (or garbage collection) always removes it."""

    def __init__(self, client: docker.DockerClient, image: str, repo_dir: Path | None,
                 limits: SandboxLimits, name: str, labels: dict[str, str],
                 storage_opt: dict[str, str] | None = None):
        super().__init__(f"docker:{name}", limits)
        self._client = client
        self._container = None
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SandboxError(f"docker image {image} not found for sandbox {name}; build it "
                               "(the base image: python tools/build_base_image.py) or load it "
                               "with `docker load`") from None
        except _API_ERRORS as e:
            raise SandboxError(f"docker daemon failed looking up image {image}: {e}") from e
        try:
            self._container = client.containers.create(
                image, entrypoint=_IDLE, command=[], name=name,
                working_dir=WORKDIR, labels=labels, network_mode="none",
                mem_limit=f"{limits.memory_mb}m", memswap_limit=f"{limits.memory_mb}m",
                pids_limit=limits.pids, nano_cpus=int(limits.cpus * 1e9),
                cap_drop=["ALL"], cap_add=CAPABILITIES, security_opt=["no-new-privileges"],
                environment={"LANG": "C.UTF-8", "TERM": "dumb"}, storage_opt=storage_opt,
                detach=True)
            if repo_dir is not None:
                # Copied before start: the episode's changes live in this container only.
                self._container.put_archive(WORKDIR, _repo_tar(repo_dir))
            self._container.start()
        except _API_ERRORS as e:
            self.close()
            raise SandboxError(f"could not start container {name} from image {image}: {e}") from e
        except BaseException:
            self.close()
            raise

    @property
    def container_id(self) -> str:
        return self._container.id

    def _died(self, during: str, error: Exception | None = None) -> SandboxError:
        """The error for a container that is gone or stopped, with what docker knows of why."""
        try:
            self._container.reload()
            state = self._container.attrs["State"]
            why = (f"status {state['Status']}, exit code {state['ExitCode']}, "
                   f"OOMKilled {state['OOMKilled']}")
        except docker.errors.NotFound:
            why = "container was removed"
        except _API_ERRORS as e:
            why = f"docker daemon unreachable: {e}"
        detail = f" ({error})" if error is not None else ""
        return SandboxError(f"container {self.name} died during {during}: {why}{detail}")

    def _exec(self, argv: list[str], timeout_s: float, capture: OutputCapture,
              during: str) -> tuple[int, bool, float]:
        """Runs argv (under _WRAPPER) into `capture`; returns (exit code, timed out, seconds)."""
        self._check_open()
        api = self._client.api
        start = time.monotonic()
        wrapped = ["sh", "-c", _WRAPPER, "sh", f"{timeout_s:.3f}s", *argv]
        try:
            exec_id = api.exec_create(self._container.id, wrapped, workdir=WORKDIR)["Id"]
            stream = api.exec_start(exec_id, stream=True, demux=True)
        except _API_ERRORS as e:
            # 404: the container is gone; 409: it exists but is not running (killed, OOM).
            raise self._died(during, e) from e
        trailer = bytearray()
        failure: list[Exception] = []

        def pump() -> None:
            try:
                for out, err in stream:
                    if out:
                        capture.feed(out)
                    if err:
                        trailer.extend(err[:256])
            except Exception as e:  # noqa: BLE001 (reported by the caller's thread)
                failure.append(e)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        reader.join(timeout_s + CLIENT_GRACE_S)
        forced = reader.is_alive()
        if forced:
            self._restart(during)
            reader.join(CLIENT_GRACE_S)
        duration = time.monotonic() - start
        match = _TRAILER.search(bytes(trailer))
        if match is None and not forced:
            # The wrapper itself was killed: most likely with the whole container.
            self._raise_if_stopped(during, failure[0] if failure else None)
        exit_code = int(match.group(1)) if match else 137
        # `timeout -s KILL` dies with its group: 137 at (or past) the deadline is our kill.
        timed_out = forced or (exit_code == 137 and duration >= timeout_s * 0.98)
        return (TIMEOUT_EXIT_CODE if timed_out else exit_code), timed_out, duration

    def _raise_if_stopped(self, during: str, error: Exception | None) -> None:
        # Docker marks a killed container as exited a moment after its processes die.
        deadline = time.monotonic() + STATE_SETTLE_S
        while True:
            try:
                self._container.reload()
                if self._container.status != "running":
                    raise self._died(during, error)
            except _API_ERRORS as e:
                raise self._died(during, e) from e
            if time.monotonic() > deadline:
                return  # still running: a command killed its own wrapper (e.g. `kill -9 -1`)
            time.sleep(0.05)

    def _restart(self, during: str) -> None:
        try:
            self._container.kill()
            self._container.start()
        except _API_ERRORS as e:
            raise self._died(during, e) from e

    def run(self, command: str, timeout_s: float | None = None) -> CommandResult:
        check_command(command)
        timeout = self._timeout(timeout_s)
        capture = OutputCapture(self.limits.output_limit_bytes)
        argv = ["bash", "-lc", command]
        exit_code, timed_out, duration = self._exec(argv, timeout, capture, f"command {command!r}")
        output = capture.text() + (timeout_note(timeout) if timed_out else "")
        return CommandResult(exit_code, output, timed_out, capture.truncated, duration)

    def read_file(self, path: str) -> str:
        check_path(path, self.name)
        limit = self.limits.file_limit_bytes
        capture = OutputCapture(limit + 1)
        exit_code, timed_out, _ = self._exec(["cat", "--", path], self.limits.command_timeout_s,
                                             capture, f"read of {path}")
        if exit_code != 0 or timed_out:
            reason = "timed out" if timed_out else capture.text().strip()
            raise SandboxFileError(f"cannot read {path} in sandbox {self.name}: {reason}")
        if capture.total_bytes > limit:
            raise SandboxFileError(f"{path} in sandbox {self.name} is larger than the "
                                   f"{limit}-byte read limit ({capture.total_bytes} bytes)")
        return capture.data().decode("utf-8", "surrogateescape")

    def write_file(self, path: str, text: str) -> None:
        check_path(path, self.name)
        if not posixpath.isabs(path):
            raise SandboxFileError(f"write to sandbox {self.name} needs an absolute path, "
                                   f"got {path}")
        parent, base = posixpath.split(posixpath.normpath(path))
        capture = OutputCapture(4096)
        # Make the parent and learn the old mode in one exec: put_archive sets the mode itself.
        script = 'mkdir -p -- "$1" && { stat -c %a -- "$2" 2>/dev/null || echo 644; }'
        exit_code, _, _ = self._exec(["sh", "-c", script, "sh", parent, path],
                                     self.limits.command_timeout_s, capture, f"write of {path}")
        mode = capture.text().strip()
        if exit_code != 0 or not mode.isdigit():
            raise SandboxFileError(f"cannot write {path} in sandbox {self.name}: {mode}")
        data = text.encode("utf-8", "surrogateescape")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(base)
            info.size, info.mode, info.mtime = len(data), int(mode, 8), int(time.time())
            tar.addfile(info, io.BytesIO(data))
        try:
            ok = self._container.put_archive(parent, buffer.getvalue())
        except docker.errors.NotFound as e:
            raise self._died(f"write of {path}", e) from e
        except _API_ERRORS as e:
            raise SandboxFileError(f"cannot write {path} in sandbox {self.name}: {e}") from e
        if not ok:
            raise SandboxFileError(f"docker refused writing {path} in sandbox {self.name}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            self._container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass  # already gone (killed and removed from outside): nothing left to free
        except _API_ERRORS:
            pass  # daemon unreachable: the labels let reap_orphans remove it later
