"""Qwen3Config: reading HF config.json, and refusing what this model does not implement."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.qwen3 import Qwen3ForCausalLM, init_params, rope_frequencies
from tests.models.hf_fixtures import TINY


@pytest.mark.parametrize("tied", [True, False])
def test_param_count_matches_transformers(tied):
    hf_config = transformers.Qwen3Config(**TINY, tie_word_embeddings=tied)
    model = transformers.Qwen3ForCausalLM(hf_config)
    expected = sum(p.numel() for p in model.parameters())
    ours = Qwen3Config.from_hf_dict(hf_config.to_dict())
    assert ours.num_params == expected
    leaves = jax.tree_util.tree_leaves(init_params(ours, jax.random.key(0)))
    assert sum(x.size for x in leaves) == expected


def test_hf_dict_round_trip_and_transformers_reads_ours():
    ours = Qwen3Config(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=24, rope_theta=123.0,
                       tie_word_embeddings=True, eos_token_id=7)
    assert Qwen3Config.from_hf_dict(ours.to_hf_dict()) == ours
    theirs = transformers.Qwen3Config(**ours.to_hf_dict())
    assert theirs.head_dim == 24 and theirs.rope_parameters["rope_theta"] == 123.0


@pytest.mark.parametrize("change, message", [
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
     r"yarn rope scaling needs factor and original_max_position_embeddings.*missing "
     r"\['original_max_position_embeddings'\]"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 0.5, "original_max_position_embeddings": 8}),
     "yarn factor must be a number >= 1"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1.0}), "rope type 'linear'"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"]), "dense Qwen3"),
    (dict(num_key_value_heads=3), "not a multiple"),
])
def test_unsupported_configs_are_refused_by_name(change, message):
    hf = {**transformers.Qwen3Config(**TINY).to_dict(), "architectures": ["Qwen3ForCausalLM"], **change}
    with pytest.raises(ValueError, match=message):
        Qwen3Config.from_hf_dict(hf, where="x/config.json")


@pytest.mark.parametrize("yarn", [
    dict(factor=2.0, original_max_position_embeddings=32_768),  # configs/qwen3_8b.py at 64K
    dict(factor=4.0, original_max_position_embeddings=64, beta_fast=16.0, truncate=False),
    dict(factor=8.0, original_max_position_embeddings=4096, attention_factor=1.5),
])
def test_yarn_frequencies_and_scale_are_transformers(yarn):
    theta, head_dim = 1_000_000.0, 128
    theirs = transformers.Qwen3Config(**{**TINY, "head_dim": head_dim, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": theta, **yarn}})
    inv_freq, scale = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["yarn"](theirs, "cpu")
    ours = Qwen3Config.from_hf_dict(theirs.to_dict())
    assert ours.rope_scaling.factor == yarn["factor"]
    our_freq, our_scale = rope_frequencies(ours)
    np.testing.assert_allclose(our_freq, inv_freq.numpy(), rtol=1e-6)
    assert our_scale == pytest.approx(scale, rel=1e-9)
    # Written back, transformers reads the same scaling.
    again = transformers.Qwen3Config(**ours.to_hf_dict())
    assert again.rope_parameters["rope_type"] == "yarn"
    assert again.rope_parameters["factor"] == yarn["factor"]


def test_unknown_model_key_is_named():
    with pytest.raises(ValueError, match=r"unknown Qwen3 config keys \['hiden_size'\]"):
        Qwen3Config.from_dict({"hiden_size": 3}, where="config.model")


@pytest.mark.slow
def test_remat_policies_do_not_change_the_gradients():
    config = Qwen3Config.from_hf_dict(transformers.Qwen3Config(**TINY).to_dict())
    params = init_params(config, jax.random.key(1))
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 12))

    def loss(p, remat):
        return jnp.mean(Qwen3ForCausalLM(config, remat=remat).apply({"params": p}, tokens) ** 2)

    ref = jax.grad(loss)(params, "none")
    for policy in ("full", "dots", "dots_no_batch"):
        got = jax.grad(loss)(params, policy)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), ref, got)
    with pytest.raises(ValueError, match="remat policy 'some'"):
        loss(params, "some")
