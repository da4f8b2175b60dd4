"""Token-level cross-entropy over the vocabulary, computed in sequence chunks.

Logits for a whole long sequence ([seq, vocab] at 64K x 152K) never exist at once: a scan walks
the sequence in chunks, and each chunk's body is rematerialised in the backward pass, so only
one chunk of logits is alive at a time in either direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def chunked_cross_entropy(hidden: Array, w_out: Array, targets: Array, loss_mask: Array,
                          chunk_size: int) -> tuple[Array, Array, Array]:
    """Sums of masked token NLL, of mask weights, and of correct argmax predictions.

    hidden [batch, seq, h] (final-normed), w_out [h, vocab], targets / loss_mask [batch, seq].
    Returns sums, not means: the caller normalises over the whole (accumulated) batch.
    """
    batch, seq, width = hidden.shape
    chunk = min(chunk_size, seq)
    pad = (-seq) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        loss_mask = jnp.pad(loss_mask, ((0, 0), (0, pad)))
    n = (seq + pad) // chunk
    # [chunks, batch, chunk, ...] so the scan walks the sequence axis.
    to_chunks = lambda x: x.reshape(batch, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731
    w_out = w_out.astype(hidden.dtype)

    @jax.checkpoint
    def chunk_loss(h: Array, t: Array, m: Array) -> tuple[Array, Array]:
        logits = jnp.einsum("bch,hv->bcv", h, w_out, preferred_element_type=jnp.float32)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
        correct = (jnp.argmax(logits, axis=-1) == t).astype(jnp.float32)
        return jnp.sum(nll * m), jnp.sum(correct * m)

    def body(carry, xs):
        nll, correct = chunk_loss(*xs)
        return (carry[0] + nll, carry[1] + correct), None

    mask = loss_mask.astype(jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    (nll_sum, correct_sum), _ = jax.lax.scan(
        body, (zero, zero), (to_chunks(hidden), to_chunks(targets), to_chunks(mask)))
    return nll_sum, jnp.sum(mask), jax.lax.stop_gradient(correct_sum)
