"""Dense Qwen3 decoder in Flax (linen), numerically the model `transformers` calls Qwen3ForCausalLM.

Layers are stacked with `nn.scan` (one compiled layer body; every per-layer parameter carries a
leading [num_layers] axis), which keeps compile time flat in depth and lets remat wrap the body.
Sequences may be packed: `segment_ids` (0 = padding) confine attention to one example and
`positions` restart at 0 in each example.

One forward pass serves training and decoding: given a `KVCache`, each layer writes its keys
and values to the cache slots of the tokens' positions and attends over the cache instead
(models/sampling.py decodes with it). The cache rides in the layer scan's carry and each layer
writes its own slots in place: as scanned inputs and outputs it would be re-stacked whole on
every decode step, a cost that grows with the cache length (benchmarks/decode.py).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dagger_jax.models.attention import AttentionSpec, cached_attention
from dagger_jax.models.config import Qwen3Config

Array = jax.Array

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # As dots_no_batch, the saved matmul outputs kept in host memory (TPU: pinned host),
    # brought back for the backward pass: device memory of "full" for the recompute of
    # "dots_no_batch", paid in host transfers.
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}

_DENSE_INIT = nn.initializers.normal(stddev=0.02)


class KVCache(NamedTuple):
    """Keys and values per layer: [layers, batch, slots, kv_heads, head_dim]; slot p holds the
    token at position p of its row."""

    k: Array
    v: Array


def _dtype(name: str | Any) -> Any:
    return jnp.dtype(name) if isinstance(name, str) else name


class RMSNorm(nn.Module):
    """RMSNorm with the statistics in fp32, as transformers' Qwen3RMSNorm does."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def rope_frequencies(config: Qwen3Config) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim / 2] and the cos/sin scale: plain RoPE, or YaRN (the
    pretrained frequencies kept where a dimension turns often within the original window,
    divided by `factor` where it turns rarely, a linear ramp between; cos/sin scaled up)."""
    dim, theta = config.head_dim, config.rope_theta
    plain = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    yarn = config.rope_scaling
    if yarn is None:
        return plain.astype(np.float32), 1.0

    def dimension_of(rotations: float) -> float:  # the dim index turning `rotations` times
        window = yarn.original_max_position_embeddings
        return dim * math.log(window / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dimension_of(yarn.beta_fast), dimension_of(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low if high != low else 0.001), 0, 1)
    inv_freq = plain / yarn.factor * ramp + plain * (1 - ramp)
    scale = yarn.attention_factor
    if scale is None:
        scale = 0.1 * math.log(yarn.factor) + 1.0 if yarn.factor > 1 else 1.0
    return inv_freq.astype(np.float32), float(scale)


def rope_tables(positions: Array, config: Qwen3Config) -> tuple[Array, Array]:
    """cos/sin tables [batch, seq, head_dim] for the half-split ("rotate_half") RoPE layout."""
    inv_freq, scale = rope_frequencies(config)
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates x [batch, seq, heads, head_dim] by the tables, computing in fp32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


class Attention(nn.Module):
    config: Qwen3Config
    dtype: Any
    param_dtype: Any
    attention: AttentionSpec = AttentionSpec()

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, segment_ids: Array, positions: Array,
                 cache: KVCache | None, layer: Array) -> tuple[Array, KVCache | None]:
        cfg = self.config
        d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        dense = lambda features, name: nn.Dense(  # noqa: E731
            features, use_bias=cfg.attention_bias, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=_DENSE_INIT, name=name)
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name=name)  # noqa: E731
        batch, seq, _ = x.shape
        # Qwen3 normalises each head (q_norm / k_norm over head_dim) before RoPE.
        q = norm("q_norm")(dense(hq * d, "q_proj")(x).reshape(batch, seq, hq, d))
        k = norm("k_norm")(dense(hkv * d, "k_proj")(x).reshape(batch, seq, hkv, d))
        v = dense(hkv * d, "v_proj")(x).reshape(batch, seq, hkv, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is None:
            out = self.attention(q, k, v, segment_ids)
        else:
            # Positions past the cache (a short row's padding after a cached prefix) write nowhere.
            rows = jnp.arange(batch)[:, None]
            cache = KVCache(cache.k.at[layer, rows, positions].set(k.astype(cache.k.dtype), mode="drop"),
                            cache.v.at[layer, rows, positions].set(v.astype(cache.v.dtype), mode="drop"))
            out = cached_attention(q, cache.k[layer], cache.v[layer], positions)
        return dense(cfg.hidden_size, "o_proj")(out), cache


class MLP(nn.Module):
    config: Qwen3Config
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dense = lambda features, name: nn.Dense(  # noqa: E731
            features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=_DENSE_INIT, name=name)
        gate = dense(cfg.intermediate_size, "gate_proj")(x)
        up = dense(cfg.intermediate_size, "up_proj")(x)
        return dense(cfg.hidden_size, "down_proj")(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
    config: Qwen3Config
    dtype: Any
    param_dtype: Any
    attention: AttentionSpec = AttentionSpec()

    @nn.compact
    def __call__(self, carry: tuple[Array, KVCache | None], cos: Array, sin: Array,
                 segment_ids: Array, positions: Array, layer: Array
                 ) -> tuple[tuple[Array, KVCache | None], None]:
        x, cache = carry
        eps = self.config.rms_norm_eps
        h = RMSNorm(eps, self.dtype, self.param_dtype, name="input_layernorm")(x)
        attention = Attention(self.config, self.dtype, self.param_dtype, self.attention,
                              name="self_attn")
        out, cache = attention(h, cos, sin, segment_ids, positions, cache, layer)
        x = x + out
        h = RMSNorm(eps, self.dtype, self.param_dtype, name="post_attention_layernorm")(x)
        x = x + MLP(self.config, self.dtype, self.param_dtype, name="mlp")(h)
        return (x, cache), None


class Qwen3ForCausalLM(nn.Module):
    """The student. `__call__` returns logits, or final hidden states for the chunked loss; with a
    `cache`, (that, the cache with these tokens' keys and values written)."""

    config: Qwen3Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"
    attention: AttentionSpec = AttentionSpec()  # how training attention runs (models/attention.py)
    # Training under a mesh: where [rows, tokens, ...] activations live (sharding.batch_sharding).
    # The embedding table is split along its hidden dimension, so its lookup comes out split
    # the same way; left to itself XLA moves that to rows x tokens through a replicated copy
    # of the whole batch's activations (two of 8 GiB per chip for 16 x 64K x 4096 in bf16).
    activation_sharding: Any = None

    @nn.compact
    def __call__(self, input_ids: Array, positions: Array | None = None,
                 segment_ids: Array | None = None, return_hidden: bool = False,
                 cache: KVCache | None = None) -> Array | tuple[Array, KVCache]:
        cfg = self.config
        dtype, param_dtype = _dtype(self.dtype), _dtype(self.param_dtype)
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat policy {self.remat!r} unknown; choose from {sorted(REMAT_POLICIES)}")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(input_ids)

        embedding = self.param("embed_tokens", _DENSE_INIT, (cfg.vocab_size, cfg.hidden_size), param_dtype)
        x = jnp.take(embedding, input_ids, axis=0).astype(dtype)
        if self.activation_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, self.activation_sharding)
        cos, sin = rope_tables(positions, cfg)

        layer = DecoderLayer
        if self.remat != "none":
            layer = nn.remat(layer, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
                        length=cfg.num_hidden_layers)
        layers = jnp.arange(cfg.num_hidden_layers)
        (x, cache), _ = stack(cfg, dtype, param_dtype, self.attention, name="layers")(
            (x, cache), cos, sin, segment_ids, positions, layers)
        x = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="norm")(x)

        if not cfg.tie_word_embeddings:
            self.param("lm_head", _DENSE_INIT, (cfg.hidden_size, cfg.vocab_size), param_dtype)
        if not return_hidden:
            w_out = output_embedding(self.variables["params"], cfg).astype(dtype)
            x = jnp.einsum("bth,hv->btv", x, w_out, preferred_element_type=jnp.float32)
        return x if cache is None else (x, cache)


def output_embedding(params: Any, config: Qwen3Config) -> Array:
    """The [hidden, vocab] unembedding matrix: the token embedding itself when tied."""
    if config.tie_word_embeddings:
        return params["embed_tokens"].T
    return params["lm_head"]


def init_params(config: Qwen3Config, rng: Array, param_dtype: Any = jnp.float32) -> Any:
    """Random parameters (normal(0.02) weights, unit norms), as transformers initialises them."""
    model = Qwen3ForCausalLM(config, param_dtype=param_dtype)
    return model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"]


def params_shape(config: Qwen3Config, param_dtype: Any = jnp.float32) -> Any:
    """The params tree as ShapeDtypeStructs, without allocating anything."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0), param_dtype))
