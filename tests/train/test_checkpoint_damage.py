"""A checkpoint step whose files were damaged is reported in one line naming the step and the
file; the run resumes from the step before (or stops, when told to)."""

from __future__ import annotations

import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from dagger_jax.models.config import Qwen3Config
from dagger_jax.train.checkpoint import Checkpointer, CheckpointWriteFailed, DamagedCheckpoint

CONFIG = Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                     max_position_embeddings=64)


def saved_steps(directory: Path) -> Checkpointer:
    checkpointer = Checkpointer(directory)
    for step in (1, 2):
        checkpointer.save(step, {"w": jnp.full((64, 16), float(step))}, None, CONFIG)
    return checkpointer


def damage(step_dir: Path) -> list[Path]:
    """Truncates the step's array data files (a disk that lost writes)."""
    data = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    for file in data:
        with open(file, "r+b") as f:
            f.truncate(10)
    return data


def test_a_damaged_latest_step_is_named_moved_aside_and_the_previous_used(tmp_path, caplog):
    checkpointer = saved_steps(tmp_path / "checkpoints")
    damage(tmp_path / "checkpoints" / "2")
    target = {"w": jnp.zeros((64, 16))}
    with caplog.at_level(logging.WARNING):
        step, params, _ = checkpointer.restore_intact(CONFIG, target, None)
    assert step == 1 and np.all(np.asarray(params["w"]) == 1.0)
    [line] = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert "checkpoint step 2" in line and "/checkpoints/2/params/" in line and "\n" not in line
    assert "resuming from step 1" in line
    assert (tmp_path / "checkpoints" / "2.damaged").is_dir() and checkpointer.all_steps() == [1]
    # The resumed run saves step 2 again where the damaged one was.
    checkpointer.save(2, {"w": jnp.full((64, 16), 5.0)}, None, CONFIG)
    assert checkpointer.restore_intact(CONFIG, target, None)[0] == 2


def test_told_to_stop_it_stops_naming_the_step_and_file(tmp_path):
    checkpointer = saved_steps(tmp_path / "checkpoints")
    damaged = damage(tmp_path / "checkpoints" / "2")
    with pytest.raises(DamagedCheckpoint) as stopped:
        checkpointer.restore_intact(CONFIG, {"w": jnp.zeros((64, 16))}, None, on_damaged="stop")
    assert "checkpoint step 2" in str(stopped.value)
    assert any(file.name in str(stopped.value) for file in damaged)
    assert checkpointer.all_steps() == [1, 2]  # nothing moved


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (we run as root, as the sandboxes need)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_during_a_save_is_one_line_with_the_space_left(small_disk, caplog):
    import jax

    checkpointer = Checkpointer(small_disk / "checkpoints")
    checkpointer.save(1, {"w": jnp.zeros((64, 16))}, None, CONFIG)
    noise = jax.random.normal(jax.random.PRNGKey(0), (512, 512))  # 1 MiB that does not compress
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointWriteFailed) as failed:
        checkpointer.save(2, {"w": noise}, None, CONFIG)
    line = str(failed.value)
    assert "\n" not in line and "checkpoint step 2" in line and str(small_disk) in line
    assert "no space left on device" in line and "MiB free of 0.3 MiB" in line
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no thread copies
    # The partial step is gone (its space given back) and the step before is still whole.
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == ["1"]
    assert checkpointer.all_steps() == [1]
