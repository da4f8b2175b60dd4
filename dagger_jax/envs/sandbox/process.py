"""Runs one host process with a deadline, capped output and a kill of its whole group."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from dagger_jax.envs.sandbox.output import OutputCapture

# After a kill, how long to wait for the pipe to close (stragglers holding it are killed too).
_DRAIN_AFTER_KILL_S = 5.0


@dataclass(frozen=True)
class ProcessOutcome:
    """How a process ended; `exit_code` is 128+signal for a signalled process."""

    exit_code: int
    timed_out: bool
    duration_s: float


def _feed_stdin(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, OSError):
        pass  # the process exited or closed stdin early; its exit code says what happened
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_with_deadline(argv: list[str], capture: OutputCapture, timeout_s: float,
                      stdin: bytes | None = None, env: dict[str, str] | None = None
                      ) -> ProcessOutcome:
    """Runs argv with stdout+stderr into `capture`, SIGKILLing its process group at the deadline.

    The process gets its own session, so the kill reaches everything it started that did not
    leave the group (bubblewrap's --die-with-parent takes care of those that did).
    """
    start = time.monotonic()
    stdin_mode = subprocess.PIPE if stdin is not None else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdin=stdin_mode, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            close_fds=True)
    writer = None
    if stdin is not None:
        # A thread, so a process that prints before reading its input cannot deadlock us.
        writer = threading.Thread(target=_feed_stdin, args=(proc.stdin, stdin), daemon=True)
        writer.start()
    fd = proc.stdout.fileno()
    timed_out = False
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        deadline = start + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not timed_out:
                    timed_out = True
                    _kill_group(proc)
                    deadline = time.monotonic() + _DRAIN_AFTER_KILL_S
                    continue
                break  # something still holds the pipe after the kill; stop reading it
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            capture.feed(chunk)
    proc.stdout.close()
    if timed_out:
        _kill_group(proc)
    exit_code = proc.wait()
    if writer is not None:
        writer.join(timeout=1.0)
    if exit_code < 0:
        exit_code = 128 - exit_code
    return ProcessOutcome(exit_code, timed_out, time.monotonic() - start)
