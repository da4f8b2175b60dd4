"""A checkpoint's model config against the run's: the context window may grow (YaRN on an
imported model), the weights' shapes may not change."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from dagger_jax.models.config import Qwen3Config, YarnScaling
from dagger_jax.models.qwen3 import init_params, params_shape
from dagger_jax.models.sharding import abstract_sharded_params, make_mesh
from dagger_jax.train.checkpoint import Checkpointer

PRETRAINED = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=512)


def test_a_pretrained_checkpoint_restores_into_a_yarn_extended_run(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(0, init_params(PRETRAINED, jax.random.key(0)), None, PRETRAINED)
    extended = dataclasses.replace(PRETRAINED, max_position_embeddings=1024,
                                   rope_scaling=YarnScaling(2.0, 512))
    target = abstract_sharded_params(params_shape(extended), make_mesh((1, 1, 1, 1), jax.devices()[:1]))
    step, params, _ = checkpointer.restore(0, extended, target, None)
    assert step == 0 and params["embed_tokens"].shape == (64, 32)
    wider = dataclasses.replace(extended, intermediate_size=64)
    with pytest.raises(ValueError, match="intermediate_size: checkpoint 48 vs config 64"):
        checkpointer.restore(0, wider, target, None)
    checkpointer.close()
