"""The bubblewrap sandbox: a private writable copy of the task repo, everything else read-only.

Each command is a fresh `bwrap` with new pid, net, ipc and uts namespaces (no network: only a
private loopback), a read-only root (the debootstrap base rootfs when it is cached, else a
read-only bind of the host's /usr and /etc), the repo copy at /testbed and the episode's own
/tmp (both on disk, kept between its commands, on a filesystem of the disk quota's size:
`disk.py`).
Inside, the command drops to the sandbox's own uid with process, memory and CPU limits
(`confine.py`); all its processes together stay under the memory limit by a cgroup of the
sandbox's own (`cgroup.py`). When the command ends or is killed, its pid namespace, and so every process
it started, goes with it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from dagger_jax.envs.base_image import DEFAULT_RECIPE, cached_rootfs
from dagger_jax.envs.sandbox import confine
from dagger_jax.envs.sandbox.cgroup import MemoryCgroup, MemoryHierarchy
from dagger_jax.envs.sandbox.disk import DiskImage, unmount
from dagger_jax.envs.sandbox.base import (TIMEOUT_EXIT_CODE, WORKDIR, CommandResult, Sandbox,
                                          SandboxBackend, SandboxError, SandboxFileError,
                                          SandboxLimits, SandboxSpec, check_command, check_path,
                                          timeout_note)
from dagger_jax.envs.sandbox.output import OutputCapture
from dagger_jax.envs.sandbox.owner import Owner
from dagger_jax.envs.sandbox.process import ProcessOutcome, run_with_deadline

DEFAULT_WORK_ROOT = Path("/var/tmp/dagger_jax/bwrap")
_SHM_BYTES = 64 * 1024 * 1024  # docker's default /dev/shm size
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
        "TERM": "dumb", "USER": "sandbox"}


def _host_root_binds() -> list[str]:
    """Read-only binds of the host's system dirs, for when no base rootfs is cached."""
    argv = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():  # merged /usr (bookworm): keep the symlink, not a second bind
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    return argv


class BwrapSandbox(Sandbox):
    """One episode's bubblewrap sandbox over a private copy of a host repo directory."""

    def __init__(self, repo_dir: Path, limits: SandboxLimits, work_root: Path,
                 rootfs: Path | None, owner: Owner, memory: MemoryHierarchy | None):
        self._lease = None
        self._cgroup = None
        self._disk = None
        self._dir = work_root / f"{owner.token()}~{secrets.token_hex(4)}"
        super().__init__(f"bwrap:{self._dir.name}", limits)
        try:
            self._lease = confine.lease_uid()
            if memory is not None:  # named by the uid slot: one sandbox holds it at a time
                self._cgroup = MemoryCgroup(memory, f"slot-{self._lease.slot}",
                                            limits.memory_mb * 2**20)
            self._dir.mkdir(parents=True, mode=0o700)
            # Everything the sandbox writes: the repo copy, /tmp and /var/tmp, on disk (they
            # persist between the episode's commands, as in a container), on a filesystem of
            # the quota's size when there is one.
            self._rw = self._dir / "rw"
            if limits.disk_mb:
                self._disk = DiskImage(self._dir / "disk.img", self._rw, limits.disk_mb)
            else:
                self._rw.mkdir()
            self._copy = self._rw / "testbed"
            for scratch in ("tmp", "var_tmp"):
                (self._rw / scratch).mkdir(mode=0o700)
            # cp -a keeps modes, symlinks (not followed) and times; reflinks where the fs can.
            done = subprocess.run(["cp", "-a", "--reflink=auto", f"{repo_dir}/.", str(self._copy)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SandboxError(f"copying task repo {repo_dir} for sandbox {self.name} "
                                   f"failed: {done.stderr.strip()}")
            uid = str(self._lease.uid)
            done = subprocess.run(["chown", "-R", "-h", f"{uid}:{uid}", str(self._copy),
                                   str(self._rw / "tmp"), str(self._rw / "var_tmp")],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SandboxError(f"handing the repo copy of sandbox {self.name} to uid {uid} "
                                   f"failed: {done.stderr.strip()}")
            self._prefix = self._bwrap_prefix(rootfs)
            probe = self._exec(["true"], 30.0, 4096)
            if probe[0].exit_code != 0:
                raise SandboxError(f"bubblewrap could not start sandbox {self.name}: "
                                   f"{probe[1].text().strip()}")
        except BaseException:
            self.close()
            raise

    def _bwrap_prefix(self, rootfs: Path | None) -> list[str]:
        root = ["--ro-bind", str(rootfs), "/"] if rootfs is not None else _host_root_binds()
        enter = self._cgroup.enter_argv() if self._cgroup is not None else []
        argv = [*enter, "bwrap", *root,
                "--proc", "/proc", "--dev", "/dev",
                # Sized: tmpfs pages are RAM that RLIMIT_AS does not count.
                "--perms", "1777", "--size", str(_SHM_BYTES), "--tmpfs", "/dev/shm",
                "--size", str(_SHM_BYTES), "--tmpfs", "/run",
                "--bind", str(self._rw / "tmp"), "/tmp",
                "--bind", str(self._rw / "var_tmp"), "/var/tmp",
                "--bind", str(self._copy), WORKDIR, "--chdir", WORKDIR,
                # No user namespace: it would keep the processes root to the kernel's
                # accounting; confine_argv drops to a real unprivileged uid instead.
                "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "sandbox",
                "--die-with-parent", "--new-session", "--clearenv"]
        for key, value in _ENV.items():
            argv += ["--setenv", key, value]
        return argv + ["--", *confine.confine_argv(self._lease, self.limits)]

    def _exec(self, argv: list[str], timeout_s: float, limit: int,
              stdin: bytes | None = None) -> tuple[ProcessOutcome, OutputCapture]:
        self._check_open()
        capture = OutputCapture(limit)
        try:
            outcome = run_with_deadline(self._prefix + argv, capture, timeout_s, stdin=stdin)
        except OSError as e:
            raise SandboxError(f"could not start bwrap for sandbox {self.name}: {e}") from e
        return outcome, capture

    def run(self, command: str, timeout_s: float | None = None) -> CommandResult:
        check_command(command)
        timeout = self._timeout(timeout_s)
        outcome, capture = self._exec(["bash", "-lc", command], timeout,
                                      self.limits.output_limit_bytes)
        output = capture.text()
        if outcome.timed_out:
            output += timeout_note(timeout)
        exit_code = TIMEOUT_EXIT_CODE if outcome.timed_out else outcome.exit_code
        return CommandResult(exit_code=exit_code, output=output, timed_out=outcome.timed_out,
                             truncated=capture.truncated, duration_s=outcome.duration_s)

    def read_file(self, path: str) -> str:
        # Read inside the sandbox, so a symlink in the repo resolves there, not on the host.
        check_path(path, self.name)
        limit = self.limits.file_limit_bytes
        outcome, capture = self._exec(["cat", "--", path], self.limits.command_timeout_s, limit + 1)
        if outcome.exit_code != 0 or outcome.timed_out:
            raise SandboxFileError(f"cannot read {path} in sandbox {self.name}: "
                                   f"{capture.text().strip() or 'timed out'}")
        if capture.total_bytes > limit:
            raise SandboxFileError(f"{path} in sandbox {self.name} is larger than the "
                                   f"{limit}-byte read limit ({capture.total_bytes} bytes)")
        return capture.data().decode("utf-8", "surrogateescape")

    def write_file(self, path: str, text: str) -> None:
        check_path(path, self.name)
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
        outcome, capture = self._exec(["sh", "-c", script, "sh", path],
                                      self.limits.command_timeout_s, 4096,
                                      stdin=text.encode("utf-8", "surrogateescape"))
        if outcome.exit_code != 0 or outcome.timed_out:
            raise SandboxFileError(f"cannot write {path} in sandbox {self.name}: "
                                   f"{capture.text().strip() or 'timed out'}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lease is not None:
            self._lease.release()
        if self._cgroup is not None:
            self._cgroup.remove()
        if self._disk is not None:
            self._disk.release()
        shutil.rmtree(self._dir, ignore_errors=True)


class BwrapBackend(SandboxBackend):
    """Makes bubblewrap sandboxes; tasks must come as host repo directories.

    rootfs: "auto" uses the cached base rootfs when there is one (else the host's system dirs,
    read-only); a path names a rootfs; None forces the host's system dirs.
    """

    def __init__(self, limits: SandboxLimits = SandboxLimits(), work_root: Path = DEFAULT_WORK_ROOT,
                 rootfs: Path | None | str = "auto"):
        if shutil.which("bwrap") is None:
            raise SandboxError("bubblewrap (bwrap) is not installed; run "
                               "tools/ensure_sandbox_deps.sh or apt-get install bubblewrap")
        self.limits = limits
        self.work_root = Path(work_root)
        # The base rootfs isolates better than host binds (no host binaries or config visible).
        self.rootfs = cached_rootfs() if rootfs == "auto" else (Path(rootfs) if rootfs else None)
        self.memory = self._memory_hierarchy(limits)
        self.owner = Owner.current()
        self.reap_orphans()

    @staticmethod
    def _memory_hierarchy(limits: SandboxLimits) -> MemoryHierarchy | None:
        if limits.memory_scope == "process":
            return None
        try:
            return MemoryHierarchy.find()
        except SandboxError as e:
            raise SandboxError(
                f"{e}. The bubblewrap backend caps each sandbox's memory with a cgroup of its "
                "own; run it as root with a writable /sys/fs/cgroup, use the docker backend, or "
                "accept per-process limits with SandboxLimits(memory_scope='process')") from None

    def open(self, spec: SandboxSpec) -> BwrapSandbox:
        if spec.repo_dir is None:
            raise SandboxError(f"the bubblewrap backend needs a host repo directory; task image "
                               f"{spec.image} has none (use the docker backend for images)")
        if spec.image not in (None, DEFAULT_RECIPE.image):
            raise SandboxError(f"the bubblewrap backend runs on the base rootfs only, not image "
                               f"{spec.image} (use the docker backend)")
        return BwrapSandbox(spec.repo_dir, self.limits, self.work_root, self.rootfs, self.owner,
                            self.memory)

    def reap_orphans(self) -> int:
        """Removes repo copies whose owning process died (its uid lease died with it)."""
        reaped = 0
        if not self.work_root.is_dir():
            return 0
        for entry in self.work_root.iterdir():
            owner = Owner.from_token(entry.name.rsplit("~", 1)[0])
            if owner is not None and owner.is_local() and not owner.is_alive():
                if os.path.ismount(entry / "rw"):
                    unmount(entry / "rw")
                shutil.rmtree(entry, ignore_errors=True)
                reaped += 1
        return reaped
