"""The Pallas splash attention path (config.attention_impl=splash) against the XLA reference, in
Pallas interpret mode on CPU: packed segments with padding, grouped-query heads, forward and
backward, on one device and split over a (data, fsdp, sequence, tensor) mesh; and inside the
model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dagger_jax.models.attention import AttentionSpec, causal_attention, splash_attention
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.qwen3 import Qwen3ForCausalLM, init_params
from dagger_jax.models.sharding import make_mesh
from dagger_jax.train.settings import TrainSettings

ROWS, SEQ, HEADS, KV_HEADS, HEAD_DIM = 2, 256, 4, 2, 128  # two kernel blocks of 128 per row


@pytest.fixture(scope="module")
def qkv_segments():
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (ROWS, SEQ, HEADS, HEAD_DIM))
    k = jax.random.normal(keys[1], (ROWS, SEQ, KV_HEADS, HEAD_DIM))
    v = jax.random.normal(keys[2], (ROWS, SEQ, KV_HEADS, HEAD_DIM))
    # Row 0: two examples packed, the second starting inside the first kernel block; row 1: one
    # example and padding (segment 0) across the block boundary.
    segments = np.ones((ROWS, SEQ), np.int32)
    segments[0, 100:] = 2
    segments[1, 200:] = 0
    return q, k, v, jnp.asarray(segments)


def squared_output_grads(attend, q, k, v):
    return jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) ** 2), argnums=(0, 1, 2))(q, k, v)


def test_splash_equals_the_reference_forward_and_backward(qkv_segments):
    q, k, v, segments = qkv_segments
    reference = causal_attention(q, k, v, segments)
    splash = splash_attention(q, k, v, segments, interpret=True)
    np.testing.assert_allclose(splash, reference, atol=2e-5)
    # The example starting at token 100 sees nothing of the one before it.
    alone = causal_attention(q[:1, 100:], k[:1, 100:], v[:1, 100:], segments[:1, 100:])
    np.testing.assert_allclose(splash[:1, 100:], alone, atol=2e-5)
    grads_reference = squared_output_grads(lambda *x: causal_attention(*x, segments), q, k, v)
    grads_splash = squared_output_grads(lambda *x: splash_attention(*x, segments, interpret=True),
                                        q, k, v)
    for name, got, want in zip("qkv", grads_splash, grads_reference):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


def test_splash_split_over_rows_tokens_and_heads_equals_the_reference(qkv_segments):
    """Rows over fsdp, each row's queries over sequence (keys and values gathered; row 0's
    second example starts in the first shard and runs into the second), kv heads over tensor."""
    q, k, v, segments = qkv_segments
    mesh = make_mesh((1, 2, 2, 2))

    def sharded(*x):
        return splash_attention(*x, segments, mesh=mesh, interpret=True)
    np.testing.assert_allclose(jax.jit(sharded)(q, k, v), causal_attention(q, k, v, segments),
                               atol=2e-5)
    grads_reference = squared_output_grads(lambda *x: causal_attention(*x, segments), q, k, v)
    grads_sharded = jax.jit(lambda *x: squared_output_grads(sharded, *x))(q, k, v)
    for name, got, want in zip("qkv", grads_sharded, grads_reference):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")
    with pytest.raises(ValueError, match=r"multiple of 128.*rows of 256 tokens over 4 sequence"):
        splash_attention(q, k, v, segments, mesh=make_mesh((1, 1, 4, 1), jax.devices()[:4]),
                         interpret=True)


def test_the_model_with_splash_attention_gives_the_xla_logits():
    config = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=HEAD_DIM,
                         max_position_embeddings=SEQ, tie_word_embeddings=True)
    params = init_params(config, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (ROWS, SEQ), 0, config.vocab_size)
    segments = jnp.asarray(np.r_[np.ones(150), np.full(SEQ - 150, 2)].astype(np.int32))[None]
    segments = jnp.broadcast_to(segments, (ROWS, SEQ))
    positions = jnp.where(segments == 1, jnp.arange(SEQ), jnp.arange(SEQ) - 150)

    def logits(spec):
        return Qwen3ForCausalLM(config, attention=spec).apply({"params": params}, tokens,
                                                              positions, segments)
    np.testing.assert_allclose(logits(AttentionSpec("splash", interpret=True)),
                               logits(AttentionSpec()), atol=1e-4)


def test_splash_settings_are_checked_at_config_time():
    with pytest.raises(ValueError, match="attention_impl='flash'.*choose from"):
        TrainSettings(attention_impl="flash")
    with pytest.raises(ValueError, match=r"seq_len=300: splash attention needs rows of a multiple "
                                         r"of 128"):
        TrainSettings(attention_impl="splash", seq_len=300)
    assert TrainSettings(attention_impl="splash", seq_len=65_536).seq_len == 65_536
