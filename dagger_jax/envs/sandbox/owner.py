"""Which process owns a sandbox, recorded so a later run can tell whether that owner is dead.

A pid alone is not enough (pids are reused), so the owner is (host, boot id, pid, start time).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name (which may hold spaces and parentheses): state is
    # field 3, starttime field 22. A zombie has died; only its parent has not looked yet.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


@dataclass(frozen=True)
class Owner:
    """A process that owns sandboxes."""

    host: str
    boot_id: str
    pid: int
    start_ticks: int

    @classmethod
    def current(cls) -> "Owner":
        pid = os.getpid()
        return cls(socket.gethostname(), _boot_id(), pid, _start_ticks(pid) or 0)

    def is_local(self) -> bool:
        """Whether this owner ran on this host (only local owners can be judged dead)."""
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """False once the owner is gone; a different boot means gone. Only for local owners."""
        if self.boot_id != _boot_id():
            return False
        return _start_ticks(self.pid) == self.start_ticks

    def token(self) -> str:
        """A path- and label-safe encoding, parsed back by `from_token`."""
        return f"{self.host}~{self.boot_id}~{self.pid}~{self.start_ticks}"

    @classmethod
    def from_token(cls, token: str) -> "Owner | None":
        parts = token.split("~")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]))
