"""Causal grouped-query attention over packed sequences: dense, or in causal query blocks; and
over a KV cache when decoding.

The blocked form walks query blocks and gives block i only the keys up to its own end, so the
masked upper triangle is never computed (about half the work of the dense form) and each
block's scores stay small enough to live in cache. Both give the same numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _attend(q: Array, k: Array, v: Array, q_positions: Array, q_segments: Array,
            k_segments: Array, dtype) -> Array:
    """q [b, tq, kv, g, d] against k, v [b, tk, kv, d]; q_positions index into the keys."""
    d = q.shape[-1]
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    causal = q_positions[:, None] >= jnp.arange(k.shape[1])[None, :]
    # Padding (segment 0) attends to padding, so no row is empty and softmax never sees all -inf.
    same = q_segments[:, :, None] == k_segments[:, None, :]
    mask = (causal[None] & same)[:, None, None]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bkgqs,bskd->bqkgd", probs, v)


def causal_attention(q: Array, k: Array, v: Array, segment_ids: Array, block: int = 0) -> Array:
    """q [b, t, heads, d], k / v [b, t, kv_heads, d] -> [b, t, heads * d].

    `block` > 0 and dividing t selects the blocked form with that many queries per block.
    """
    batch, seq, heads, d = q.shape
    kv = k.shape[2]
    # Grouped-query attention without repeating k/v: query heads are [kv_head, group].
    q = q.reshape(batch, seq, kv, heads // kv, d)
    if block <= 0 or block >= seq or seq % block:
        out = _attend(q, k, v, jnp.arange(seq), segment_ids, segment_ids, q.dtype)
        return out.reshape(batch, seq, heads * d)
    outs = []
    for start in range(0, seq, block):
        end = start + block
        outs.append(_attend(q[:, start:end], k[:, :end], v[:, :end], jnp.arange(start, end),
                            segment_ids[:, start:end], segment_ids[:, :end], q.dtype))
    return jnp.concatenate(outs, axis=1).reshape(batch, seq, heads * d)


def cached_attention(q: Array, k_cache: Array, v_cache: Array, positions: Array) -> Array:
    """q [b, t, heads, d] over cache slots k / v [b, slots, kv_heads, d] -> [b, t, heads * d].

    Slot p holds the token at position p of the row, so a query at position `positions[b, t]`
    sees exactly the slots <= it (a row never sees another row's slots or its own padding)."""
    b, t, heads, d = q.shape
    kv = k_cache.shape[2]
    q = q.reshape(b, t, kv, heads // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k_cache,
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    visible = jnp.arange(k_cache.shape[1])[None, None, :] <= positions[:, :, None]
    scores = jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v_cache).reshape(b, t, heads * d)
