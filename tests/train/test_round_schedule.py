"""train.round_schedule through the Trainer: the loop's per-step rate is what each step uses,
it survives a checkpoint, and asking for it where no loop sets it is refused."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dagger_jax.config_base import base_config
from dagger_jax.main import run
from dagger_jax.models.config import Qwen3Config
from dagger_jax.train.optimizer import current_learning_rate, round_learning_rate
from dagger_jax.train.settings import TrainSettings
from dagger_jax.train.trainer import Trainer as _Trainer
from tests.train.test_train_step import CONFIG, random_batch

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow


def trainer_config(round_schedule: str):
    c = base_config()
    c.model.update(CONFIG.to_dict())
    c.train.update(dict(lr=1e-2, warmup_steps=2, end_lr_ratio=0.1, log_every=1, checkpoint_every=3,
                        round_schedule=round_schedule))
    c.progress = False
    return c


def Trainer(config, workdir, model_config):  # noqa: N802 - the Trainer of a config
    return _Trainer(TrainSettings.from_config(config), workdir, model_config)


def fit(workdir, config, start, end, stop=None):
    """Trains the round start..end up to `stop` (default its end) with a new Trainer, as a
    restarted process would: what came before is read from the checkpoint."""
    trainer = Trainer(config, workdir, Qwen3Config.from_dict(config.model.to_dict()))
    rate = round_learning_rate(TrainSettings.from_config(config), start, end)
    state = trainer.fit(lambda step: random_batch(8, 32, seed=step), total_steps=stop or end,
                        rate_fn=rate)
    held = float(current_learning_rate(jax.device_get(state.opt_state), None, None))
    return jax.device_get(state.params), (trainer.last_metrics["lr"], held, float(rate((stop or end) - 1)))


def test_each_step_uses_the_loops_rate_and_a_resumed_round_keeps_it(tmp_path):
    config = trainer_config("cosine")
    _, first = fit(tmp_path / "a", config, 0, 6)
    straight, second = fit(tmp_path / "a", config, 6, 10)
    for metric, held, wanted in (first, second):  # the round's last step: logged, held, wanted
        assert metric == pytest.approx(wanted) and held == pytest.approx(wanted)
        assert wanted == pytest.approx(1e-3)  # every round ends at lr * end_lr_ratio
    # Stopped after step 4 of the first round (as if killed there) and run again: the same
    # parameters at the end, so every resumed step had the rate it would have had.
    fit(tmp_path / "b", config, 0, 6, stop=4)
    fit(tmp_path / "b", config, 0, 6)
    resumed, _ = fit(tmp_path / "b", config, 6, 10)
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    # The rate matters: the same steps at the plain constant rate end elsewhere.
    constant = trainer_config("")
    constant.train.schedule = "constant"
    trainer = Trainer(constant, tmp_path / "c", Qwen3Config.from_dict(constant.model.to_dict()))
    plain = jax.device_get(trainer.fit(lambda step: random_batch(8, 32, seed=step), total_steps=10).params)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(straight),
                                                     jax.tree_util.tree_leaves(plain)))


def test_a_held_rate_without_the_loop_is_refused(tmp_path):
    config = trainer_config("cosine")
    trainer = Trainer(config, tmp_path / "t", Qwen3Config.from_dict(config.model.to_dict()))
    with pytest.raises(ValueError, match="needs the loop"):
        trainer.fit(lambda step: random_batch(8, 32), total_steps=1)
    plain = trainer_config("")
    trainer = Trainer(plain, tmp_path / "p", Qwen3Config.from_dict(plain.model.to_dict()))
    with pytest.raises(ValueError, match="round_schedule is off"):
        trainer.fit(lambda step: random_batch(8, 32), total_steps=1, rate_fn=lambda step: 0.1)
    with pytest.raises(ValueError, match="config.train.round_schedule='cosine'"):
        run(config, tmp_path / "main")
