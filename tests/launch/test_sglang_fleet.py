"""Tests for launch/sglang_fleet.sh: the commands it prints, and what it really runs.

No GPUs and no SGLang: a fake `python` on PATH records its argv and CUDA_VISIBLE_DEVICES and
plays a server (it "becomes healthy" by touching a file, then sleeps); a fake `curl` answers
/health_generate from those files; a fake `ssh` runs the remote command in a local bash. Every
fake server process is recorded and killed at the end of its test.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "sglang_fleet.sh"
TEACHER = "Qwen/Qwen3-Coder-30B-A3B-Instruct"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def config_lines(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines()
                if line.split("=", 1)[0].endswith(("_endpoints", "_workers", "_loaders")))


def launched(stdout: str) -> list[tuple[str | None, list[str], str]]:
    """(ssh host or None, argv run under nohup, log file) per printed command."""
    out = []
    for line in stdout.splitlines():
        if line.split("=", 1)[0].endswith(("_endpoints", "_workers", "_loaders")):
            continue
        words = shlex.split(line)
        host = None
        if words[0] == "ssh":
            host, words = words[1], shlex.split(words[2])
        start, redirect = words.index("nohup"), words.index(">")
        out.append((host, words[start + 1:redirect], words[redirect + 1]))
    return out


def server_argv(model: str, port: int, tp: int, gpus: str, *extra: str) -> list[str]:
    return ["env", f"CUDA_VISIBLE_DEVICES={gpus}", "python", "-m", "sglang.launch_server",
            "--model-path", model, "--host", "0.0.0.0", "--port", str(port), "--tp-size",
            str(tp), *extra]


# ---------------------------------------------------------------------------------------------
# Dry run: what it prints.
# ---------------------------------------------------------------------------------------------


def test_dry_run_prints_local_servers_and_endpoints():
    result = run_script("--teacher-model", TEACHER, "--teacher-tp", "2", "--student-model",
                        "/ckpt/student", "--student-servers", "2", "--log-dir", "/tmp/fleet",
                        "--dry-run")
    assert result.returncode == 0, result.stderr
    assert launched(result.stdout) == [
        (None, server_argv(TEACHER, 30000, 2, "0,1"), "/tmp/fleet/teacher-30000.log"),
        (None, server_argv("/ckpt/student", 31000, 1, "2"), "/tmp/fleet/student-31000.log"),
        (None, server_argv("/ckpt/student", 31001, 1, "3"), "/tmp/fleet/student-31001.log"),
    ]
    assert config_lines(result.stdout) == {
        "teacher_endpoints": "http://127.0.0.1:30000",
        "student_endpoints": "http://127.0.0.1:31000,http://127.0.0.1:31001"}


def test_the_context_length_reaches_every_server():
    # The paper's 64K: the student export carries its YaRN scaling in config.json.
    result = run_script("--teacher-model", TEACHER, "--student-model", "/ckpt/student",
                        "--context-length", "65536", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [argv for _, argv, _ in launched(result.stdout)] == [
        server_argv(TEACHER, 30000, 1, "0", "--context-length", "65536"),
        server_argv("/ckpt/student", 31000, 1, "1", "--context-length", "65536")]


def test_dry_run_spreads_servers_over_ssh_hosts_with_routers_in_front():
    result = run_script("--teacher-model", TEACHER, "--teacher-servers", "2", "--teacher-tp",
                        "4", "--student-model", "/ckpt/s", "--student-servers", "3",
                        "--hosts", "gpu-a,gpu-b", "--gpus-per-host", "6", "--router",
                        "--dry-run")
    assert result.returncode == 0, result.stderr
    cmds = launched(result.stdout)
    placed = [(host, argv[1], argv[argv.index("--port") + 1]) for host, argv, _ in cmds[:5]]
    assert placed == [
        ("gpu-a", "CUDA_VISIBLE_DEVICES=0,1,2,3", "30000"),
        ("gpu-b", "CUDA_VISIBLE_DEVICES=0,1,2,3", "30001"),
        ("gpu-a", "CUDA_VISIBLE_DEVICES=4", "31000"),
        ("gpu-b", "CUDA_VISIBLE_DEVICES=4", "31001"),
        ("gpu-a", "CUDA_VISIBLE_DEVICES=5", "31002"),
    ]
    routers = cmds[5:]
    assert [(h, argv) for h, argv, _ in routers] == [
        ("gpu-a", ["python", "-m", "sglang_router.launch_router", "--host", "0.0.0.0",
                   "--port", "32000", "--worker-urls", "http://gpu-a:30000",
                   "http://gpu-b:30001"]),
        ("gpu-a", ["python", "-m", "sglang_router.launch_router", "--host", "0.0.0.0",
                   "--port", "32001", "--worker-urls", "http://gpu-a:31000",
                   "http://gpu-b:31001", "http://gpu-a:31002"]),
    ]
    assert config_lines(result.stdout) == {
        "teacher_endpoints": "http://gpu-a:32000",
        "teacher_workers": "http://gpu-a:30000,http://gpu-b:30001",
        "student_endpoints": "http://gpu-a:32001",
        "student_workers": "http://gpu-a:31000,http://gpu-b:31001,http://gpu-a:31002"}


def test_dry_run_puts_an_export_sidecar_beside_each_student_server():
    result = run_script("--teacher-model", TEACHER, "--student-model", "/ckpt/s",
                        "--student-servers", "2", "--hosts", "gpu-a,gpu-b", "--router",
                        "--sidecar-port", "31500", "--log-dir", "/tmp/fleet", "--dry-run")
    assert result.returncode == 0, result.stderr
    sidecars = [(host, argv) for host, argv, _ in launched(result.stdout)
                if "dagger_jax.rollout.export_sidecar" in argv]
    # On the server's host, to its server over loopback (the server's disk is the sidecar's).
    assert sidecars == [
        (host, ["python", "-m", "dagger_jax.rollout.export_sidecar", "--host", "0.0.0.0",
                "--port", str(31500 + k), "--server", f"http://127.0.0.1:{31000 + k}",
                "--cache", "/tmp/fleet/exports"])
        for k, host in enumerate(["gpu-b", "gpu-a"])]
    lines = config_lines(result.stdout)
    assert lines["student_loaders"] == "http://gpu-b:31500,http://gpu-a:31501"
    assert lines["student_workers"] == "http://gpu-b:31000,http://gpu-a:31001"


def test_quoted_server_args_survive_into_the_remote_command():
    tricky = ["--chat-template", "it's \"quoted\" $HOME & `x`", "--note=two words", ""]
    result = run_script("--student-model", "/ckpt/my student", "--hosts", "gpu-a",
                        "--python", "/opt/venv/bin/python", "--dry-run", "--", *tricky)
    assert result.returncode == 0, result.stderr
    ((host, argv, log),) = launched(result.stdout)
    assert host == "gpu-a" and log == "/tmp/sglang_fleet/student-31000.log"
    assert argv == ["env", "CUDA_VISIBLE_DEVICES=0", "/opt/venv/bin/python", "-m",
                    "sglang.launch_server", "--model-path", "/ckpt/my student", "--host",
                    "0.0.0.0", "--port", "31000", "--tp-size", "1", *tricky]


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "give --teacher-model and/or --student-model"),
    (["--teacher-model", "m", "--teacher-servers", "0"], 2, "at least 1 with --teacher-model"),
    (["--teacher-model", "m", "--teacher-tp", "two"], 2, "--teacher-tp must be"),
    (["--teacher-model", "m", "--teacher-servers", "3", "--teacher-tp", "4"], 1,
     "not enough GPUs"),
    (["--teacher-model", "m", "--student-model", "s", "--student-port", "30000"], 2,
     "port ranges overlap"),
    (["--teacher-model", "m", "--router", "--router-port", "30000"], 2, "port ranges overlap"),
    (["--teacher-model"], 2, "--teacher-model needs a value"),
    (["--teacher-model", "m", "--bogus"], 2, "unknown argument '--bogus'"),
    (["--teacher-model", "m", "--context-length", "64k"], 2,
     "--context-length must be a positive integer, got '64k'"),
    (["--teacher-model", "m", "--sidecar-port", "31500"], 2,
     "--sidecar-port serves student servers: give --student-model"),
    (["--student-model", "s", "--student-servers", "2", "--sidecar-port", "30999"], 2,
     "port ranges overlap"),
    (["--student-model", "s", "--sidecar-port", "x"], 2, "--sidecar-port must be"),
])
def test_bad_arguments_are_refused_with_a_reason(args, code, message):
    result = run_script(*args, "--dry-run")
    assert result.returncode == code
    assert message in result.stderr


# ---------------------------------------------------------------------------------------------
# Real runs against fake python / curl / ssh.
# ---------------------------------------------------------------------------------------------


def write_exe(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake(tmp_path: Path):
    """A PATH with fake python/curl/ssh; yields (env, state dir); kills the fake servers."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    write_exe(bin_dir / "python", """\
        #!/bin/sh
        # A fake SGLang server / router: record how it was started, then "serve".
        port=""; prev=""
        for a in "$@"; do [ "$prev" = "--port" ] && port="$a"; prev="$a"; done
        echo $$ >> "$FAKE_STATE/pids"
        printf '%s\\0' "$@" > "$FAKE_STATE/argv-$port"
        printf '%s' "${CUDA_VISIBLE_DEVICES-}" > "$FAKE_STATE/gpus-$port"
        if [ -n "${FAKE_DIE-}" ]; then echo "RuntimeError: CUDA out of memory"; exit 1; fi
        [ -n "${FAKE_NEVER_HEALTHY-}" ] || : > "$FAKE_STATE/healthy-$port"
        exec sleep 120
        """)
    write_exe(bin_dir / "curl", """\
        #!/bin/sh
        url=""
        for a in "$@"; do case "$a" in http://*) url="$a" ;; esac; done
        echo "$url" >> "$FAKE_STATE/curl.log"
        port="${url##*:}"; port="${port%%/*}"
        [ -e "$FAKE_STATE/healthy-$port" ] || exit 22
        """)
    write_exe(bin_dir / "ssh", """\
        #!/bin/sh
        echo "$1" >> "$FAKE_STATE/ssh.log"
        exec bash -c "$2"
        """)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               FAKE_STATE=str(state))
    yield env, state
    pids = state / "pids"
    for pid in pids.read_text().split() if pids.exists() else []:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def argv_of(state: Path, port: int) -> list[str]:
    return (state / f"argv-{port}").read_text().split("\0")[:-1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of an exited script is reaped by init; until then it is a zombie.
    stat_file = Path(f"/proc/{pid}/stat")
    return not (stat_file.exists() and stat_file.read_text().split()[2] == "Z")


def wait_dead(pids: list[int]) -> bool:
    for _ in range(100):
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_starts_servers_and_routers_waits_for_health_and_prints_endpoints(fake, tmp_path):
    env, state = fake
    result = run_script("--teacher-model", TEACHER, "--student-model", "/ckpt/s",
                        "--student-servers", "2", "--student-tp", "2", "--router",
                        "--sidecar-port", "31500", "--log-dir", str(tmp_path / "logs"),
                        "--poll", "0.05", "--", "--mem-fraction-static", "0.8", env=env)
    assert result.returncode == 0, result.stderr
    assert config_lines(result.stdout) == {
        "teacher_endpoints": "http://127.0.0.1:32000",
        "teacher_workers": "http://127.0.0.1:30000",
        "student_endpoints": "http://127.0.0.1:32001",
        "student_workers": "http://127.0.0.1:31000,http://127.0.0.1:31001",
        "student_loaders": "http://127.0.0.1:31500,http://127.0.0.1:31501"}
    assert argv_of(state, 31501) == ["-m", "dagger_jax.rollout.export_sidecar", "--host",
                                     "0.0.0.0", "--port", "31501", "--server",
                                     "http://127.0.0.1:31001", "--cache",
                                     str(tmp_path / "logs" / "exports")]
    assert argv_of(state, 30000) == server_argv(TEACHER, 30000, 1, "0",
                                                "--mem-fraction-static", "0.8")[3:]
    assert (state / "gpus-30000").read_text() == "0"
    assert (state / "gpus-31000").read_text() == "1,2"
    assert (state / "gpus-31001").read_text() == "3,4"
    assert argv_of(state, 32001) == ["-m", "sglang_router.launch_router", "--host", "0.0.0.0",
                                     "--port", "32001", "--worker-urls",
                                     "http://127.0.0.1:31000", "http://127.0.0.1:31001"]
    checked = set((state / "curl.log").read_text().split())
    assert checked == {f"http://127.0.0.1:{p}/health_generate"
                       for p in (30000, 31000, 31001, 32000, 32001, 31500, 31501)}
    assert (tmp_path / "logs" / "student-router-32001.log").exists()
    # The fleet outlives the script, and the script says how to stop each process.
    pids = [int(line.rsplit(" ", 1)[1]) for line in result.stderr.splitlines()
            if "with: kill" in line]
    assert len(pids) == 7 and all(alive(p) for p in pids)


def test_remote_hosts_are_started_over_ssh(fake, tmp_path):
    env, state = fake
    result = run_script("--student-model", "/ckpt/s", "--student-servers", "2",
                        "--hosts", "localhost,gpu-b", "--log-dir", str(tmp_path / "logs"),
                        "--poll", "0.05", env=env)
    assert result.returncode == 0, result.stderr
    assert config_lines(result.stdout) == {
        "student_endpoints": "http://localhost:31000,http://gpu-b:31001"}
    assert (state / "ssh.log").read_text().split() == ["gpu-b"]
    assert argv_of(state, 31001)[argv_of(state, 31001).index("--port") + 1] == "31001"
    assert "stop http://gpu-b:31001 with: ssh gpu-b kill" in result.stderr


def test_a_server_that_exits_fails_fast_with_its_log(fake, tmp_path):
    env, state = fake
    env["FAKE_DIE"] = "1"
    result = run_script("--teacher-model", TEACHER, "--log-dir", str(tmp_path / "logs"),
                        "--poll", "0.05", "--timeout", "600", env=env)
    assert result.returncode == 1
    assert "http://127.0.0.1:30000 exited before it was healthy" in result.stderr
    assert "CUDA out of memory" in result.stderr
    assert "teacher_endpoints" not in result.stdout


def test_health_timeout_names_the_servers_and_stops_what_it_started(fake, tmp_path):
    env, state = fake
    env["FAKE_NEVER_HEALTHY"] = "1"
    result = run_script("--teacher-model", TEACHER, "--student-model", "/ckpt/s",
                        "--log-dir", str(tmp_path / "logs"), "--poll", "0.05",
                        "--timeout", "1", env=env)
    assert result.returncode == 1
    assert "timed out after 1s; not healthy:" in result.stderr
    assert "http://127.0.0.1:30000" in result.stderr and "http://127.0.0.1:31000" in result.stderr
    pids = [int(p) for p in (state / "pids").read_text().split()]
    assert len(pids) == 2 and wait_dead(pids)
    assert result.stdout == ""
