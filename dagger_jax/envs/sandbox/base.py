"""The sandbox interface every backend implements, and the records that cross it.

A sandbox is one episode's isolated machine: the task repo at `/testbed`, commands run in it
with no network and with time, memory, process and output limits. There is no unsandboxed
implementation on purpose: model-generated commands never run on the host.

Faults are split in two. A command that fails, hangs or floods is the agent's business: it
comes back as a `CommandResult` (timed_out / truncated) and the sandbox stays usable. A fault of
the machinery itself (missing image, container gone, backend not installed) raises
`SandboxError`, whose `reason` the episode runner records before ending that one episode.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

WORKDIR = "/testbed"
# Exit code reported for a command killed at its deadline (the one `timeout` uses).
TIMEOUT_EXIT_CODE = 124
# The longest command `run` takes. The kernel refuses a single argument over 128 KiB (E2BIG)
# when the process starts, which would look like the sandbox failing rather than the command.
MAX_COMMAND_BYTES = 64 * 1024
PATH_MAX = 4096  # Linux's


class SandboxError(RuntimeError):
    """An infrastructure fault that ends the episode; `reason` is what the runner records."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SandboxFileError(RuntimeError):
    """A file could not be read or written inside the sandbox (missing, a directory, too big)."""


class CommandRefused(ValueError):
    """A command no process can be started with (a NUL byte, text that is not UTF-8, over
    MAX_COMMAND_BYTES): the caller's fault, refused before the sandbox is touched."""


def check_command(command: str) -> None:
    """Raises CommandRefused for a command that cannot reach a shell intact."""
    if "\0" in command:
        raise CommandRefused("the command contains a NUL byte, which no shell argument can hold")
    try:
        size = len(command.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise CommandRefused("the command is not valid text (it holds a lone surrogate)") from None
    if size > MAX_COMMAND_BYTES:
        raise CommandRefused(f"the command is {size} bytes; the limit is {MAX_COMMAND_BYTES} "
                             "(write long scripts to a file with the editor first)")


def check_path(path: str, sandbox: str) -> None:
    """Raises SandboxFileError for a path no file can have."""
    if "\0" in path:
        raise SandboxFileError(f"path {path[:200]!r} for sandbox {sandbox} contains a NUL byte")
    try:
        size = len(path.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise SandboxFileError(f"path {path[:200]!r} for sandbox {sandbox} is not valid text") from None
    if size > PATH_MAX:
        raise SandboxFileError(f"path {path[:80]!r}... for sandbox {sandbox} is {size} bytes, "
                               f"longer than any path can be ({PATH_MAX})")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandbox; every backend enforces all of them."""

    memory_mb: int = 2048
    pids: int = 256
    cpus: float = 1.0
    command_timeout_s: float = 120.0
    output_limit_bytes: int = 30_000
    file_limit_bytes: int = 16 * 1024 * 1024  # the largest file read_file returns
    # What the sandbox may write (its repo copy or image changes, /tmp), in MB; 0: no quota.
    disk_mb: int = 4096
    # What memory_mb caps: "sandbox", all of a sandbox's processes together (docker's
    # container cgroup; a cgroup per bubblewrap sandbox), or "process", each process on its
    # own (RLIMIT_AS only: a bubblewrap host where no cgroup can be made, chosen knowingly).
    memory_scope: str = "sandbox"

    def __post_init__(self):
        if self.disk_mb < 0:
            raise ValueError(f"SandboxLimits.disk_mb must be >= 0 (0: no quota), got {self.disk_mb}")
        if self.memory_scope not in ("sandbox", "process"):
            raise ValueError(f"SandboxLimits.memory_scope must be 'sandbox' or 'process', got "
                             f"{self.memory_scope!r}")
        for name in ("memory_mb", "pids", "cpus", "command_timeout_s", "output_limit_bytes",
                     "file_limit_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, "
                                 f"got {getattr(self, name)!r}")
        if self.output_limit_bytes < 64:
            raise ValueError("SandboxLimits.output_limit_bytes must leave room for a marker "
                             f"(>= 64), got {self.output_limit_bytes}")


@dataclass(frozen=True)
class SandboxSpec:
    """What an episode's sandbox is made from: an image, a host repo copied to /testbed, or both.

    `image` may already hold the repo at /testbed (SWE-bench / SWE-Gym images); `repo_dir` is a
    host directory whose copy the episode may change (the host directory never changes).
    """

    image: str | None = None
    repo_dir: Path | None = None

    def __post_init__(self):
        if self.image is None and self.repo_dir is None:
            raise ValueError("SandboxSpec needs an image, a repo_dir, or both")
        if self.repo_dir is not None:
            object.__setattr__(self, "repo_dir", Path(self.repo_dir))
            if not self.repo_dir.is_dir():
                raise ValueError(f"SandboxSpec.repo_dir {self.repo_dir} is not a directory")


@dataclass(frozen=True)
class CommandResult:
    """What one command did: exit code, interleaved stdout+stderr (capped), and why it stopped."""

    exit_code: int
    output: str
    timed_out: bool
    truncated: bool
    duration_s: float


class Sandbox(abc.ABC):
    """One episode's sandbox; a context manager that always releases what it holds.

    Each `run` is a fresh `bash -lc` in /testbed: the working directory and shell variables do
    not carry over between commands; files do.
    """

    def __init__(self, name: str, limits: SandboxLimits):
        self.name = name
        self.limits = limits
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError(f"sandbox {self.name} is already closed")

    def _timeout(self, timeout_s: float | None) -> float:
        timeout = self.limits.command_timeout_s if timeout_s is None else timeout_s
        if not timeout > 0:
            raise ValueError(f"command timeout for sandbox {self.name} must be positive, "
                             f"got {timeout!r}")
        return float(timeout)

    @abc.abstractmethod
    def run(self, command: str, timeout_s: float | None = None) -> CommandResult:
        """Runs `command` with bash in /testbed; timeout_s defaults to limits.command_timeout_s."""

    @abc.abstractmethod
    def read_file(self, path: str) -> str:
        """The file's text (UTF-8; undecodable bytes kept as surrogate escapes)."""

    @abc.abstractmethod
    def write_file(self, path: str, text: str) -> None:
        """Writes `text` to `path`, creating parent directories; keeps an existing file's mode."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases everything (processes, container, copies); safe to call twice."""

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # A sandbox dropped without close() must still not leak a container or a repo copy.
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 (interpreter shutdown: nothing left to report to)
                pass


class SandboxBackend(abc.ABC):
    """Makes the sandboxes of one run; reaps what dead runs left behind when it starts."""

    # Whether the backend starts sandboxes from a task's own image (docker). Those that do not
    # (bubblewrap) need the task's repo as host files.
    runs_images: bool = False

    @abc.abstractmethod
    def open(self, spec: SandboxSpec) -> Sandbox:
        """A started sandbox for `spec`; raises SandboxError when it cannot be made."""

    @abc.abstractmethod
    def reap_orphans(self) -> int:
        """Removes sandboxes whose owning process is dead; returns how many."""


def timeout_note(timeout_s: float) -> str:
    """The line appended to a timed-out command's output, so the agent sees why it stopped."""
    return f"\n[command timed out after {timeout_s:g} s and was killed]"
