"""AdamW with warmup and a decay schedule, global-norm clipping; decay only on matrices.

Two ways to set the rate: a schedule of the global step (train.schedule over train.steps, the
plain job), or, with train.round_schedule, a rate held in the optimizer state and set before
each step by the outer loop, which restarts warmup and decay in every round (its steps are only
known when the round starts).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
import optax

SCHEDULES = ("cosine", "linear", "constant")
ROUND_SCHEDULES = ("", "cosine", "linear")


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int, schedule: str,
                           end_lr_ratio: float = 0.1) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine / linear decay to lr*end_lr_ratio, or constant."""
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule={schedule!r} unknown; choose from {SCHEDULES}")
    warmup_steps = max(0, min(warmup_steps, total_steps))
    decay_steps = max(1, total_steps - warmup_steps)
    warmup = optax.linear_schedule(0.0, lr, max(1, warmup_steps))
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_ratio)
    elif schedule == "linear":
        decay = optax.linear_schedule(lr, lr * end_lr_ratio, decay_steps)
    else:
        decay = optax.constant_schedule(lr)
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [warmup_steps])


def _decay_mask(params: Any) -> Any:
    # Norm scales and biases are not decayed (the usual practice for transformers).
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_config: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its schedule from the `train` section of a config (with
    train.round_schedule the rate lives in the optimizer state: see with_learning_rate)."""
    c = train_config
    schedule = learning_rate_schedule(c.lr, c.steps, c.warmup_steps, c.schedule, c.end_lr_ratio)
    chain = []
    if c.clip_grad_norm > 0:
        chain.append(optax.clip_by_global_norm(c.clip_grad_norm))
    round_schedule = getattr(c, "round_schedule", "")
    if round_schedule not in ROUND_SCHEDULES:
        raise ValueError(f"train.round_schedule={round_schedule!r} unknown; choose from "
                         f"{ROUND_SCHEDULES} ('': off)")
    # Adam's first moment in bfloat16 (train.moment_dtype) halves its memory; the second moment
    # and the master weights keep the param dtype.
    mu_dtype = getattr(c, "moment_dtype", "") or None
    if round_schedule:
        adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask", "mu_dtype"))
        chain.append(adamw(learning_rate=c.lr, b1=c.b1, b2=c.b2, eps=c.eps, mu_dtype=mu_dtype,
                           weight_decay=c.weight_decay, mask=_decay_mask))
    else:
        chain.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, mu_dtype=mu_dtype,
                                 weight_decay=c.weight_decay, mask=_decay_mask))
    return optax.chain(*chain), schedule


def _injected(opt_state: Any) -> Any:
    """The InjectHyperparamsState in a chain's state (None: the rate is a step schedule)."""
    # Recognised by its field (optax renamed the state class across versions).
    for part in opt_state if isinstance(opt_state, tuple) else ():
        if "learning_rate" in (getattr(part, "hyperparams", None) or {}):
            return part
    return None


def holds_learning_rate(opt_state: Any) -> bool:
    return _injected(opt_state) is not None


def current_learning_rate(opt_state: Any, schedule: optax.Schedule, step: Any) -> Any:
    """The rate this step uses: the one in the state if it holds one, else schedule(step)."""
    injected = _injected(opt_state)
    return schedule(step) if injected is None else injected.hyperparams["learning_rate"]


def with_learning_rate(opt_state: Any, rate: Any) -> Any:
    """opt_state with the held rate replaced (opt_state must hold one)."""
    injected = _injected(opt_state)
    if injected is None:
        raise ValueError("this optimizer state holds no learning rate (train.round_schedule is off)")
    hyperparams = {**injected.hyperparams, "learning_rate": rate}
    return tuple(part._replace(hyperparams=hyperparams) if part is injected else part
                 for part in opt_state)


def held_rate_sharding(shardings: Any) -> Any:
    """The sharding of the held rate in a state_shardings(...).opt_state tree."""
    return _injected(shardings).hyperparams["learning_rate"]


def round_learning_rate(train_config: Any, start: int, end: int) -> Callable[[int], np.float32]:
    """The rate of each step of an outer-loop round that trains steps start..end: warmup over
    train.warmup_steps, then train.round_schedule's decay to lr * end_lr_ratio, the rate of the
    round's last step, so every round ends at a low rate whatever came before it."""
    c = train_config
    # Over one step fewer than the round has: its last step (end - 1) is the decay's end.
    schedule = learning_rate_schedule(c.lr, end - start - 1, c.warmup_steps, c.round_schedule,
                                      c.end_lr_ratio)
    # Every step's rate at once, on the host: no device dispatch per training step.
    rates = np.asarray(jax.vmap(schedule)(np.arange(max(end - start, 1))), np.float32)
    return lambda step: rates[step - start]
