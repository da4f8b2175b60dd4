"""A memory cgroup per bubblewrap sandbox, so its memory limit holds for all its processes.

RLIMIT_AS bounds one process; six processes of 400 MB each pass a 512 MB rlimit. A cgroup
bounds their sum (tmpfs pages they write included), as docker does for a container. We make
the cgroup as a child of our own (cgroup v1's memory hierarchy, or v2 where the memory
controller is delegated to us) and start each command's bwrap inside it: a host `sh` writes
its own pid to `cgroup.procs` and then execs bwrap, so nothing of the sandbox runs outside.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from dagger_jax.envs.sandbox.base import SandboxError

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Host shell that moves itself into the cgroup, then becomes the command ($0: cgroup.procs).
_ENTER = 'echo $$ > "$0" && exec "$@"'


@dataclass(frozen=True)
class MemoryHierarchy:
    """Where this process may make memory cgroups: a directory and its cgroup version."""

    parent: Path
    version: int

    @classmethod
    def find(cls, root: Path = CGROUP_ROOT, self_cgroup: str | None = None) -> "MemoryHierarchy":
        """Our memory hierarchy, or SandboxError saying why there is none usable."""
        lines = (self_cgroup if self_cgroup is not None
                 else Path("/proc/self/cgroup").read_text()).splitlines()
        v1 = [line.split(":", 2)[2] for line in lines if line.split(":")[1:2] == ["memory"]]
        if v1 and (root / "memory").is_dir():
            return cls._usable(root / "memory" / v1[0].lstrip("/"), 1)
        unified = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
        if unified and "memory" in _read(root / "cgroup.controllers").split():
            return cls._usable(root / unified[0].lstrip("/"), 2)
        raise SandboxError("no memory cgroup controller is mounted at /sys/fs/cgroup")

    @classmethod
    def _usable(cls, parent: Path, version: int) -> "MemoryHierarchy":
        base = parent / "dagger_jax"
        try:
            base.mkdir(exist_ok=True)
            if version == 2:  # children of ours get a memory controller only when we delegate it
                (base / "cgroup.subtree_control").write_text("+memory")
        except OSError as e:
            raise SandboxError(f"cannot make memory cgroups under {parent} (cgroup v{version}): "
                               f"{e}") from None
        return cls(base, version)


class MemoryCgroup:
    """One sandbox's cgroup: memory capped at `limit_bytes`, no swap."""

    def __init__(self, hierarchy: MemoryHierarchy, name: str, limit_bytes: int):
        self.path = hierarchy.parent / name
        self.version = hierarchy.version
        try:
            self.path.mkdir(exist_ok=True)  # a dead holder's, of the same uid slot: reused
            if self.version == 1:
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                swap = self.path / "memory.memsw.limit_in_bytes"
                if swap.exists():  # swap accounting on: memory + swap capped at the same
                    swap.write_text(str(limit_bytes))
            else:
                (self.path / "memory.max").write_text(str(limit_bytes))
                (self.path / "memory.swap.max").write_text("0")
        except OSError as e:
            self.remove()
            raise SandboxError(f"cannot set up memory cgroup {self.path}: {e}") from None

    def enter_argv(self) -> list[str]:
        """The prefix that runs a command inside this cgroup."""
        return ["sh", "-c", _ENTER, str(self.path / "cgroup.procs")]

    def remove(self) -> None:
        """Removes the cgroup (its processes must be gone: the uid lease kills them first)."""
        for _ in range(40):  # killed processes leave the cgroup a moment after SIGKILL
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.025)
        # Still busy: the next sandbox of this uid slot reuses it.


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
