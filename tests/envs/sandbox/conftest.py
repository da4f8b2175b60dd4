"""Fixtures for the sandbox tests: the machine's sandbox deps, both backends, a task repo.

The deps are made, not assumed: tools/ensure_sandbox_deps.sh installs and starts what is
missing. If docker still cannot be had, the docker tests fail with the script's reason (they
never skip); the bubblewrap tests run regardless.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagger_jax.envs.sandbox import SandboxLimits, SandboxSpec

ROOT = Path(__file__).resolve().parents[3]
BACKENDS = ("bwrap", "docker")
# Small limits keep the limit tests quick; 512 MB still runs python3, git and pytest.
LIMITS = SandboxLimits(memory_mb=512, pids=64, cpus=1.0, command_timeout_s=60.0,
                       output_limit_bytes=4096)


@dataclass(frozen=True)
class Deps:
    ok: bool
    report: str


@pytest.fixture(scope="session")
def sandbox_deps() -> Deps:
    done = subprocess.run(["bash", str(ROOT / "tools" / "ensure_sandbox_deps.sh"), sys.executable],
                          capture_output=True, text=True, timeout=1800)
    return Deps(done.returncode == 0, (done.stdout + done.stderr).strip())


@pytest.fixture(scope="session")
def docker_backend(sandbox_deps):
    if not sandbox_deps.ok:
        pytest.fail(f"docker sandbox unavailable: tools/ensure_sandbox_deps.sh failed:\n"
                    f"{sandbox_deps.report}")
    from dagger_jax.envs.sandbox.docker_backend import DockerBackend
    return DockerBackend(LIMITS, run_id="pytest")


@pytest.fixture(scope="session")
def bwrap_backend(sandbox_deps):
    from dagger_jax.envs.sandbox.bwrap import BwrapBackend
    return BwrapBackend(LIMITS)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.getfixturevalue(f"{request.param}_backend")


def make_repo(root: Path) -> Path:
    """A tiny task repo: a module, a test, a nested package and a hidden file."""
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "pkg" / "sub" / "deep.txt").write_text("deep\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_calc.py").write_text(
        "from pkg.calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    (root / ".hidden").write_text("secret\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    return root


@pytest.fixture
def task_repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def sandbox(backend, task_repo):
    with backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        yield box


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes, to prove a host repo did not change."""
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}
