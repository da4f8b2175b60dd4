"""The train state and one optimizer step (with gradient accumulation), jitted onto a mesh."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dagger_jax.models.qwen3 import Qwen3ForCausalLM, output_embedding
from dagger_jax.models.sharding import batch_sharding, match_partition_rules, named_shardings
from dagger_jax.names import check_weight
from dagger_jax.train.loss import chunked_token_loss
from dagger_jax.train.optimizer import current_learning_rate

BATCH_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")
# What each objective reads besides BATCH_KEYS (weight one needs nothing more, so its batches,
# and its step, are what they were before the other objectives existed).
OBJECTIVE_KEYS = {"one": (), "reverse_kl": ("loss_weights",),
                  "group_advantage": ("loss_weights", "old_logprobs")}


def batch_keys(objective: str = "one") -> tuple[str, ...]:
    """The batch arrays the train step of `objective` takes."""
    check_weight(objective, "train objective")
    return BATCH_KEYS + OBJECTIVE_KEYS[objective]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def objective_sums(model: Qwen3ForCausalLM, params: Any, batch: dict, loss_chunk: int,
                   objective: str = "one", clip_eps: float = 0.2,
                   vocab_limit: int = 0, seq_shards: int = 1) -> dict[str, Any]:
    """The objective's sums over one micro-batch (train/loss.chunked_token_loss)."""
    hidden = model.apply({"params": params}, batch["input_ids"], batch["positions"],
                         batch["segment_ids"], return_hidden=True)
    w_out = output_embedding(params, model.config)
    return chunked_token_loss(hidden, w_out, batch["target_ids"], batch["loss_mask"], loss_chunk,
                              objective=objective, loss_weights=batch.get("loss_weights"),
                              old_logprobs=batch.get("old_logprobs"), clip_eps=clip_eps,
                              vocab_limit=vocab_limit, seq_shards=seq_shards)


def make_train_step(model: Qwen3ForCausalLM, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int, loss_chunk: int,
                    objective: str = "one", clip_eps: float = 0.2,
                    vocab_limit: int = 0, loss_tokens: float = 0.0,
                    seq_shards: int = 1) -> Callable:
    """Returns step(state, batch) -> (state, metrics); batch holds batch_keys(objective).

    The loss is normalised per target token over the whole global batch, for every objective
    (train/loss.py): the per-token loss of every masked-in target token of every example
    (across all accumulation micro-batches and all devices) is summed, then divided by the
    number of such tokens. Long examples therefore weigh in proportion to their target tokens,
    and accumulating k micro-batches gives exactly the update of one k-times larger batch.
    - one: the mean NLL of the label tokens (today's cross-entropy).
    - reverse_kl: sum_t m_t w_t NLL_t / sum_t m_t, w_t = log pi_teacher - log pi_sampler of the
      student's token t (a fixed advantage): the mean over the student's sampled tokens.
    - group_advantage: -sum_t m_t min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t) / sum_t m_t, the
      token mean of GRPO's clipped surrogate (tokens of zero-advantage groups count too).
    Metrics: loss (that quantity), accuracy, target_tokens, grad_norm, param_norm, lr; the
    on-policy objectives add nll (the mean NLL of the trained tokens) and reverse_kl (the mean
    of log pi_sampler - log pi_teacher over the scored tokens: a per-token reverse-KL estimate)
    or ratio (mean r_t) and clip_fraction (tokens whose clipped term is the smaller).
    vocab_limit: the on-policy objectives' log-probs over ids below it only (train/loss.py).
    seq_shards: the mesh's sequence axis (the loss walks each shard's tokens, train/loss.py).
    loss_tokens > 0: the gradient is the summed loss over that fixed number of tokens instead
    of over the batch's own target count, so a batch holding fewer targets (per-turn examples,
    short labels) moves the weights proportionally less, and what one epoch does to the weights
    no longer depends on how the examples were cut into rows. The logged loss stays the mean
    per target token either way.
    """
    check_weight(objective, "train objective")
    if objective == "group_advantage" and not 0.0 < clip_eps < 1.0:
        raise ValueError(f"train.clip_eps must be in (0, 1), got {clip_eps}")
    if loss_tokens < 0:
        raise ValueError(f"train.loss_tokens must be >= 0 (0: each batch's own target count), "
                         f"got {loss_tokens}")

    def grads_of(params, micro):
        def loss_fn(p):
            sums = objective_sums(model, p, micro, loss_chunk, objective, clip_eps, vocab_limit,
                                  seq_shards)
            loss = sums.pop("loss")
            return loss, sums
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, {"loss": loss, **sums}

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        if grad_accum == 1:
            grads, sums = grads_of(state.params, batch)
        else:
            # [accum * micro, T] -> [accum, micro, T] keeping each micro-batch spread over all
            # devices (rows are sharded along the leading axis).
            split = lambda x: x.reshape(-1, grad_accum, *x.shape[1:]).swapaxes(0, 1)  # noqa: E731
            micros = jax.tree_util.tree_map(split, batch)
            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            first = jax.tree_util.tree_map(lambda x: x[0], micros)
            zero_sums = jax.tree_util.tree_map(
                lambda x: jnp.zeros(x.shape, x.dtype),
                jax.eval_shape(lambda: grads_of(state.params, first)[1]))

            def accumulate(carry, micro):
                g, s = grads_of(state.params, micro)
                acc_g, acc_s = carry
                return (jax.tree_util.tree_map(jnp.add, acc_g, g),
                        jax.tree_util.tree_map(jnp.add, acc_s, s)), None

            (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums), micros)
        count = sums["count"]
        denominator = jnp.maximum(count, 1.0)
        grad_denominator = denominator if loss_tokens == 0 else jnp.float32(loss_tokens)
        grads = jax.tree_util.tree_map(lambda g: g / grad_denominator, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": sums["loss"] / denominator,
            "accuracy": sums["correct"] / denominator,
            "target_tokens": count,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "lr": current_learning_rate(state.opt_state, schedule, state.step),
        }
        if objective != "one":
            metrics["nll"] = sums["nll"] / denominator
        if objective == "reverse_kl":
            metrics["reverse_kl"] = -sums["weight"] / denominator
        if objective == "group_advantage":
            metrics["ratio"] = sums["ratio"] / denominator
            metrics["clip_fraction"] = sums["clipped"] / denominator
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def state_shardings(mesh: Mesh, rules, abstract_state: TrainState) -> TrainState:
    """NamedShardings for every leaf of the train state, from the partition rules."""
    return named_shardings(mesh, match_partition_rules(rules, abstract_state, mesh))


def jit_train_step(step_fn: Callable, mesh: Mesh, shardings: TrainState,
                   keys: tuple[str, ...] = BATCH_KEYS) -> Callable:
    """The step under jit: state donated and kept in place, batch (the arrays `keys`, see
    batch_keys) split as models/sharding.batch_sharding says: rows over (data, fsdp), tokens
    over sequence."""
    batch_shardings = {k: batch_sharding(mesh) for k in keys}
    replicated = NamedSharding(mesh, P())
    return jax.jit(step_fn, in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))


def jit_init_state(optimizer: optax.GradientTransformation, shardings: TrainState) -> Callable:
    """init(params) -> TrainState at step 0, created directly with its shardings."""
    def init(params):
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    return jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)
