"""The entry point as a user runs it (the plain job: SFT on fixed trajectory shards): a killed
run, in a bucket, resumes to the parameters of an uninterrupted local run; a store that cannot
be written, a misspelt key and a checkpoint of another shape stop it in one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import transformers

from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.qwen3 import params_shape
from dagger_jax.models.sharding import abstract_sharded_params, make_mesh
from dagger_jax.storage.store import is_published, local_dir, store_path
from dagger_jax.train.checkpoint import Checkpointer
from tests.conftest import SUBPROCESS_XLA_FLAGS

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
# A small, fast variant of configs/local.py.
OVERRIDES = [
    "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
    "--config.model.num_hidden_layers=2", "--config.model.num_attention_heads=2",
    "--config.model.num_key_value_heads=1", "--config.model.head_dim=16",
    "--config.train.seq_len=512", "--config.train.batch_size=4",
    f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=5",
    "--config.train.keep_checkpoints=2", "--config.progress=False",
]


def main_command(workdir: Path, data: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "dagger_jax.main", "--config=configs/local.py",
            f"--workdir={workdir}", *OVERRIDES, *data, *extra]


def env() -> dict:
    # One device per process, like the demo; tests/conftest.py's 8 devices are for in-process tests.
    return {**os.environ, "XLA_FLAGS": SUBPROCESS_XLA_FLAGS}


def final_params(workdir: Path | str):
    checkpointer = Checkpointer(store_path(workdir) / "checkpoints")
    config = Qwen3Config.from_dict(checkpointer.meta()["model_config"])
    target = abstract_sharded_params(params_shape(config), make_mesh((1, 1, 1, 1), jax.devices()[:1]))
    step, params, _ = checkpointer.restore(None, config, target, None)
    return step, jax.device_get(params)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, plain_job_data) -> Path:
    """One uninterrupted run, shared by the tests that need a finished workdir."""
    workdir = tmp_path_factory.mktemp("straight") / "workdir"
    straight = subprocess.run(main_command(workdir, plain_job_data, "--config.export.at_end=False"),
                              cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return workdir


def test_a_run_in_a_bucket_matches_the_local_run_and_resumes_after_a_kill(
        tmp_path, plain_job_data, straight_run, gcs):
    """A run killed with -9 resumes to the parameters of the uninterrupted run, here with
    --workdir=gs://... against a real GCS emulator: checkpoints (Orbax straight to the bucket),
    tokenizer, config, TensorBoard and the export land in the bucket, the restart resumes from
    it, and nothing is written to a local folder named gs:. (The loop's kill test,
    tests/recipes/test_loop_resume.py, resumes training from a local workdir.)"""
    from tests.gcs_emulator import create_bucket, object_names
    workdir = create_bucket(gcs, "runs") + "/plain"
    run_env = {**env(), **gcs}
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(main_command(workdir, plain_job_data), cwd=ROOT, env=run_env,
                                stdout=out, stderr=subprocess.STDOUT)
    # Orbax on GCS commits a step by writing its commit_success.txt last.
    while not object_names(gcs, "runs", "plain/checkpoints/10/commit_success"):
        assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = Checkpointer(store_path(workdir) / "checkpoints").latest_step()
    assert 10 <= interrupted_at < STEPS, f"kill came too late to test resuming ({interrupted_at})"

    resumed = subprocess.run(main_command(workdir, plain_job_data), cwd=ROOT, env=run_env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step {interrupted_at}" in resumed.stderr and "resuming from" in resumed.stderr
    (step_a, params_a), (step_b, params_b) = final_params(straight_run), final_params(workdir)
    assert step_a == step_b == STEPS
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)
    assert np.any(np.asarray(jax.tree_util.tree_leaves(params_a)[0]) != 0)
    run = store_path(workdir)
    assert (run / "config.json").is_file() and is_published(run / "tokenizer")
    assert any(f.name.startswith("events.out.tfevents") for f in (run / "tensorboard").iterdir())
    # The resumed run exported a directory transformers loads, tokenizer included.
    export = local_dir(run / "export")
    assert transformers.AutoModelForCausalLM.from_pretrained(export).config.hidden_size == 32
    assert transformers.AutoTokenizer.from_pretrained(export).chat_template
    assert any((straight_run / "tensorboard").iterdir())  # and on local disk too
    assert not (ROOT / "gs:").exists()


def test_a_missing_bucket_or_refused_credentials_is_one_line_before_anything_runs(
        plain_job_data, gcs):
    from tests.gcs_emulator import refusing_store
    result = subprocess.run(main_command("gs://no-such-bucket/run", plain_job_data), cwd=ROOT,
                            env={**env(), **gcs}, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "gs://no-such-bucket/run: cannot write there (FileNotFoundError" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    with refusing_store() as refusing:
        result = subprocess.run(main_command("gs://runs/refused", plain_job_data), cwd=ROOT,
                                env={**env(), **refusing}, capture_output=True, text=True,
                                timeout=300)
    assert result.returncode != 0
    assert "gs://runs/refused: cannot write there" in result.stderr, result.stderr[-3000:]
    assert "(OSError: Forbidden" in result.stderr and "Traceback" not in result.stderr


def test_a_misspelt_config_key_is_an_error(tmp_path, plain_job_data):
    result = subprocess.run(main_command(tmp_path / "w", plain_job_data, "--config.train.lrr=0.1"), cwd=ROOT,
                            env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "lrr" in result.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_checkpoint_of_another_model_shape_is_refused(tmp_path, plain_job_data, straight_run):
    # A copy: the refused run must not be able to touch the workdir the other test compares.
    shutil.copytree(straight_run, tmp_path / "w")
    other = subprocess.run(main_command(tmp_path / "w", plain_job_data,
                                        "--config.model.intermediate_size=96"),
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert other.returncode != 0
    assert "different model config" in other.stderr
    assert "intermediate_size: checkpoint 64 vs config 96" in other.stderr
