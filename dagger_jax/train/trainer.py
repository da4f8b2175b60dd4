"""The training loop: build or resume the sharded state, step, log, checkpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dagger_jax.storage import layout
from dagger_jax.storage.store import store_path
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.qwen3 import init_params
from dagger_jax.models.sharding import RowBlock, batch_sharding, row_block
from dagger_jax.train.checkpoint import Checkpointer
from dagger_jax.train.metrics import MetricWriter
from dagger_jax.train.optimizer import held_rate_sharding, holds_learning_rate, with_learning_rate
from dagger_jax.train.settings import TrainSettings
from dagger_jax.train.step_program import build_step_program, with_shardings
from dagger_jax.train.train_step import BATCH_KEYS, TrainState

BatchFn = Callable[[int], dict[str, np.ndarray]]


def global_batch(mesh, batch: dict[str, np.ndarray], local: bool = False,
                 keys: tuple[str, ...] = BATCH_KEYS,
                 block: RowBlock | None = None) -> dict[str, jax.Array]:
    """Places a batch's arrays `keys` on the mesh, each device taking its rows and tokens. By
    default `batch` is the whole global batch (every process holds it); with local=True it is
    this process's rows only (its models/sharding.RowBlock, shard after shard: a pipeline that
    reads only its own part, such as the trajectory pipeline), and the global batch has
    `count` times its rows. `block`: this process's RowBlock on `mesh`, if the caller has it
    (the Trainer computes it once, not every step)."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"the training batch lacks {missing} (it has {sorted(batch)}); the "
                         f"train objective needs {list(keys)}")
    sharding = batch_sharding(mesh)
    block = block or row_block(mesh)
    out = {}
    for key in keys:
        rows = batch[key]
        if not local:
            out[key] = jax.make_array_from_callback(rows.shape, sharding, lambda i, r=rows: r[i])
            continue
        if rows.shape[0] % len(block.shards):
            raise ValueError(f"{rows.shape[0]} local rows do not split over this process's "
                             f"{len(block.shards)} batch shards")
        per = rows.shape[0] // len(block.shards)

        def shard(index: tuple[slice, ...], rows=rows, per=per) -> np.ndarray:
            start = index[0].start or 0  # a device holds whole shards: rows [k * per, ...)
            at = block.shards.index(start // per) * per + start % per
            size = len(range(*index[0].indices(per * block.of)))
            return rows[at:at + size][(slice(None), *index[1:])]
        out[key] = jax.make_array_from_callback((per * block.of, *rows.shape[1:]), sharding, shard)
    return out


class Trainer:
    """Owns the mesh, the jitted step and the checkpoints of one run."""

    def __init__(self, settings: TrainSettings, workdir: str | Path, model_config: Qwen3Config):
        self.settings = s = settings
        self.workdir = store_path(workdir)
        self.model_config = model_config
        program = build_step_program(s, model_config)
        self.mesh, self.model = program.mesh, program.model
        self.abstract_state, self.shardings = program.abstract_state, program.shardings
        self.checkpointer = Checkpointer(layout.checkpoints_dir(self.workdir), s.keep_checkpoints)
        self.objective = s.objective
        self.batch_keys = program.batch_keys
        self._step, self._init_state = program.step, program.init_state
        self.last_metrics: dict[str, float] = {}  # the last logged step's, for callers to report
        # The rows of each global batch this process feeds (local_batches).
        self.row_block = row_block(self.mesh)
        logging.info("mesh %s: this process feeds row block %d of %d", dict(self.mesh.shape),
                     self.row_block.index, self.row_block.count)

    def initial_state(self) -> TrainState:
        """The latest checkpoint if there is one (resume), else fresh random params."""
        latest = self.checkpointer.latest_step()
        if latest is None:
            logging.info("no checkpoint in %s: initialising params (seed %d)", self.workdir,
                         self.settings.seed)
            init = jax.jit(lambda rng: init_params(self.model_config, rng,
                                                   jnp.dtype(self.settings.param_dtype)),
                           out_shardings=self.shardings.params)
            return self._init_state(init(jax.random.key(self.settings.seed)))
        target = with_shardings(self.abstract_state, self.shardings)
        step, params, opt_state = self.checkpointer.restore_intact(
            self.model_config, target.params, target.opt_state,
            on_damaged=self.settings.on_damaged_checkpoint)
        logging.info("resuming from %s step %d%s", self.checkpointer.directory, step,
                     "" if opt_state is not None else " (params only: fresh optimizer state)")
        if opt_state is None:
            return self._init_state(params).replace(step=jnp.asarray(step, jnp.int32))
        step_array = jax.device_put(jnp.asarray(step, jnp.int32), self.shardings.step)
        return TrainState(step_array, params, opt_state)

    def save(self, state: TrainState) -> None:
        self.checkpointer.save(int(state.step), state.params, state.opt_state, self.model_config)

    def fit(self, batch_fn: BatchFn, state: TrainState | None = None, total_steps: int | None = None,
            local_batches: bool = False, rate_fn: Callable[[int], Any] | None = None) -> TrainState:
        """Trains to `total_steps` (default `train.steps`), checkpointing every
        `train.checkpoint_every` steps and at the end. `batch_fn(step)` gives the global batch
        of that step, or with local_batches this process's rows of it. rate_fn(step): the
        learning rate of each step, required with train.round_schedule (the outer loop's
        per-round schedule, optimizer.round_learning_rate) and refused without it."""
        c = self.settings
        state = self.initial_state() if state is None else state
        if holds_learning_rate(state.opt_state) != (rate_fn is not None):
            raise ValueError(
                "train.round_schedule sets the rate of each outer-loop round's steps: it needs "
                "the loop (config.loop.enabled) and the loop's rate for every step" if rate_fn is None
                else "a per-step learning rate was given but train.round_schedule is off")
        rate_sharding = held_rate_sharding(self.shardings.opt_state) if rate_fn else None
        start = int(state.step)
        end = c.steps if total_steps is None else int(total_steps)
        writer = MetricWriter(layout.tensorboard_dir(self.workdir))
        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        tokens_since, time_since = 0, time.perf_counter()
        if start < end:
            logging.info("training steps %d..%d, objective %s", start, end, self.objective)
        with Progress(*columns, disable=jax.process_index() != 0 or not c.progress) as progress:
            task = progress.add_task("train", total=end, completed=start, info="")
            for step in range(start, end):
                host_batch = batch_fn(step)
                if rate_fn is not None:
                    rate = jax.device_put(np.float32(rate_fn(step)), rate_sharding)
                    state = state.replace(opt_state=with_learning_rate(state.opt_state, rate))
                tokens_since += int(np.count_nonzero(host_batch["segment_ids"]))
                state, metrics = self._step(state, global_batch(self.mesh, host_batch, local_batches,
                                                                self.batch_keys, self.row_block))
                done = step + 1
                if done % c.log_every == 0 or done == end:
                    scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    elapsed = time.perf_counter() - time_since
                    scalars["tokens_per_second"] = tokens_since / max(elapsed, 1e-9)
                    tokens_since, time_since = 0, time.perf_counter()
                    writer.write(done, scalars)
                    self.last_metrics = {"step": done, **scalars}
                    info = (f"loss {scalars['loss']:.4f} acc {scalars['accuracy']:.3f} "
                            f"gnorm {scalars['grad_norm']:.3f} lr {scalars['lr']:.2e} "
                            f"{scalars['tokens_per_second']:.0f} tok/s")
                    progress.update(task, info=info)
                    logging.info("step %d: %s", done, info)
                progress.update(task, completed=done)
                if done % c.checkpoint_every == 0 or done == end:
                    self.save(state)
        writer.close()
        return state
