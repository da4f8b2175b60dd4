"""Behaviour every sandbox backend shares, pinned for bubblewrap and docker alike."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dagger_jax.envs.sandbox import SandboxError, SandboxFileError, SandboxSpec

from tests.envs.sandbox.conftest import LIMITS, snapshot

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow


def test_run_reports_exit_code_and_interleaved_output(sandbox):
    result = sandbox.run("echo out; echo err >&2; echo out2; exit 3")
    assert result.exit_code == 3
    assert result.output == "out\nerr\nout2\n"
    assert not result.timed_out and not result.truncated
    assert result.duration_s > 0


def test_commands_run_in_testbed_on_the_task_repo(sandbox):
    result = sandbox.run("pwd; cat pkg/calc.py; ./run.sh")
    assert result.exit_code == 0, result.output
    assert result.output == "/testbed\ndef add(a, b):\n    return a - b\nrun\n"


def test_task_tests_run_with_the_base_image_tools(sandbox):
    result = sandbox.run("python3 -m pytest -q tests 2>&1 | tail -n 1; git --version")
    assert "1 failed" in result.output and "git version" in result.output, result.output


def test_each_command_starts_fresh_but_files_persist(sandbox):
    sandbox.run("cd pkg; export X=1; echo kept > note.txt")
    result = sandbox.run('pwd; echo "X=${X:-unset}"; cat pkg/note.txt')
    assert result.output == "/testbed\nX=unset\nkept\n"


def test_write_then_read_roundtrips_text_and_makes_parents(sandbox):
    text = "héllo wörld\n\ttab\nno newline at end"
    sandbox.write_file("/testbed/new/dir/f.txt", text)
    assert sandbox.read_file("/testbed/new/dir/f.txt") == text
    assert sandbox.run("cat /testbed/new/dir/f.txt").output == text


def test_write_keeps_an_existing_files_mode(sandbox):
    sandbox.write_file("/testbed/run.sh", "#!/bin/sh\necho changed\n")
    assert sandbox.run("./run.sh").output == "changed\n"


def test_read_of_a_missing_file_or_directory_is_a_file_error(sandbox):
    with pytest.raises(SandboxFileError, match="/testbed/nope"):
        sandbox.read_file("/testbed/nope")
    with pytest.raises(SandboxFileError, match="/testbed/pkg"):
        sandbox.read_file("/testbed/pkg")


def test_read_of_a_file_over_the_limit_is_a_file_error(sandbox):
    sandbox.run(f"head -c {LIMITS.file_limit_bytes + 10} /dev/zero > big")
    with pytest.raises(SandboxFileError, match="read limit"):
        sandbox.read_file("/testbed/big")


def test_host_repo_is_unchanged_by_the_episode(backend, task_repo):
    before = snapshot(task_repo)
    with backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        box.run("rm -rf tests; echo evil > pkg/calc.py; touch created")
        box.write_file("/testbed/pkg/__init__.py", "changed")
        assert box.run("ls").output == "created\npkg\nrun.sh\n"
    assert snapshot(task_repo) == before
    with backend.open(SandboxSpec(repo_dir=task_repo)) as fresh:
        assert fresh.run("cat pkg/calc.py").output.startswith("def add")


def test_no_network_to_the_internet(sandbox):
    result = sandbox.run("python3 -c \"import socket; "
                         "socket.create_connection(('1.1.1.1', 53), timeout=3); "
                         "print('CONNECTED')\"")
    assert result.exit_code != 0 and "CONNECTED" not in result.output
    assert "unreachable" in result.output.lower(), result.output


def _host_addresses() -> list[str]:
    addresses = ["127.0.0.1"]
    try:  # the address the host routes out of, if it has a route (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("1.1.1.1", 53))
            addresses.append(probe.getsockname()[0])
    except OSError:
        pass
    return addresses


def test_no_network_to_a_server_on_the_host(sandbox):
    server = socket.create_server(("0.0.0.0", 0))
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(0.2)

    def accept():
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not accepted:
            try:
                accepted.append(server.accept())
            except socket.timeout:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        for address in _host_addresses():
            result = sandbox.run(f"python3 -c \"import socket; socket.create_connection("
                                 f"('{address}', {port}), timeout=3); print('CONNECTED')\"")
            assert "CONNECTED" not in result.output, (address, result.output)
            assert result.exit_code != 0
    finally:
        accepted.append(None)
        thread.join()
        server.close()
    assert accepted == [None], "the host server saw a connection from the sandbox"


def test_a_hanging_command_is_killed_at_its_timeout(sandbox):
    result = sandbox.run("echo before; sleep 1000", timeout_s=2)
    assert result.timed_out and result.exit_code == 124
    assert result.output.startswith("before\n") and "timed out after 2 s" in result.output
    assert result.duration_s < 15
    assert sandbox.run("echo still usable").output == "still usable\n"


def test_leftover_background_processes_neither_block_nor_survive(sandbox):
    start = time.monotonic()
    result = sandbox.run("sleep 1000 & (setsid sleep 1000 &) ; echo started", timeout_s=30)
    assert result.output == "started\n" and not result.timed_out
    assert time.monotonic() - start < 10
    alive = sandbox.run("for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' ';"
                        " echo; done | grep -c '^sleep 1000' || true")
    assert alive.output.strip() == "0"


def test_the_agent_cannot_end_its_own_sandbox(sandbox):
    """Signals to the namespace's pid 1 from inside are dropped: a lost sandbox is always the
    machinery's fault (rollout/faults.py), never a command's."""
    sandbox.run("kill -TERM 1; kill -INT 1; kill -HUP 1; kill -9 1; kill -9 -1", timeout_s=10)
    assert sandbox.run("echo alive").output == "alive\n"


def test_commands_and_paths_no_process_can_take_are_refused_before_the_sandbox(sandbox):
    from dagger_jax.envs.sandbox.base import CommandRefused

    for command, why in [("echo a\0b", "NUL"), ("echo \ud800", "not valid text"),
                         ("echo " + "x" * 200_000, "limit is")]:
        with pytest.raises(CommandRefused, match=why):
            sandbox.run(command)
    for path in ["/testbed/a\0b", "/testbed/" + "d/" * 3000]:
        with pytest.raises(SandboxFileError):
            sandbox.read_file(path)
        with pytest.raises(SandboxFileError):
            sandbox.write_file(path, "text")
    assert sandbox.run("echo " + "x" * 60_000 + " | wc -c").output == "60001\n"


def test_fork_bomb_is_contained(sandbox):
    # Count how many processes the sandbox may hold: bounded by the pids limit.
    counted = sandbox.run("python3 -c \"\nimport os, time\nn = 0\ntry:\n    while True:\n"
                          "        if os.fork() == 0:\n            time.sleep(30); os._exit(0)\n"
                          "        n += 1\nexcept OSError as e:\n    print('blocked after', n)\n\"",
                          timeout_s=30)
    assert "blocked after" in counted.output, counted.output
    assert int(counted.output.split("blocked after")[1].split()[0]) < LIMITS.pids
    bomb = sandbox.run(":(){ :|:& };: ; sleep 3; echo done", timeout_s=20)
    assert bomb.duration_s < 25
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes
    assert sandbox.run("echo alive").output == "alive\n"


def test_memory_limit_stops_a_large_allocation(sandbox):
    small = sandbox.run("python3 -c \"b = bytearray(64 * 2**20); print('small ok')\"")
    assert small.output.strip() == "small ok", small.output
    big = sandbox.run(f"python3 -c \"b = bytearray({2 * LIMITS.memory_mb} * 2**20); "
                      "b[::4096] = b'x' * len(b[::4096]); print('ALLOCATED')\"")
    assert big.exit_code != 0 and "ALLOCATED" not in big.output, big.output


def test_the_memory_limit_holds_for_all_processes_together(sandbox):
    """Four processes of 200 MB each, at once, under a 512 MB limit: at most two keep theirs for
    4 s (each alone is under the limit, so a per-process limit would let all four through; one
    killed after it printed may let another allocate, so survivors are counted)."""
    assert LIMITS.memory_mb == 512
    hog = ("python3 -c \"import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * "
           "len(b[::4096]); time.sleep(4); print('survived', flush=True)\"")
    result = sandbox.run(f"for i in 1 2 3 4; do {hog} & done; wait", timeout_s=60)
    assert 1 <= result.output.splitlines().count("survived") <= 2, result.output
    assert result.output.count("Killed") >= 2, result.output
    assert sandbox.run("echo alive").output == "alive\n"


def test_the_disk_quota_is_an_error_in_the_commands_output(sandbox, backend):
    """Filling the sandbox's disk (its repo, /tmp) fails in the command, as on a full disk;
    the host gives up no more than the quota, and the sandbox goes on."""
    assert LIMITS.disk_mb == 256
    if getattr(backend, "disk_quota", True) is False:  # passed on btrfs with quotas (docker 20.10)
        pytest.skip(f"docker's storage driver {backend.driver} cannot size a container; "
                    "DOCKER_DISK_QUOTA=1 tools/ensure_sandbox_deps.sh starts one that can")
    for where in ("/tmp/big", "/testbed/big"):
        result = sandbox.run(f"fallocate -l 5G {where} || head -c 400M /dev/zero > {where}")
        assert result.exit_code != 0 and ("No space left" in result.output
                                          or "quota" in result.output), result.output
        sandbox.run(f"rm -f {where}")
    written = sandbox.run("head -c 100M /dev/zero > /tmp/f && du -m /tmp/f | cut -f1")
    assert written.exit_code == 0 and written.output.strip() == "100", written.output
    assert sandbox.run("echo alive").output == "alive\n"


def test_output_flood_is_capped_with_a_marker(sandbox):
    result = sandbox.run("echo FIRST; yes | head -c 100000000; echo; echo LAST")
    assert result.exit_code == 0 and result.truncated and not result.timed_out
    assert result.output.startswith("FIRST\n") and result.output.endswith("LAST\n")
    assert "output truncated" in result.output and "bytes dropped" in result.output
    assert len(result.output.encode()) < LIMITS.output_limit_bytes + 200


def test_endless_output_is_capped_and_timed_out(sandbox):
    result = sandbox.run("yes", timeout_s=2)
    assert result.timed_out and result.truncated
    assert len(result.output.encode()) < LIMITS.output_limit_bytes + 200


def test_writes_outside_testbed_never_reach_the_host(backend, task_repo):
    probes = ["/etc/dagger_jax_probe", "/usr/dagger_jax_probe", "/dagger_jax_probe"]
    with backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        box.run("; ".join(f"echo x > {p}" for p in probes))
    for probe in probes:
        assert not Path(probe).exists(), f"sandbox wrote {probe} on the host"
    with backend.open(SandboxSpec(repo_dir=task_repo)) as fresh:
        assert fresh.run(f"ls {' '.join(probes)} 2>/dev/null | wc -l").output.strip() == "0"


def test_a_closed_sandbox_refuses_commands(backend, task_repo):
    box = backend.open(SandboxSpec(repo_dir=task_repo))
    box.close()
    box.close()  # twice is fine
    with pytest.raises(SandboxError, match="closed"):
        box.run("true")


def test_bad_timeout_is_a_clear_error(sandbox):
    with pytest.raises(ValueError, match="timeout"):
        sandbox.run("true", timeout_s=0)


def test_sandbox_runs_with_limited_privileges(sandbox):
    status = sandbox.run("grep CapEff /proc/self/status").output
    # Neither backend hands the command the capabilities to mount, load modules or trace.
    eff = int(status.split()[1], 16)
    for cap in (21, 16, 19):  # CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE
        assert not eff & (1 << cap), status


def test_host_environment_does_not_leak_in(sandbox, monkeypatch):
    monkeypatch.setenv("DAGGER_SECRET", "s3cret-value")
    assert "s3cret-value" not in sandbox.run("env").output


def test_tmp_persists_between_commands_and_shared_memory_works(sandbox):
    sandbox.run("echo scratch > /tmp/repro.txt")
    assert sandbox.run("cat /tmp/repro.txt").output == "scratch\n"
    pool = sandbox.run("python3 -c \"import multiprocessing as m; "
                       "print(m.Pool(2).map(abs, [-1, -2]))\"")
    assert pool.output == "[1, 2]\n", pool.output
