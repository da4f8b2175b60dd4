"""AdamW with warmup and a decay schedule, global-norm clipping; decay only on matrices."""

from __future__ import annotations

from typing import Any

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


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
    """The optimizer and its schedule from the `train` section of a config."""
    c = train_config
    schedule = learning_rate_schedule(c.lr, c.steps, c.warmup_steps, c.schedule, c.end_lr_ratio)
    chain = []
    if c.clip_grad_norm > 0:
        chain.append(optax.clip_by_global_norm(c.clip_grad_norm))
    chain.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                             mask=_decay_mask))
    return optax.chain(*chain), schedule
