"""Tests for launch/tpu_pod.sh: the commands it prints, and what it really runs through gcloud.

No network: a fake `gcloud` on PATH records its argv, and for the end-to-end test plays every
TPU worker by running the `--command` script in a local bash inside a fake home directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "tpu_pod.sh"
BASE = ["--tpu", "my-tpu", "--zone", "us-central2-b", "--workdir", "gs://bucket/run1"]
SSH_PREFIX = "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --worker=all"
# The per-run log name holds a timestamp; mask it to compare two invocations.
RUN_ID = re.compile(r"train-\d{8}-\d{6}-")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(
    *args: str, script: Path = SCRIPT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def gcloud_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("gcloud ")]


def command_value(argv: list[str]) -> str:
    values = [a[len("--command=") :] for a in argv if a.startswith("--command=")]
    assert len(values) == 1, argv
    return values[0]


def trainer_words(remote: str) -> list[str]:
    """The trainer's argv as the remote bash will read it (between the env var and 2>&1)."""
    match = re.search(r"PYTHONUNBUFFERED=1 (.*?) 2>&1 \| tee", remote)
    assert match, remote
    return shlex.split(match.group(1))


def write_exe(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# A gcloud that logs argv (one JSON list per line). With FAKE_WORKER_HOME set it also acts as
# the pod: scp copies into that home, ssh runs --command there with bash.
FAKE_GCLOUD = f"""\
#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
home = os.environ.get("FAKE_WORKER_HOME")
if home and args[:3] == ["compute", "tpus", "tpu-vm"]:
    if args[3] == "ssh":
        cmd = [a for a in args if a.startswith("--command=")][0][len("--command="):]
        sys.exit(subprocess.call(["bash", "-c", cmd], cwd=home))
    if args[3] == "scp":
        src, dest = [a for a in args[4:] if not a.startswith("-")]
        shutil.copy(src, os.path.join(home, dest.split(":", 1)[1]))
"""


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A PATH dir with a fake gcloud and stubs for the worker-side tools that touch processes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    write_exe(bin_dir / "gcloud", FAKE_GCLOUD)
    # Never let a test pkill real processes on this machine: record the call instead.
    write_exe(bin_dir / "pkill", f'#!/bin/sh\necho "pkill $*" >> {logs}/proc.log\nexit 1\n')
    write_exe(bin_dir / "pgrep", f'#!/bin/sh\necho "pgrep $*" >> {logs}/proc.log\nexit 1\n')
    write_exe(bin_dir / "hostname", "#!/bin/sh\necho fake-worker-0\n")
    # `python3 -m venv DIR` on the worker: make a venv whose pip logs and whose python
    # records the trainer's argv NUL-separated and prints like a trainer would.
    write_exe(
        bin_dir / "python3",
        f"""\
        #!/bin/sh
        [ "$1 $2" = "-m venv" ] || exit 97
        mkdir -p "$3/bin"
        printf '#!/bin/sh\\necho "pip $*" >> {logs}/pip.log\\n' > "$3/bin/pip"
        printf '#!/bin/sh\\nprintf "%%s\\\\0" "$@" > {logs}/trainer_argv\\necho "step 1 loss 0.5"\\n' \\
          > "$3/bin/python"
        chmod +x "$3/bin/pip" "$3/bin/python"
        """,
    )
    return bin_dir


def fake_env(tmp_path: Path, fake_bin: Path, worker_home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    env["FAKE_GCLOUD_LOG"] = str(tmp_path / "logs" / "gcloud.log")
    if worker_home is not None:
        env["FAKE_WORKER_HOME"] = str(worker_home)
    return env


def gcloud_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "logs" / "gcloud.log"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Dry run: what it prints.
# ---------------------------------------------------------------------------------------------


def test_dry_run_prints_one_ssh_on_all_workers_running_the_trainer() -> None:
    result = run_script(
        *BASE, "--config", "configs/qwen3_4b.py", "--dry-run", "--", "--config.lr=1e-4"
    )
    assert result.returncode == 0, result.stderr
    lines = gcloud_lines(result.stdout)
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith(SSH_PREFIX + " ")
    remote = command_value(shlex.split(lines[0]))
    assert "cd dagger_jax" in remote
    assert trainer_words(remote) == [
        ".venv/bin/python",
        "-m",
        "dagger_jax.main",
        "--config=configs/qwen3_4b.py",
        "--workdir=gs://bucket/run1",
        "--config.lr=1e-4",
    ]
    # Stray trainers are killed before the new one starts.
    assert remote.index("pkill -f") < remote.index("-m dagger_jax.main --config")
    assert "scp" not in result.stdout
    assert "--project" not in result.stdout


def test_the_loop_config_runs_the_loop_on_every_worker() -> None:
    # Every worker runs the same loop command (process 0 leads: docs/loop.md); running the
    # same launch again restarts all of them (leftover trainers are killed first).
    result = run_script(*BASE, "--config", "configs/qwen3_8b.py:dagger", "--dry-run", "--",
                        "--config.loop.student_loaders=http://gpu1:31500")
    assert result.returncode == 0, result.stderr
    [line] = gcloud_lines(result.stdout)
    assert "--worker=all" in shlex.split(line)
    assert trainer_words(command_value(shlex.split(line)))[3:] == [
        "--config=configs/qwen3_8b.py:dagger", "--workdir=gs://bucket/run1",
        "--config.loop.student_loaders=http://gpu1:31500"]


def test_default_config_is_qwen3_8b() -> None:
    result = run_script(*BASE, "--dry-run")
    assert result.returncode == 0, result.stderr
    words = trainer_words(command_value(shlex.split(gcloud_lines(result.stdout)[0])))
    assert "--config=configs/qwen3_8b.py" in words


def test_project_flag_appears_only_when_given() -> None:
    without = run_script(*BASE, "--sync", "--dry-run")
    with_project = run_script(*BASE, "--sync", "--project", "my-proj", "--dry-run")
    assert without.returncode == 0 and with_project.returncode == 0
    assert "--project" not in without.stdout
    lines = gcloud_lines(with_project.stdout)
    assert len(lines) == 3
    assert all("--project=my-proj" in shlex.split(line) for line in lines)


def test_sync_copies_then_sets_up_then_trains() -> None:
    # The tpu extra by default: JAX with libtpu on the workers.
    result = run_script(*BASE, "--sync", "--repo-dir", "code/dj", "--dry-run")
    assert result.returncode == 0, result.stderr
    scp, setup, train = (shlex.split(line) for line in gcloud_lines(result.stdout))
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert "--recurse" in scp and "--worker=all" in scp and "--zone=us-central2-b" in scp
    assert any(a.startswith("my-tpu:") for a in scp)
    assert setup[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    setup_remote = command_value(setup)
    assert "tar -xzf" in setup_remote and "-m venv .venv" in setup_remote
    assert "pip install --quiet -e .\\[tpu\\]" in setup_remote
    assert "cd code/dj" in command_value(train)
    assert "dagger_jax.main" in command_value(train)


def test_quoted_extra_args_survive_into_the_remote_trainer_command() -> None:
    tricky = ["--config.note=hello world", "--config.q=it's \"quoted\" $HOME & `x`", ""]
    result = run_script(
        *BASE[:-1], "gs://bucket/my run", "--dry-run", "--", *tricky, "--config.n=3"
    )
    assert result.returncode == 0, result.stderr
    (line,) = gcloud_lines(result.stdout)
    words = trainer_words(command_value(shlex.split(line)))
    assert words[3:] == ["--config=configs/qwen3_8b.py", "--workdir=gs://bucket/my run", *tricky,
                         "--config.n=3"]


def test_dry_run_invokes_nothing(tmp_path: Path, fake_bin: Path) -> None:
    result = run_script(*BASE, "--sync", "--dry-run", env=fake_env(tmp_path, fake_bin))
    assert result.returncode == 0, result.stderr
    assert gcloud_calls(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Argument errors.
# ---------------------------------------------------------------------------------------------


def test_missing_tpu_is_a_usage_error() -> None:
    result = run_script("--zone", "us-central2-b", "--workdir", "gs://b/w", "--dry-run")
    assert result.returncode == 2
    assert "--tpu" in result.stderr and "usage:" in result.stderr
    assert result.stdout == ""


def test_unknown_flag_is_named() -> None:
    result = run_script(*BASE, "--frobnicate", "--dry-run")
    assert result.returncode == 2
    assert "--frobnicate" in result.stderr
    assert result.stdout == ""


def test_flag_without_value_is_a_usage_error() -> None:
    result = run_script(*BASE, "--zone")
    assert result.returncode == 2
    assert "--zone needs a value" in result.stderr


# ---------------------------------------------------------------------------------------------
# Real runs against a fake gcloud.
# ---------------------------------------------------------------------------------------------


def test_runs_gcloud_with_the_printed_arguments(tmp_path: Path, fake_bin: Path) -> None:
    env = fake_env(tmp_path, fake_bin)
    trainer_args = ["--", "--config.note=a b"]
    printed = run_script(*BASE, "--project", "p1", "--dry-run", *trainer_args, env=env)
    assert gcloud_calls(tmp_path) == []
    real = run_script(*BASE, "--project", "p1", *trainer_args, env=env)
    assert real.returncode == 0, real.stderr
    calls = gcloud_calls(tmp_path)
    assert len(calls) == 1
    assert calls[0][:8] == [
        "compute", "tpus", "tpu-vm", "ssh", "my-tpu",
        "--zone=us-central2-b", "--project=p1", "--worker=all",
    ]
    expected = shlex.split(gcloud_lines(printed.stdout)[0])[1:]
    assert [RUN_ID.sub("train-X-", a) for a in calls[0]] == [
        RUN_ID.sub("train-X-", a) for a in expected
    ]


def test_gcloud_failure_fails_the_launch(tmp_path: Path, fake_bin: Path) -> None:
    write_exe(fake_bin / "gcloud", "#!/bin/sh\nexit 3\n")
    result = run_script(*BASE, env=fake_env(tmp_path, fake_bin))
    assert result.returncode == 3


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    """A tiny git checkout holding a copy of the script, as --sync would see it."""
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    (repo / "dagger_jax").mkdir()
    shutil.copy(SCRIPT, repo / "launch" / "tpu_pod.sh")
    (repo / "pyproject.toml").write_text("[project]\nname = 'dagger_jax'\n")
    (repo / "dagger_jax" / "__init__.py").write_text("")
    (repo / ".gitignore").write_text("secret.txt\n")
    (repo / "secret.txt").write_text("ignored\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    (repo / "notes.txt").write_text("untracked, not ignored\n")
    return repo


def test_sync_and_train_on_a_fake_worker(
    tmp_path: Path, fake_bin: Path, source_repo: Path
) -> None:
    worker_home = tmp_path / "worker_home"
    worker_home.mkdir()
    env = fake_env(tmp_path, fake_bin, worker_home)
    logs = tmp_path / "logs"
    script = source_repo / "launch" / "tpu_pod.sh"
    extra = ["--config.note=it's a \"test\"", "--config.steps=2"]

    first = run_script(*BASE, "--sync", "--", *extra, script=script, env=env)
    assert first.returncode == 0, first.stderr

    checkout = worker_home / "dagger_jax"
    assert (checkout / "dagger_jax" / "__init__.py").exists()
    assert (checkout / "launch" / "tpu_pod.sh").exists()
    assert (checkout / "notes.txt").exists()
    assert not (checkout / "secret.txt").exists()
    assert not (worker_home / "dagger_jax_src.tar.gz").exists()

    argv = (logs / "trainer_argv").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv] == [
        "-m", "dagger_jax.main", "--config=configs/qwen3_8b.py", "--workdir=gs://bucket/run1",
        *extra,
    ]
    (log_file,) = (checkout / "logs").glob("train-*-fake-worker-0.log")
    assert "step 1 loss 0.5" in log_file.read_text()
    assert "fake-worker-0: step 1 loss 0.5" in first.stdout
    assert "pkill -f" in (logs / "proc.log").read_text()
    assert (logs / "pip.log").read_text().count("install --quiet -e .") == 1

    # A second --sync finds the venv set up for this pyproject.toml and does not reinstall.
    second = run_script(*BASE, "--sync", script=script, env=env)
    assert second.returncode == 0, second.stderr
    assert "fake-worker-0: .venv up to date" in second.stdout
    assert (logs / "pip.log").read_text().count("install --quiet -e .") == 1
    assert [c[3] for c in gcloud_calls(tmp_path)] == ["scp", "ssh", "ssh"] * 2


def test_train_without_venv_says_to_sync(
    tmp_path: Path, fake_bin: Path
) -> None:
    worker_home = tmp_path / "worker_home"
    (worker_home / "dagger_jax").mkdir(parents=True)
    result = run_script(*BASE, env=fake_env(tmp_path, fake_bin, worker_home))
    assert result.returncode != 0
    assert "launch once with --sync" in result.stderr


def test_kill_pattern_matches_the_trainer_but_not_the_launching_shell(tmp_path: Path) -> None:
    """Run with the real pgrep: a bare `pkill -f dagger_jax.main` would kill its own shell."""
    assert shutil.which("pgrep"), "this test needs pgrep (Debian package procps)"
    result = run_script(*BASE, "--dry-run")
    remote = command_value(shlex.split(gcloud_lines(result.stdout)[0]))
    match = re.search(r"pat=((?:\\.|[^\s;])+);", remote)
    assert match, remote
    pattern = subprocess.run(
        ["bash", "-c", f"printf %s {match.group(1)}"], capture_output=True, text=True, check=True
    ).stdout

    # A trainer as the launch starts it: a venv python symlink running -m dagger_jax.main.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    os.symlink(os.path.realpath(sys.executable), tmp_path / ".venv" / "bin" / "python")
    (tmp_path / "dagger_jax").mkdir()
    (tmp_path / "dagger_jax" / "__init__.py").write_text("")
    (tmp_path / "dagger_jax" / "main.py").write_text("import time\ntime.sleep(60)\n")
    trainer = subprocess.Popen(
        [".venv/bin/python", "-m", "dagger_jax.main", "--config=c.py"], cwd=tmp_path
    )
    # The worker's shell, whose -c script holds the whole remote command (behind a comment,
    # so it runs nothing); the trailing `true` keeps bash from exec-ing sleep in its place.
    shell = subprocess.Popen(["bash", "-c", "sleep 60; true # " + remote])
    try:
        found = subprocess.run(
            ["pgrep", "-P", str(os.getpid()), "-f", pattern], capture_output=True, text=True
        )
        assert found.stdout.split() == [str(trainer.pid)]
    finally:
        for proc in (trainer, shell):
            proc.kill()
            proc.wait()
