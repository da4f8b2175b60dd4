"""Our Flax Qwen3 against transformers' Qwen3ForCausalLM, both directions through HF files."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import transformers

from dagger_jax.models.attention import AttentionSpec
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.models.hf_import import load_hf_params
from dagger_jax.models.qwen3 import Qwen3ForCausalLM, params_shape
from dagger_jax.models.sharding import make_mesh, match_partition_rules, named_shardings, QWEN3_RULES
from tests.models.hf_fixtures import hf_logits, make_hf_qwen3

VARIANTS = {
    # GQA 2:1 and head_dim (24) != hidden/heads (16), untied.
    "untied_gqa_headdim": dict(tie_word_embeddings=False),
    "tied": dict(tie_word_embeddings=True),
    "mha_bias_theta": dict(num_key_value_heads=4, attention_bias=True, rope_theta=5000.0),
    "gqa4_sharded_files": dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                               max_shard_size="40KB"),
    # Qwen's long-context setting: YaRN over a 64-token "pretrained" window, 4x.
    "yarn": dict(rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=10_000.0,
                                      original_max_position_embeddings=64)),
}


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _load(hf_dir, mesh=None):
    config = Qwen3Config.from_hf_dir(hf_dir)
    shape = params_shape(config)
    mesh = mesh or make_mesh((1, 1, 1, 1), jax.devices()[:1])
    shardings = named_shardings(mesh, match_partition_rules(QWEN3_RULES, shape, mesh))
    return config, load_hf_params(hf_dir, config, shape, shardings)


def _tokens(vocab: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(2, 17))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers_both_ways(tmp_path, variant):
    overrides = dict(VARIANTS[variant])
    shard_size = overrides.pop("max_shard_size", None)
    hf_model = make_hf_qwen3(tmp_path / "hf", max_shard_size=shard_size, **overrides)
    if shard_size:
        assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    config, params = _load(tmp_path / "hf")
    assert config.tie_word_embeddings == overrides.get("tie_word_embeddings", False)
    tokens = _tokens(config.vocab_size)
    ref = hf_logits(hf_model, tokens)
    ours = np.asarray(Qwen3ForCausalLM(config).apply({"params": params}, tokens))
    assert ours.shape == ref.shape
    assert _rel_err(ours, ref) < 1e-5

    # Round trip: our export must load in transformers and give the same logits.
    export_hf(params, config, tmp_path / "export", max_shard_bytes=30_000)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert _rel_err(hf_logits(reloaded, tokens), ref) < 1e-5


def test_packed_segments_match_separate_sequences(tmp_path):
    """Two examples packed in one row give the logits each has alone in transformers."""
    hf_model = make_hf_qwen3(tmp_path / "hf")
    config, params = _load(tmp_path / "hf")
    a, b = _tokens(config.vocab_size, 2)[0, :9], _tokens(config.vocab_size, 3)[0, :6]
    packed = np.concatenate([a, b, [0, 0]])[None]
    positions = np.concatenate([np.arange(9), np.arange(6), [0, 0]])[None]
    segments = np.concatenate([np.full(9, 1), np.full(6, 2), [0, 0]])[None]
    ours = np.asarray(Qwen3ForCausalLM(config).apply({"params": params}, packed, positions, segments))
    assert _rel_err(ours[0, :9], hf_logits(hf_model, a[None])[0]) < 1e-5
    assert _rel_err(ours[0, 9:15], hf_logits(hf_model, b[None])[0]) < 1e-5


def test_bf16_compute_stays_close(tmp_path):
    hf_model = make_hf_qwen3(tmp_path / "hf")
    config, params = _load(tmp_path / "hf")
    tokens = _tokens(config.vocab_size)
    ours = np.asarray(Qwen3ForCausalLM(config, dtype="bfloat16").apply({"params": params}, tokens))
    assert 0 < _rel_err(ours, hf_logits(hf_model, tokens)) < 5e-2


def test_sharded_import_places_params_by_rules(tmp_path):
    hf_model = make_hf_qwen3(tmp_path / "hf")
    mesh = make_mesh((2, 2, 1, 2))
    config, params = _load(tmp_path / "hf", mesh)
    q = params["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, ("fsdp", "sequence"), "tensor")
    assert q.addressable_shards[0].data.shape == (2, 32, 48)
    tokens = _tokens(config.vocab_size)
    ours = np.asarray(Qwen3ForCausalLM(config).apply({"params": params}, tokens))
    assert _rel_err(ours, hf_logits(hf_model, tokens)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("block", [4, 8])
def test_blocked_attention_equals_dense_with_packing(tmp_path, block):
    """The causal-block form gives the dense form's logits and gradients on packed rows."""
    make_hf_qwen3(tmp_path / "hf")
    config, params = _load(tmp_path / "hf")
    tokens = _tokens(config.vocab_size)[:, :16]
    segments = np.array([[1] * 7 + [2] * 6 + [0] * 3, [1] * 16])
    positions = np.array([list(range(7)) + list(range(6)) + [0] * 3, list(range(16))])

    def loss(p, blk):
        logits = Qwen3ForCausalLM(config, attention=AttentionSpec(block=blk)).apply({"params": p}, tokens, positions, segments)
        return (logits[:, :13] ** 2).mean(), logits

    (dense_loss, dense), dense_grads = jax.value_and_grad(loss, has_aux=True)(params, 0)
    (blocked_loss, blocked), blocked_grads = jax.value_and_grad(loss, has_aux=True)(params, block)
    assert _rel_err(np.asarray(blocked[:, :13]), np.asarray(dense[:, :13])) < 1e-5
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                           dense_grads, blocked_grads)


def test_export_removes_the_temp_dirs_of_dead_writers_only(tmp_path):
    import subprocess
    import sys
    hf_dir = tmp_path / "hf"
    make_hf_qwen3(hf_dir)
    config, params = _load(hf_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead.pid, live.pid):
            (tmp_path / f"export.tmp-{pid}").mkdir()
            (tmp_path / f"export.tmp-{pid}" / "model.safetensors").write_bytes(b"partial")
        export_hf(params, config, tmp_path / "export")
        assert not (tmp_path / f"export.tmp-{dead.pid}").exists()  # a killed run's leftover
        assert (tmp_path / f"export.tmp-{live.pid}").exists()      # a running writer's
        assert (tmp_path / "export" / "config.json").exists()
    finally:
        live.kill()
