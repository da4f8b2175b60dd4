"""Token-level losses over the vocabulary, computed in sequence chunks.

Logits for a whole long sequence ([seq, vocab] at 64K x 152K) never exist at once: a scan walks
the sequence in chunks, and each chunk's body is rematerialised in the backward pass, so only
one chunk of logits is alive at a time in either direction.

Every recipe of PAPER.md's lens maximises E[w(s, a) log pi(a | s)]; the objective says what w
is and how a target token's loss is formed from its log-prob l_t = log pi_theta(a_t | s_t)
(m_t the loss mask, w_t the per-token `loss_weights`, o_t the sampling log-prob `old_logprobs`):

- "one" (SFT, rejection-sampling SFT, DAgger, AggreVaTe): cross-entropy, sum_t m_t (-l_t).
- "reverse_kl" (on-policy distillation): the policy-gradient form of the per-token reverse KL
  to the teacher on the student's own tokens, sum_t m_t w_t (-l_t) with the fixed advantage
  w_t = log pi_teacher(a_t) - log pi_sampler(a_t) (no gradient flows through w). Its gradient
  is sum_t m_t (log pi_T - log pi_S)(a_t) grad log pi_theta(a_t), a per-token (undiscounted,
  one-step) estimate of -grad KL(pi_theta || pi_T) at theta = the sampler's weights.
- "group_advantage" (GRPO): PPO's clipped surrogate per token with the episode's group-normalised
  advantage A_t = w_t and ratio r_t = exp(l_t - o_t):
  -sum_t m_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t).

The on-policy objectives compare l_t with log-probs the sampler recorded. A sampler that only
samples ids below a vocab_limit (the local JAX sampler, when the model's embedding is padded past
the tokenizer) normalises over those ids; vocab_limit > 0 makes l_t do the same, or the
ratio of an untrained padded model would start near len(tokenizer) / vocab_size instead of 1.
Weight one never uses it (its cross-entropy is what it always was).

All return sums, not means: the caller divides by the number of target tokens of the whole
(accumulated, all-device) batch, the same normaliser for every objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dagger_jax.names import check_weight

Array = jax.Array

# The GRPO log-ratio is clamped before exp: a token the sampler found very unlikely and the
# current policy does not (or padding with an old log-prob of 0) must not overflow to inf,
# which would turn 0 * inf into NaN. e^20 is far past any clip range, so in practice nothing
# that the objective uses is changed.
MAX_LOG_RATIO = 20.0


def chunked_token_loss(hidden: Array, w_out: Array, targets: Array, loss_mask: Array,
                       chunk_size: int, *, objective: str = "one",
                       loss_weights: Array | None = None, old_logprobs: Array | None = None,
                       clip_eps: float = 0.2, vocab_limit: int = 0,
                       seq_shards: int = 1) -> dict[str, Array]:
    """The objective's sums over one micro-batch (module doc), walking the sequence in chunks.

    seq_shards: how many ways the mesh splits each row's tokens (its `sequence` axis). Each
    scan step then takes one chunk from every shard at once, so the scan never walks across a
    split axis (which would gather every row whole on each device).

    Returns {"loss": what is differentiated, "count": sum of the mask, "correct": masked argmax
    hits, "nll": masked NLL} and per objective: reverse_kl "weight" (sum m w: minus it over the
    count estimates the reverse KL per token); group_advantage "ratio" (sum m r) and "clipped"
    (target tokens whose clipped term is the smaller: they give no gradient). Only "loss"
    carries a gradient.
    """
    check_weight(objective, "train objective")
    if objective != "one" and loss_weights is None:
        raise ValueError(f"objective {objective!r} needs loss_weights")
    if objective == "group_advantage" and old_logprobs is None:
        raise ValueError("objective 'group_advantage' needs old_logprobs")
    batch, seq, width = hidden.shape
    if seq % seq_shards:
        raise ValueError(f"rows of {seq} tokens cannot be split over {seq_shards} sequence shards")
    local = seq // seq_shards
    chunk = min(chunk_size, local)
    pad = (-local) % chunk
    mask = loss_mask.astype(jnp.float32)
    # The per-token extras ride along the scan next to the targets (pads carry mask 0).
    extras = []
    if objective == "reverse_kl":
        # Folded into the mask: m * w is exactly m where w == 1, so all-ones weights give the
        # cross-entropy to the bit.
        extras = [mask * jax.lax.stop_gradient(loss_weights.astype(jnp.float32))]
    elif objective == "group_advantage":
        extras = [jax.lax.stop_gradient(loss_weights.astype(jnp.float32)),
                  jax.lax.stop_gradient(old_logprobs.astype(jnp.float32))]
    n = (local + pad) // chunk

    def to_chunks(x: Array) -> Array:
        """[batch, seq, ...] -> [chunks, batch, shards, chunk, ...]: the scan walks each shard's
        tokens (padded at each shard's end; pads carry mask 0)."""
        x = x.reshape(batch, seq_shards, local, *x.shape[2:])
        if pad:
            x = jnp.pad(x, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 3))
        return jnp.moveaxis(x.reshape(batch, seq_shards, n, chunk, *x.shape[3:]), 2, 0)

    w_out = w_out.astype(hidden.dtype)

    @jax.checkpoint
    def chunk_sums(h: Array, t: Array, m: Array, *more: Array) -> tuple[Array, ...]:
        logits = jnp.einsum("...h,hv->...v", h, w_out, preferred_element_type=jnp.float32)
        if objective != "one" and 0 < vocab_limit < logits.shape[-1]:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
        correct = (jnp.argmax(logits, axis=-1) == t).astype(jnp.float32)
        if objective == "one":
            return jnp.sum(nll * m), jnp.sum(correct * m)
        # Off the mask a target may be anything (an id past vocab_limit: nll inf); 0 * inf
        # would be NaN, so those positions are zeroed outright.
        nll = jnp.where(m > 0, nll, 0.0)
        nll_sum = jax.lax.stop_gradient(jnp.sum(nll * m))
        if objective == "reverse_kl":
            (mw,) = more
            return (jnp.sum(nll * mw), jnp.sum(correct * m), nll_sum,
                    jax.lax.stop_gradient(jnp.sum(mw)))
        advantage, old = more
        log_ratio = jnp.clip(-nll - old, -MAX_LOG_RATIO, MAX_LOG_RATIO)
        ratio = jnp.exp(log_ratio)
        unclipped = ratio * advantage
        clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage
        surrogate = jnp.where(m > 0, jnp.minimum(unclipped, clipped), 0.0)
        hits = jax.lax.stop_gradient(jnp.sum(m * (clipped < unclipped)))
        return (-jnp.sum(surrogate * m), jnp.sum(correct * m), nll_sum,
                jax.lax.stop_gradient(jnp.sum(m * ratio)), hits)

    def body(carry, xs):
        sums = chunk_sums(*xs)
        return tuple(c + s for c, s in zip(carry, sums)), None

    size = {"one": 2, "reverse_kl": 4, "group_advantage": 5}[objective]
    zero = jnp.zeros((), jnp.float32)
    totals, _ = jax.lax.scan(
        body, (zero,) * size,
        (to_chunks(hidden), to_chunks(targets), to_chunks(mask), *map(to_chunks, extras)))
    out = {"loss": totals[0], "count": jnp.sum(mask), "correct": jax.lax.stop_gradient(totals[1])}
    if objective == "one":
        out["nll"] = jax.lax.stop_gradient(totals[0])
    else:
        out["nll"] = totals[2]
    if objective == "reverse_kl":
        out["weight"] = totals[3]
    if objective == "group_advantage":
        out["ratio"], out["clipped"] = totals[3], totals[4]
    return out
