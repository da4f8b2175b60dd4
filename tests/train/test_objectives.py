"""The recipes' per-token objectives (train/loss.py): weight one is today's cross-entropy to the
bit, OPD's gradient is the policy-gradient surrogate's, GRPO's clipped surrogate is PPO's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.qwen3 import Qwen3ForCausalLM, init_params
from dagger_jax.models.sharding import QWEN3_RULES, make_mesh
from dagger_jax.train.loss import chunked_token_loss
from dagger_jax.train.optimizer import make_optimizer
from dagger_jax.train.train_step import (TrainState, batch_keys, jit_init_state, jit_train_step,
                                         make_train_step, objective_sums, state_shardings)

CONFIG = Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=8)
EPS = 0.2


def todays_cross_entropy(hidden, w_out, targets, loss_mask, chunk_size):
    """train/loss.py's cross-entropy as it was before the weighted objectives, verbatim."""
    batch, seq, width = hidden.shape
    chunk = min(chunk_size, seq)
    pad = (-seq) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        loss_mask = jnp.pad(loss_mask, ((0, 0), (0, pad)))
    n = (seq + pad) // chunk
    to_chunks = lambda x: x.reshape(batch, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731
    w_out = w_out.astype(hidden.dtype)

    @jax.checkpoint
    def chunk_loss(h, t, m):
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


def problem(seed=0, batch=2, seq=12, width=8, vocab=16):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(batch, seq, width)).astype(np.float32)
    w_out = rng.normal(size=(width, vocab)).astype(np.float32)
    targets = rng.integers(0, vocab, size=(batch, seq)).astype(np.int32)
    mask = (rng.random((batch, seq)) < 0.7).astype(np.float32)
    weights = rng.uniform(-2, 2, size=(batch, seq)).astype(np.float32) * mask
    return hidden, w_out, targets, mask, weights


def log_softmax64(hidden, w_out):
    logits = np.einsum("bsh,hv->bsv", hidden.astype(np.float64), w_out.astype(np.float64))
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True)), logits


def test_weight_one_is_todays_cross_entropy_and_all_ones_weights_change_nothing():
    hidden, w_out, targets, mask, _ = problem()
    for chunk in (5, 12):  # 5 leaves a padded tail
        old = todays_cross_entropy(hidden, w_out, targets, mask, chunk)
        sums = chunked_token_loss(hidden, w_out, targets, mask, chunk)
        new = sums["loss"], sums["count"], sums["correct"]
        ones = chunked_token_loss(hidden, w_out, targets, mask, chunk, objective="reverse_kl",
                                  loss_weights=np.ones_like(mask))
        for a, b in zip(old, new):
            np.testing.assert_array_equal(a, b)  # bit for bit
        np.testing.assert_array_equal(ones["loss"], old[0])
        np.testing.assert_array_equal(ones["count"], old[1])
        grad_old = jax.grad(lambda h, w: todays_cross_entropy(h, w, targets, mask, chunk)[0],
                            argnums=(0, 1))(hidden, w_out)
        grad_ones = jax.grad(lambda h, w: chunked_token_loss(
            h, w, targets, mask, chunk, objective="reverse_kl",
            loss_weights=np.ones_like(mask))["loss"], argnums=(0, 1))(hidden, w_out)
        for a, b in zip(grad_old, grad_ones):
            np.testing.assert_array_equal(a, b)


def test_opd_gradient_is_the_analytic_policy_gradient():
    """d/dz of sum_t m_t w_t (-log softmax(z_t)[a_t]) is m_t w_t (softmax(z_t) - onehot(a_t)):
    with z = h W, the gradient is G W^T for h and h^T G for W (float64, by hand)."""
    hidden, w_out, targets, mask, weights = problem(seed=1)
    logp, _ = log_softmax64(hidden, w_out)
    onehot = np.eye(w_out.shape[1])[targets]
    g = (mask * weights)[..., None] * (np.exp(logp) - onehot)
    want_h = np.einsum("bsv,hv->bsh", g, w_out.astype(np.float64))
    want_w = np.einsum("bsh,bsv->hv", hidden.astype(np.float64), g)
    want_loss = -np.sum(mask * weights * np.take_along_axis(logp, targets[..., None], -1)[..., 0])

    def loss(h, w):
        return chunked_token_loss(h, w, targets, mask, 5, objective="reverse_kl",
                                  loss_weights=weights)["loss"]

    value, (grad_h, grad_w) = jax.value_and_grad(loss, argnums=(0, 1))(hidden, w_out)
    np.testing.assert_allclose(value, want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad_h, want_h, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_w, want_w, rtol=1e-4, atol=1e-6)


def test_grpo_clipped_objective_matches_numpy_inside_and_outside_the_clip_range():
    hidden, w_out, targets, mask, _ = problem(seed=2, batch=2, seq=10)
    logp, _ = log_softmax64(hidden, w_out)
    target_logp = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    # Ratios on both sides of [1 - eps, 1 + eps] and inside it, advantages of both signs.
    ratios = np.tile([0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.6, 3.0, 0.7, 1.19], (2, 1))
    advantages = np.where(np.arange(10) % 2 == 0, 1.0, -1.0)[None].repeat(2, 0)
    advantages[1] *= -0.5
    mask = np.ones_like(mask)
    mask[1, -2:] = 0.0  # padding: must count for nothing
    old = (target_logp - np.log(ratios)).astype(np.float32)
    surrogate = np.minimum(ratios * advantages, np.clip(ratios, 1 - EPS, 1 + EPS) * advantages)
    want = -np.sum(mask * surrogate)
    clipped = np.clip(ratios, 1 - EPS, 1 + EPS) * advantages < ratios * advantages

    def run(h, w):
        return chunked_token_loss(h, w, targets, mask, 4, objective="group_advantage",
                                  loss_weights=(advantages * mask).astype(np.float32),
                                  old_logprobs=old * mask, clip_eps=EPS)

    sums = run(hidden, w_out)
    np.testing.assert_allclose(sums["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(sums["ratio"], np.sum(mask * ratios), rtol=1e-5)
    assert sums["clipped"] == np.sum(mask * clipped) > 0
    # The gradient is that of the same surrogate written plainly over full logits.
    def plain(h, w):
        logp = jnp.take_along_axis(jax.nn.log_softmax(h @ w), targets[..., None], -1)[..., 0]
        ratio = jnp.exp(logp - old)
        return -jnp.sum(mask * jnp.minimum(ratio * advantages,
                                           jnp.clip(ratio, 1 - EPS, 1 + EPS) * advantages))

    grad_h, grad_w = jax.grad(lambda h, w: run(h, w)["loss"], argnums=(0, 1))(hidden, w_out)
    want_h, want_w = jax.grad(plain, argnums=(0, 1))(hidden, w_out)
    np.testing.assert_allclose(grad_h, want_h, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_w, want_w, rtol=1e-4, atol=1e-6)
    # Where the clipped term wins the token gives no gradient; elsewhere it does (a token's
    # hidden state feeds only its own logits).
    norms = np.linalg.norm(np.asarray(grad_h), axis=-1)
    assert np.all(norms[(mask > 0) & clipped] == 0)
    assert np.all(norms[(mask > 0) & ~clipped] > 0)
    assert np.all(norms[mask == 0] == 0)


def test_vocab_limit_normalises_the_on_policy_log_probs_as_the_sampler_does():
    """The local sampler samples ids below len(tokenizer) only and reports log-probs normalised
    over them; the on-policy objectives' log-probs must be of that same distribution."""
    hidden, w_out, targets, mask, weights = problem(seed=4)
    limit = 10
    targets = targets % limit
    logits = np.einsum("bsh,hv->bsv", hidden.astype(np.float64), w_out.astype(np.float64))
    kept = logits[..., :limit]
    lse = np.log(np.exp(kept - kept.max(-1, keepdims=True)).sum(-1)) + kept.max(-1)
    nll = lse - np.take_along_axis(kept, targets[..., None], -1)[..., 0]
    sums = chunked_token_loss(hidden, w_out, targets, mask, 5, objective="reverse_kl",
                              loss_weights=weights, vocab_limit=limit)
    np.testing.assert_allclose(sums["nll"], np.sum(mask * nll), rtol=1e-5)
    np.testing.assert_allclose(sums["loss"], np.sum(mask * weights * nll), rtol=1e-5)
    # Weight one ignores it: cross-entropy over the whole vocabulary, as always.
    one = chunked_token_loss(hidden, w_out, targets, mask, 5, vocab_limit=limit)
    np.testing.assert_array_equal(one["loss"], chunked_token_loss(hidden, w_out, targets, mask, 5)["loss"])


def plain_opd_surrogate(model, params, batch):
    """-sum_t m_t w_t log pi(a_t) over full logits, written independently of train/loss.py."""
    logits = model.apply({"params": params}, batch["input_ids"], batch["positions"],
                         batch["segment_ids"])
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                               batch["target_ids"][..., None], -1)[..., 0]
    return -jnp.sum(batch["loss_mask"] * batch["loss_weights"] * logp)


def tiny_batch(seed=0, rows=2, seq=16):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CONFIG.vocab_size, size=(rows, seq)).astype(np.int32)
    mask = (rng.random((rows, seq)) < 0.6).astype(np.float32)
    mask[:, -1] = 0.0
    return dict(input_ids=ids, target_ids=np.roll(ids, -1, axis=1),
                loss_mask=mask, segment_ids=np.ones((rows, seq), np.int32),
                positions=np.tile(np.arange(seq, dtype=np.int32), (rows, 1)),
                loss_weights=(rng.uniform(-1, 1, (rows, seq)) * mask).astype(np.float32),
                old_logprobs=(np.log(1 / CONFIG.vocab_size)
                              + rng.uniform(-0.4, 0.4, (rows, seq))).astype(np.float32) * mask)


def test_opd_model_gradients_equal_a_plain_full_logits_implementation():
    model = Qwen3ForCausalLM(CONFIG)
    params = init_params(CONFIG, jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in tiny_batch().items()}
    # Jitted: a traced model compiles faster than it dispatches op by op.
    got = jax.jit(jax.grad(lambda p: objective_sums(model, p, batch, 5, "reverse_kl")["loss"]))(params)
    want = jax.jit(jax.grad(lambda p: plain_opd_surrogate(model, p, batch)))(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7),
                           got, want)


def test_train_step_objectives_and_their_batch_keys():
    assert batch_keys("one") == ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")
    assert batch_keys("group_advantage")[-2:] == ("loss_weights", "old_logprobs")
    with pytest.raises(ValueError, match="train objective: weight 'ppo' not in"):
        batch_keys("ppo")
    model = Qwen3ForCausalLM(CONFIG)
    optimizer, schedule = make_optimizer(ml_collections.ConfigDict(dict(
        steps=4, lr=1e-2, warmup_steps=0, schedule="constant", end_lr_ratio=1.0, b1=0.9,
        b2=0.95, eps=1e-8, weight_decay=0.0, clip_grad_norm=1.0)))
    with pytest.raises(ValueError, match="train objective: weight 'ppo' not in"):
        make_train_step(model, optimizer, schedule, 1, 8, objective="ppo")
    mesh = make_mesh((1, 1, 1, 1), jax.devices()[:1])
    abstract = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)),
                              jax.eval_shape(lambda: init_params(CONFIG, jax.random.key(0))))
    shardings = state_shardings(mesh, QWEN3_RULES, abstract)
    batch = tiny_batch(seed=3)

    # GRPO on its own samples (old log-probs = the model's), over 2 accumulated micro-batches:
    # ratio 1, nothing clipped, the loss is -mean(A) over the whole batch's tokens. (Weight one
    # against all-ones weights is checked to the bit at the loss level above; a step compile
    # costs ~10 CPU-seconds, so only this one is built.)
    params = init_params(CONFIG, jax.random.key(0))
    logits = jax.jit(model.apply)({"params": params}, batch["input_ids"], batch["positions"],
                                  batch["segment_ids"])
    own = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)),
                             batch["target_ids"][..., None], -1)[..., 0]
    on_policy = {**batch, "old_logprobs": (own * batch["loss_mask"]).astype(np.float32)}
    state = jit_init_state(optimizer, shardings)(jax.device_put(params, shardings.params))
    step = jit_train_step(make_train_step(model, optimizer, schedule, 2, 8,
                                          objective="group_advantage", clip_eps=EPS),
                          mesh, shardings, batch_keys("group_advantage"))
    _, metrics = jax.device_get(step(state, {k: on_policy[k] for k in batch_keys("group_advantage")}))
    count = batch["loss_mask"].sum()
    assert metrics["target_tokens"] == count
    np.testing.assert_allclose(metrics["ratio"], 1.0, atol=1e-5)
    assert metrics["clip_fraction"] == 0.0
    np.testing.assert_allclose(metrics["loss"], -batch["loss_weights"].sum() / count, rtol=1e-4)
    assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
