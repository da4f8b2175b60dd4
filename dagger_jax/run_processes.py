"""Runs several demo runs at once, each in its own process, its output in a log file.

On 2 CPU cores one outer-loop run keeps both cores busy only while it trains; while it
samples, grades in sandboxes or writes checkpoints it uses about one. Two runs side by side
fill those gaps. Each child is the same command line restricted to one (recipe, seed), so it
resumes exactly as a plain run does; a child dies with its parent (PR_SET_PDEATHSIG), so a
killed demo never leaves a run writing behind the one that resumes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Started in place of each command: asks the kernel to SIGKILL it when its parent goes
# (PR_SET_PDEATHSIG, 1; it survives the exec), gives up if the parent is already gone, then
# becomes the command. A launcher rather than preexec_fn: the parent may run JAX's threads,
# and Python code between fork and exec in a threaded process can deadlock.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:\n"
    "    raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('run_processes: the parent exited before this run started')\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def tied_to_this_process(command: Sequence[str]) -> list[str]:
    """command, started so that it dies with this process."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *command]


class RunFailed(RuntimeError):
    """A child run exited non-zero; the message names the run and its log."""


def run_in_processes(commands: dict[str, list[str]], logs: dict[str, Path], jobs: int,
                     on_done: Callable[[str], None] = lambda name: None) -> None:
    """Runs each named command (argv), at most `jobs` at once, output to logs[name].

    on_done(name) is called (serialised) as each one succeeds. Every command runs even if one
    fails; then the first failure is raised, naming its log and its last lines.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    lock = threading.Lock()
    failures: list[str] = []

    def one(name: str) -> None:
        log = logs[name]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            code = subprocess.run(tied_to_this_process(commands[name]), stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        with lock:
            if code == 0:
                on_done(name)
            else:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                failures.append(f"run {name} exited with status {code}; its log is {log}:\n{tail}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, commands))
    if failures:
        raise RunFailed("\n\n".join(failures))

