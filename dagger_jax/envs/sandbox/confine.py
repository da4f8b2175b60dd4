"""Host-side confinement of bubblewrap sandboxes: a dedicated uid per sandbox, rlimits, CPUs.

We run as root, and root is exempt from RLIMIT_NPROC (a user namespace does not help: its
processes are still root to the kernel's accounting). So each sandbox's processes run as their
own unprivileged uid, leased here under a file lock. RLIMIT_NPROC then counts exactly that
sandbox's processes, which stops a fork bomb; RLIMIT_AS bounds each process's memory; CPUs are
bounded by pinning to ceil(cpus) cores. The wrappers run inside the sandbox, after bubblewrap
has built it, so no Python runs between fork and exec in this (threaded) process.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from dagger_jax.envs.sandbox.base import SandboxError, SandboxLimits

# Far above ordinary users and the usual /etc/subuid ranges; no passwd entry is needed.
UID_BASE = 1_900_000_000
UID_SLOTS = 4096
LEASE_DIR = Path("/run/dagger_jax/sandbox-uids")


@dataclass(frozen=True)
class UidLease:
    """A uid held by this process for one sandbox; the lock dies with the process."""

    uid: int
    slot: int
    lock_fd: int

    def release(self) -> None:
        kill_uid_processes(self.uid)
        try:
            os.close(self.lock_fd)
        except OSError:
            pass


def lease_uid(lease_dir: Path = LEASE_DIR) -> UidLease:
    """Leases a free sandbox uid; a slot whose holder died is free again (flock is released)."""
    if os.geteuid() != 0:
        raise SandboxError("the bubblewrap sandbox must run as root: it confines each sandbox "
                           "to its own uid so the process limit holds; use the docker backend "
                           "as an unprivileged user")
    lease_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = os.getpid() % UID_SLOTS  # spread concurrent runs over the slots
    for i in range(UID_SLOTS):
        slot = (start + i) % UID_SLOTS
        fd = os.open(lease_dir / f"{slot}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        uid = UID_BASE + slot
        kill_uid_processes(uid)  # leftovers of a holder that died mid-command
        return UidLease(uid, slot, fd)
    raise SandboxError(f"all {UID_SLOTS} sandbox uids under {lease_dir} are in use")


def _uid_of(pid: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def kill_uid_processes(uid: int) -> int:
    """SIGKILLs every process whose real uid is `uid`; returns how many were signalled."""
    killed = 0
    for _ in range(10):  # a fork bomb may fork while we kill; repeat until none are left
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def cpu_list(limits: SandboxLimits, slot: int) -> str:
    """ceil(cpus) cores, rotated by slot so concurrent sandboxes spread over the machine."""
    available = sorted(os.sched_getaffinity(0))
    count = min(len(available), max(1, math.ceil(limits.cpus)))
    return ",".join(str(available[(slot * count + i) % len(available)]) for i in range(count))


def confine_argv(lease: UidLease, limits: SandboxLimits) -> list[str]:
    """The wrapper commands (run inside the sandbox) that drop to the uid and apply limits."""
    return [
        "setpriv", f"--reuid={lease.uid}", f"--regid={lease.uid}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
        "prlimit", f"--nproc={limits.pids}", f"--as={limits.memory_mb * 1024 * 1024}",
        "--core=0", "--",
        "taskset", "--cpu-list", cpu_list(limits, lease.slot),
    ]
