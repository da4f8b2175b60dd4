"""Runs side by side in child processes: logs, failures named, no orphan outliving a killed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dagger_jax.run_processes import RunFailed, run_in_processes


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_runs_go_at_once_each_logs_and_a_failure_names_its_run(tmp_path):
    # Both children wait for each other's marker: they finish only if they run at the same time.
    wait_for = "import pathlib, sys, time\n" \
               "me, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n" \
               "me.touch()\n" \
               "deadline = time.time() + 30\n" \
               "while not other.exists() and time.time() < deadline: time.sleep(0.05)\n" \
               "print('saw', other.name if other.exists() else 'nothing')\n"
    a, b = tmp_path / "a", tmp_path / "b"
    commands = {"one": py(wait_for) + [str(a), str(b)], "two": py(wait_for) + [str(b), str(a)],
                "bad": py("import sys; print('going wrong'); sys.exit(3)")}
    logs = {name: tmp_path / "logs" / f"{name}.log" for name in commands}
    done = []
    with pytest.raises(RunFailed, match=r"run bad exited with status 3; its log is .*bad.log:\ngoing wrong"):
        run_in_processes(commands, logs, jobs=3, on_done=done.append)
    assert sorted(done) == ["one", "two"]
    assert logs["one"].read_text() == "saw b\n" and logs["two"].read_text() == "saw a\n"
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_in_processes(commands, logs, jobs=0)


def test_a_killed_parent_takes_its_runs_with_it(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(py(f"""
        import sys
        from pathlib import Path
        from dagger_jax.run_processes import run_in_processes
        child = [sys.executable, "-c", "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"]
        run_in_processes({{"sleeper": child}}, {{"sleeper": Path({str(tmp_path / 'sleeper.log')!r})}}, jobs=1)
    """))
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child)  # killed with its parent, not reparented and still running


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, not yet reaped by whoever adopted it) is dead."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
