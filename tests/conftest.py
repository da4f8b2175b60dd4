"""Test-wide setup: eight virtual CPU devices so sharding runs as it would on a pod slice, and
the fixtures every part of the suite shares, built once per test run: the machine's sandbox
deps, both sandbox backends, the project's small ChatML tokenizer.

The sandbox deps are made, not assumed: tools/ensure_sandbox_deps.sh installs and starts what is
missing. If docker still cannot be had, the docker tests fail with the script's reason (they
never skip); the bubblewrap tests run regardless.
"""

import os

# The suite compiles hundreds of small programs, most of them run a few times: XLA's backend
# (LLVM) optimisations cost more compile time than they save in run time at these sizes
# (measured on a cold cache: tests/train/test_train_step.py 63 -> 46 s, the sampler tests
# 49 -> 36 s). Tests only: runs, benchmarks and the demo keep XLA's defaults. Child processes
# of the tests (a main run, a server) get it too: SUBPROCESS_XLA_FLAGS.
SUBPROCESS_XLA_FLAGS = "--xla_backend_optimization_level=0"
# Must be set before jax initialises its backends (first import anywhere in the session).
os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count=8 {SUBPROCESS_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Compiled programs persist for the run and its child processes (a restarted main, a second
# Trainer of the same shapes): the same program is compiled once per suite, not per process.
# Under the repo's ignored .cache/, shared by the pytest workers.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "xla_tests"))

import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from dagger_jax.envs.sandbox import SandboxLimits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("bwrap", "docker")
# Small limits keep the limit tests quick; 512 MB still runs python3, git and pytest.
LIMITS = SandboxLimits(memory_mb=512, pids=64, cpus=1.0, command_timeout_s=60.0,
                       output_limit_bytes=4096, disk_mb=256)


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


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory):
    """The project's ChatML template on a small BPE (512 ids) trained on the sample corpus."""
    from dagger_jax.tokenizer import train_bpe_tokenizer
    from dagger_jax.tokenizer.sample_corpus import sample_texts
    return train_bpe_tokenizer(sample_texts(200, seed=0), 512, tmp_path_factory.mktemp("chatml"))


@pytest.fixture(scope="session")
def chat(chat_dir):
    from dagger_jax.agent import ChatTokenizer
    return ChatTokenizer.from_path(chat_dir)


@pytest.fixture(scope="session")
def plain_job_data(tmp_path_factory, chat, chat_dir) -> list[str]:
    """The plain job's flags for a fixed set of trajectory shards (24 varied episodes in the
    chat tokenizer's ids) and that tokenizer: SFT on a fixed dataset."""
    from dagger_jax.data.shards import ShardWriter
    from tests.data.episodes import episode_batch
    directory = tmp_path_factory.mktemp("plain_job_data")
    with ShardWriter(directory, "w0", 8) as writer:
        for record in episode_batch(chat, 24, iteration=1):
            writer.write(record)
    return [f"--config.data.dirs={directory}", f"--config.tokenizer.dir={chat_dir}"]


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator for the session (tests/gcs_emulator.py): the environment that points a
    process at it; os.environ has it too while it runs."""
    from tests.gcs_emulator import gcs_emulator
    with gcs_emulator() as env:
        yield env
