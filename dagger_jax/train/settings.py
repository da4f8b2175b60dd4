"""What the trainer is told: the train step, the optimizer and its schedule, the mesh, the
checkpoints. Read once from the config (settings.py at the entry point); frozen."""

from __future__ import annotations

import dataclasses
from typing import Any

from dagger_jax.models.attention import IMPLS, splash_block
from dagger_jax.names import check_weight
from dagger_jax.train.optimizer import ROUND_SCHEDULES, SCHEDULES

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    steps: int = 100               # the plain job's length (the loop sets each round's own)
    batch_size: int = 8            # global, in packed rows, per optimizer step
    seq_len: int = 512
    grad_accum: int = 1            # micro-batches per step
    loss_chunk: int = 256          # tokens per chunk of the vocabulary projection in the loss
    lr: float = 1e-3
    schedule: str = "cosine"       # cosine | linear | constant (after linear warmup)
    warmup_steps: int = 10
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_grad_norm: float = 1.0
    moment_dtype: str = ""         # Adam's first moment: "" the param dtype, or bfloat16
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    on_damaged_checkpoint: str = "previous"  # | "stop" (train/checkpoint.py: restore_intact)
    objective: str = "one"         # names.WEIGHTS: the recipe's weight
    clip_eps: float = 0.2          # GRPO's ratio clip
    loss_tokens: int = 0           # 0: each batch's own target count normalises the loss
    round_schedule: str = ""       # "" | cosine | linear: the loop restarts the rate per round
    vocab_limit: int = 0           # on-policy objectives: log-probs over ids below this only
    # The model at run time and its placement.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "xla"
    attention_block: int = 0
    platform: str = ""             # the devices required ("" any, "tpu")
    mesh_shape: tuple[int, ...] = (1, -1, 1, 1)
    partition_rules: tuple[tuple[str, Any], ...] = ()
    progress: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"config.train.{key}={getattr(self, key)!r}: {rule}")
        for key in ("batch_size", "seq_len", "grad_accum", "loss_chunk", "log_every",
                    "checkpoint_every", "keep_checkpoints"):
            need(getattr(self, key) >= 1, key, "must be >= 1")
        need(self.steps >= 0, "steps", "must be >= 0")
        need(0 < self.lr <= 1, "lr", "must be in (0, 1]")
        for key in ("b1", "b2"):
            need(0 <= getattr(self, key) < 1, key, "must be in [0, 1)")
        need(self.eps > 0, "eps", "must be > 0")
        need(self.clip_eps > 0, "clip_eps", "must be > 0")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(0.0 <= self.end_lr_ratio <= 1.0, "end_lr_ratio", "must be in [0, 1]")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.clip_grad_norm >= 0, "clip_grad_norm", "must be >= 0 (0: off)")
        need(self.loss_tokens >= 0, "loss_tokens", "must be >= 0 (0: each batch's own count)")
        need(self.vocab_limit >= 0, "vocab_limit", "must be >= 0 (0: the whole vocabulary)")
        need(self.batch_size % self.grad_accum == 0, "grad_accum",
             f"must divide train.batch_size={self.batch_size}")
        need(self.schedule in SCHEDULES, "schedule", f"choose from {SCHEDULES}")
        need(self.on_damaged_checkpoint in ("previous", "stop"), "on_damaged_checkpoint",
             "choose from previous, stop")
        need(self.round_schedule in ROUND_SCHEDULES, "round_schedule",
             f"choose from {ROUND_SCHEDULES} ('': off)")
        check_weight(self.objective, "config.train.objective")
        if self.attention_impl not in IMPLS:
            raise ValueError(f"config.attention_impl={self.attention_impl!r}: choose from {IMPLS}")
        if self.attention_impl == "splash":
            try:
                splash_block(self.seq_len)
            except ValueError as e:
                raise ValueError(f"config.train.seq_len={self.seq_len}: {e}") from None
        if self.platform not in ("", "cpu", "gpu", "tpu"):
            raise ValueError(f"config.platform={self.platform!r}: choose from '', cpu, gpu, tpu")
        if self.moment_dtype not in ("", "float32", "bfloat16"):
            raise ValueError(f"config.train.moment_dtype={self.moment_dtype!r}: choose from '' "
                             "(the param dtype), float32, bfloat16")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ValueError(f"config.{key}={getattr(self, key)!r}: choose from {DTYPES}")

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "TrainSettings":
        """From a config's `train` section and its run-wide keys; `overrides` are the values the
        entry point derives (the recipe's objective, the sampler's vocabulary limit)."""
        train = {f.name: config.train[f.name] for f in dataclasses.fields(cls)
                 if f.name in config.train}
        train.update(seed=config.seed, dtype=config.dtype, param_dtype=config.param_dtype,
                     remat=config.remat, attention_impl=config.attention_impl,
                     attention_block=config.attention_block,
                     platform=config.platform,
                     mesh_shape=tuple(config.mesh.shape),
                     partition_rules=tuple(tuple(rule) for rule in config.partition_rules),
                     progress=config.progress)
        if not train.get("objective"):
            train["objective"] = "one"
        train.update(overrides)
        return cls(**train)
