"""Causal grouped-query attention over packed sequences: XLA's dense or causal-block form, or
the Pallas splash kernel on TPU; and over a KV cache when decoding.

The blocked form walks query blocks and gives block i only the keys up to its own end, so the
masked upper triangle is never computed (about half the work of the dense form) and each
block's scores stay small enough to live in cache. Both give the same numbers. Both still
hold a [block, T] score matrix per head: at 64K tokens that is tens of GiB per layer.

The splash kernel (jax.experimental.pallas.ops.tpu.splash_attention, the one MaxText uses)
streams key blocks through an online softmax, forward and backward, so its memory is O(T) and
it skips the key blocks the causal and segment masks leave empty. It is a TPU kernel: off TPU
it runs in Pallas interpret mode (for numerics, far slower than XLA's form). A Pallas call is
not split by XLA's sharding propagation, so under a mesh it runs per shard (shard_map): rows
over the batch axes, heads over `tensor`, queries over `sequence` (splash_attention).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Array = jax.Array
IMPLS = ("xla", "splash")
# The splash kernel's query and key block (its default); rows must be a multiple of it.
SPLASH_BLOCK = 512
SPLASH_MIN_BLOCK = 128


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """How training attention runs: config.attention_impl and config.attention_block."""
    impl: str = "xla"
    block: int = 0             # xla: queries per causal block (0: dense scores)
    mesh: Mesh | None = None   # splash: run per shard of this mesh (None: one device)
    interpret: bool = False    # splash off TPU: Pallas interpret mode

    def __post_init__(self) -> None:
        if self.impl not in IMPLS:
            raise ValueError(f"config.attention_impl={self.impl!r}: choose from {IMPLS}")

    def describe(self) -> str:
        if self.impl == "splash":
            return "pallas_splash" + ("(interpret)" if self.interpret else "")
        return f"xla_blocked(block={self.block})" if self.block else "xla_dense"

    def __call__(self, q: Array, k: Array, v: Array, segment_ids: Array) -> Array:
        if self.impl == "splash":
            return splash_attention(q, k, v, segment_ids, self.mesh, self.interpret)
        return causal_attention(q, k, v, segment_ids, self.block)


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


def splash_block(seq: int) -> int:
    """The splash kernel's block for rows of `seq` tokens; a ValueError if none fits."""
    block = min(SPLASH_BLOCK, seq)
    if seq % block or block % SPLASH_MIN_BLOCK:
        raise ValueError(f"splash attention needs rows of a multiple of {SPLASH_MIN_BLOCK} tokens "
                         f"(and of {SPLASH_BLOCK} beyond it), got {seq}")
    return block


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, mesh: Mesh | None = None,
                     interpret: bool = False) -> Array:
    """q [b, t, heads, d], k / v [b, t, kv_heads, d] -> [b, t, heads * d], causal within each
    segment (segment 0, padding, attends to padding as in the XLA form).

    Under a mesh each device runs the kernel on its rows (data, fsdp), its heads (tensor) and
    its share of the queries (sequence). Keys and values enter whole: the shard_map gathers
    them over `sequence` (with grouped-query heads they are a small fraction of the
    activations: 8 of 32 heads for Qwen3-8B), and its transpose sums their gradients back.
    That is all-gather context parallelism rather than a ring: one collective per layer that
    XLA can overlap, no hand-written send/receive schedule, and the kernel's own support for
    split queries (its mask blocks are cut per query shard, so each shard skips the key blocks
    causally after its queries)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernels, splash_attention_mask as masks)

    batch, seq, heads, d = q.shape
    head_shards = 1 if mesh is None else mesh.shape["tensor"]
    query_shards = 1 if mesh is None else mesh.shape["sequence"]
    try:  # each sequence shard's queries are whole kernel blocks
        if seq % query_shards:
            raise ValueError(f"the mesh's sequence axis ({query_shards}) must divide the rows")
        block = splash_block(seq // query_shards)
    except ValueError as e:
        raise ValueError(f"{e}; here: rows of {seq} tokens over {query_shards} sequence "
                         "shards") from None
    sizes = kernels.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                               block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                               block_q_dq=block, block_kv_dq=block)
    kernel = kernels.make_splash_mha(
        masks.MultiHeadMask([masks.CausalMask((seq, seq))] * heads), block_sizes=sizes,
        head_shards=head_shards, q_seq_shards=query_shards, interpret=interpret)

    def attend(kernel, q, k, v, q_segments, kv_segments):
        # Per shard: q [rows, heads, t / sequence, d], k / v [rows, kv_heads, t, d]. The kernel
        # leaves the softmax scale to the caller.
        def one_row(q, k, v, q_segments, kv_segments):
            return kernel(q, k, v, segment_ids=kernels.SegmentIds(q=q_segments, kv=kv_segments))
        return jax.vmap(one_row)(q * (d ** -0.5), k, v, q_segments, kv_segments)

    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    if mesh is not None:
        rows = ("data", "fsdp")
        queries, keys = P(rows, "tensor", "sequence"), P(rows, "tensor")
        kernel_spec = kernel.manual_sharding_spec(NamedSharding(mesh, P("tensor", "sequence")))
        attend = jax.shard_map(
            attend, mesh=mesh, out_specs=queries, check_vma=False,
            in_specs=(kernel_spec, queries, keys, keys, P(rows, "sequence"), P(rows)))
    out = attend(kernel, q, k, v, segment_ids, segment_ids)
    return jnp.swapaxes(out, 1, 2).reshape(batch, seq, heads * d)
