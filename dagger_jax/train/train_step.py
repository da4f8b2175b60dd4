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
from dagger_jax.train.loss import chunked_cross_entropy

BATCH_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def loss_sums(model: Qwen3ForCausalLM, params: Any, batch: dict, loss_chunk: int):
    """(NLL sum, target-token count, correct count) of one micro-batch."""
    hidden = model.apply({"params": params}, batch["input_ids"], batch["positions"],
                         batch["segment_ids"], return_hidden=True)
    w_out = output_embedding(params, model.config)
    return chunked_cross_entropy(hidden, w_out, batch["target_ids"], batch["loss_mask"], loss_chunk)


def make_train_step(model: Qwen3ForCausalLM, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int, loss_chunk: int) -> Callable:
    """Returns step(state, batch) -> (state, metrics).

    The loss is normalised per target token over the whole global batch: the NLL of every
    masked-in target token of every example (across all accumulation micro-batches and all
    devices) is summed, then divided by the number of such tokens. Long examples therefore
    weigh in proportion to their label tokens, and accumulating k micro-batches gives exactly
    the update of one k-times larger batch.
    """

    def grads_of(params, micro):
        def objective(p):
            nll, count, correct = loss_sums(model, p, micro, loss_chunk)
            return nll, (count, correct)
        (nll, (count, correct)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, nll, count, correct

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        if grad_accum == 1:
            grads, nll, count, correct = grads_of(state.params, batch)
        else:
            # [accum * micro, T] -> [accum, micro, T] keeping each micro-batch spread over all
            # devices (rows are sharded along the leading axis).
            split = lambda x: x.reshape(-1, grad_accum, *x.shape[1:]).swapaxes(0, 1)  # noqa: E731
            micros = jax.tree_util.tree_map(split, batch)
            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)

            def accumulate(carry, micro):
                g, n, c, k = grads_of(state.params, micro)
                acc_g, acc_n, acc_c, acc_k = carry
                return (jax.tree_util.tree_map(jnp.add, acc_g, g), acc_n + n, acc_c + c, acc_k + k), None

            zero = jnp.zeros((), jnp.float32)
            (grads, nll, count, correct), _ = jax.lax.scan(accumulate, (zeros, zero, zero, zero), micros)
        denominator = jnp.maximum(count, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denominator, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": nll / denominator,
            "accuracy": correct / denominator,
            "target_tokens": count,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "lr": schedule(state.step),
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def state_shardings(mesh: Mesh, rules, abstract_state: TrainState) -> TrainState:
    """NamedShardings for every leaf of the train state, from the partition rules."""
    return named_shardings(mesh, match_partition_rules(rules, abstract_state, mesh))


def jit_train_step(step_fn: Callable, mesh: Mesh, shardings: TrainState) -> Callable:
    """The step under jit: state donated and kept in place, batch split over (data, fsdp)."""
    batch_shardings = {k: batch_sharding(mesh) for k in BATCH_KEYS}
    replicated = NamedSharding(mesh, P())
    return jax.jit(step_fn, in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, replicated), donate_argnums=(0,))


def jit_init_state(optimizer: optax.GradientTransformation, shardings: TrainState) -> Callable:
    """init(params) -> TrainState at step 0, created directly with its shardings."""
    def init(params):
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    return jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)
