"""The train step as the trainer runs it, built for a mesh of given devices.

One function builds it for both of its users: the Trainer (the run's own devices) and the
ahead-of-time compile for a TPU topology (train/tpu_compile.py, on the topology's device descriptions,
from a CPU-only host). What one compiles is what the other runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dagger_jax.models.attention import AttentionSpec
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.qwen3 import Qwen3ForCausalLM, params_shape
from dagger_jax.models.sharding import SEQUENCE_AXIS, batch_sharding, make_mesh
from dagger_jax.names import FLOAT_KEYS
from dagger_jax.train.optimizer import make_optimizer
from dagger_jax.train.settings import TrainSettings
from dagger_jax.train.train_step import (TrainState, batch_keys, jit_init_state, jit_train_step,
                                         make_train_step, state_shardings)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` carrying the matching leaf of `shardings`."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


@dataclasses.dataclass(frozen=True)
class StepProgram:
    mesh: Mesh
    model: Qwen3ForCausalLM
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_state: TrainState     # shapes and dtypes of the train state, no arrays
    shardings: TrainState          # a NamedSharding per leaf
    batch_keys: tuple[str, ...]    # the arrays the objective's step takes
    step: Callable                 # jitted: (state, batch) -> (state, metrics), state donated
    init_state: Callable           # jitted: params -> TrainState at step 0

    def abstract_batch(self, rows: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """One global batch as the step receives it: [rows, seq_len] per key, split over the
        mesh's batch axes."""
        sharding = batch_sharding(self.mesh)
        return {k: jax.ShapeDtypeStruct((rows, seq_len),
                                        jnp.float32 if k in FLOAT_KEYS else jnp.int32,
                                        sharding=sharding) for k in self.batch_keys}

    def trace(self, rows: int, seq_len: int) -> jax.stages.Traced:
        """The step traced for this mesh without any arrays; `.lower().compile()` for AOT."""
        return self.step.trace(with_shardings(self.abstract_state, self.shardings),
                               self.abstract_batch(rows, seq_len))


def build_step_program(settings: TrainSettings, model_config: Qwen3Config,
                       devices: Sequence[jax.Device] | None = None) -> StepProgram:
    """The trainer's step for `settings` on `devices` (default: this process's jax.devices())."""
    s = settings
    devices = list(devices if devices is not None else jax.devices())
    if s.platform and devices[0].platform != s.platform:
        raise RuntimeError(
            f"config.platform={s.platform!r} but this process's devices are "
            f"{devices[0].platform} ({devices[0].device_kind}): a pod config does not train on "
            f"them. Run it on a {s.platform} host with the {s.platform} extra "
            f"(pip install -e '.[{s.platform}]'; launch/tpu_pod.sh installs it), or pass "
            "--config.platform='' to run it here anyway")
    mesh = make_mesh(s.mesh_shape, devices)
    splash = s.attention_impl == "splash"
    attention = AttentionSpec(s.attention_impl, s.attention_block, mesh if splash else None,
                              interpret=splash and devices[0].platform != "tpu")
    model = Qwen3ForCausalLM(model_config, dtype=s.dtype, param_dtype=s.param_dtype,
                             remat=s.remat, attention=attention,
                             activation_sharding=batch_sharding(mesh))
    optimizer, schedule = make_optimizer(s)
    abstract_params = params_shape(model_config, jnp.dtype(s.param_dtype))
    abstract_state = jax.eval_shape(
        lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), abstract_params)
    shardings = state_shardings(mesh, s.partition_rules, abstract_state)
    keys = batch_keys(s.objective)
    step = make_train_step(model, optimizer, schedule, s.grad_accum, s.loss_chunk,
                           objective=s.objective, clip_eps=s.clip_eps, vocab_limit=s.vocab_limit,
                           loss_tokens=s.loss_tokens, seq_shards=mesh.shape[SEQUENCE_AXIS])
    return StepProgram(mesh=mesh, model=model, optimizer=optimizer, schedule=schedule,
                       abstract_state=abstract_state, shardings=shardings, batch_keys=keys,
                       step=jit_train_step(step, mesh, shardings, keys),
                       init_state=jit_init_state(optimizer, shardings))
