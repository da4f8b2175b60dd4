"""Ahead-of-time compilation of the train step for a TPU slice, from a host without TPUs.

libtpu (the `tpu` extra, also in the test extra) describes any TPU topology by name
(`jax.experimental.topologies`); the trainer's own step (train/step_program.py) is built on those
device descriptions and compiled by XLA's TPU compiler exactly as a pod would compile it. What
comes back is the per-device memory of the compiled program (arguments, outputs, temporaries)
and the FLOPs of its matmuls (train/flop_count.py), so whether a config fits a slice is known before a pod is rented.

A layout that cannot work (a mesh that does not cover the slice, a batch the mesh cannot split)
is refused before compiling, with a layout that would work in the message.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any

import jax

from dagger_jax.accelerators import tpu_chips_present
from dagger_jax.models.attention import splash_block
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.sharding import BATCH_AXES, MESH_AXES, resolve_mesh_shape, row_block
from dagger_jax.train.flop_count import matmul_flops
from dagger_jax.train.settings import TrainSettings
from dagger_jax.train.step_program import build_step_program

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class TpuChip:
    """Published per-chip figures of a TPU generation (cloud.google.com/tpu/docs/<gen>)."""
    generation: str
    hbm_bytes: int
    peak_bf16_flops: float   # dense bf16 matmul FLOP/s
    accelerator_type: str    # Cloud TPU's name of a slice, {n}: its chips times cores_per_name
    cores_per_name: int = 1


CHIPS = {
    "v4": TpuChip("v4", 32 * GiB, 275e12, "v4-{n}", 2),
    "v5e": TpuChip("v5e", 16 * GiB, 197e12, "v5litepod-{n}"),
    "v5p": TpuChip("v5p", 95 * GiB, 459e12, "v5p-{n}", 2),
    "v6e": TpuChip("v6e", 32 * GiB, 918e12, "v6e-{n}"),
}
TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice by its topology name: its chip, chip count and JAX device descriptions."""
    name: str
    chip: TpuChip
    chips: int
    devices: tuple[Any, ...]   # one per TensorCore JAX addresses (v4: two per chip)

    @property
    def hosts(self) -> int:
        return len({d.process_index for d in self.devices})

    @property
    def hbm_per_device(self) -> int:
        return self.chip.hbm_bytes * self.chips // len(self.devices)


def parse_topology(name: str) -> tuple[TpuChip, int]:
    match = TOPOLOGY.match(name)
    if not match:
        raise ValueError(f"unknown TPU topology {name!r}: use GENERATION:DIMS with GENERATION one of "
                         f"{sorted(CHIPS)} and DIMS the chip grid, e.g. v5p:2x2x4, v5e:8x8, v6e:4x4")
    return CHIPS[match.group(1)], math.prod(int(d) for d in match.group(2).split("x"))


def _describe_without_chips(chip: TpuChip, chips: int) -> None:
    """On a host without TPU chips, libtpu loading for a topology description would look for
    the TPU VM's metadata (a page of errors when there is none) and take a host-wide lock that
    the next process loading it (another pytest worker, a tool started by a test) fails on.
    A description needs neither: say which slice this is and allow more than one loader."""
    if tpu_chips_present():
        return
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                       ("TPU_ACCELERATOR_TYPE",
                        chip.accelerator_type.format(n=chips * chip.cores_per_name)),
                       ("TPU_WORKER_ID", "0"), ("TPU_WORKER_HOSTNAMES", "localhost")):
        os.environ.setdefault(key, value)


def tpu_slice(name: str) -> Slice:
    """The slice's device descriptions from libtpu (nothing is started, no TPU is needed)."""
    chip, chips = parse_topology(name)
    _describe_without_chips(chip, chips)
    try:
        from jax.experimental import topologies
        topology = topologies.get_topology_desc(platform="tpu", topology_name=name)
    except (ImportError, RuntimeError) as e:
        raise RuntimeError(f"libtpu could not describe {name!r} ({e}); install the tpu extra: "
                           "pip install -e '.[tpu]'") from None
    return Slice(name, chip, chips, tuple(topology.devices))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _whole_blocks(seq_len: int, shards: int) -> bool:
    try:
        return seq_len % shards == 0 and splash_block(seq_len // shards) > 0
    except ValueError:
        return False


def suggest_mesh(devices: int, micro_rows: int, seq_len: int,
                 model: Qwen3Config) -> tuple[int, int, int, int] | None:
    """A (data, fsdp, sequence, tensor) mesh over `devices` that splits `micro_rows` rows: as
    much FSDP as the rows allow, the rest over each row's tokens (sequence: its shards must be
    whole splash blocks) and then heads (tensor: it must divide the key/value heads)."""
    for fsdp in sorted(_divisors(devices), reverse=True):
        if micro_rows % fsdp:
            continue
        rest = devices // fsdp
        for tensor in _divisors(rest):
            sequence = rest // tensor
            if model.num_key_value_heads % tensor == 0 and _whole_blocks(seq_len, sequence):
                return (1, fsdp, sequence, tensor)
    return None


def resolve_mesh(settings: TrainSettings, model: Qwen3Config,
                 where: Slice) -> tuple[int, int, int, int]:
    """The mesh shape the config asks for on this slice, or a ValueError naming one that works."""
    devices = len(where.devices)
    micro_rows = settings.batch_size // settings.grad_accum
    good = suggest_mesh(devices, micro_rows, settings.seq_len, model)
    hint = (f"--config.mesh.shape='{good}'" if good else
            f"--config.train.batch_size={devices * settings.grad_accum} (a multiple of the "
            f"{devices} devices per micro-batch)")
    try:
        shape = resolve_mesh_shape(settings.mesh_shape, devices)
    except ValueError:
        raise ValueError(f"config.mesh.shape={tuple(settings.mesh_shape)} does not cover the "
                         f"{devices} devices of {where.name} ({MESH_AXES}); a shape that would: "
                         f"{hint}") from None
    axes = dict(zip(MESH_AXES, shape))
    split = math.prod(axes[a] for a in BATCH_AXES)
    fewer = [k for k in _divisors(settings.grad_accum)
             if settings.batch_size % k == 0 and (settings.batch_size // k) % split == 0]
    if micro_rows % split and fewer:
        hint = f"--config.train.grad_accum={max(fewer)}, or {hint}"
    if micro_rows % split:
        raise ValueError(
            f"config.train.batch_size={settings.batch_size} (grad_accum {settings.grad_accum}: "
            f"{micro_rows} rows per micro-batch) cannot be split over {' x '.join(BATCH_AXES)} = "
            f"{split} devices of mesh {tuple(shape)} on {where.name}; a layout that would: {hint}")
    return tuple(shape)


def model_flops_per_step(model: Qwen3Config, rows: int, seq_len: int) -> dict[str, float]:
    """Analytic training FLOPs of one step: 6 N per token for the weights' matmuls (N counts
    every matmul weight, the output projection included, not the input embedding lookup) plus
    causal attention, 6 L H d T^2 per row (QK^T and AV, forward and backward, half the square):
    the row taken as one sequence, the most a packed row costs."""
    hidden, layers = model.hidden_size, model.num_hidden_layers
    q, kv = model.num_attention_heads * model.head_dim, model.num_key_value_heads * model.head_dim
    per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * model.intermediate_size
    matmul_params = layers * per_layer + hidden * model.vocab_size
    tokens = rows * seq_len
    dense = 6.0 * matmul_params * tokens
    attention = 6.0 * layers * q * seq_len * seq_len * rows
    return {"matmul_params": float(matmul_params), "dense": dense, "attention": attention,
            "total": dense + attention}


def compile_for_tpu(settings: TrainSettings, model: Qwen3Config, topology: str) -> dict[str, Any]:
    """Compiles the trainer's step for the slice and reports memory, FLOPs and the roofline."""
    where = tpu_slice(topology)
    mesh_shape = resolve_mesh(settings, model, where)
    settings = dataclasses.replace(settings, mesh_shape=mesh_shape)
    program = build_step_program(settings, model, where.devices)
    # How the hosts feed the batch (models/sharding.RowBlock): refused here, before the
    # compile, if no feed of whole blocks could serve the layout.
    blocks = {row_block(program.mesh, p).index for p in {d.process_index for d in where.devices}}
    rows, seq_len = settings.batch_size, settings.seq_len
    began = time.perf_counter()
    report: dict[str, Any] = {
        "topology": topology, "generation": where.chip.generation, "chips": where.chips,
        "devices": len(where.devices), "hosts": where.hosts,
        "mesh": dict(zip(MESH_AXES, mesh_shape)),
        # Distinct blocks of rows the hosts feed; hosts / blocks of them feed each block (more
        # than one when a row's sequence group spans hosts).
        "row_blocks": len(blocks),
        "batch": {"rows": rows, "seq_len": seq_len, "grad_accum": settings.grad_accum},
        "model": {"hidden_size": model.hidden_size, "layers": model.num_hidden_layers,
                  "vocab_size": model.vocab_size},
        "dtype": settings.dtype, "param_dtype": settings.param_dtype, "remat": settings.remat,
        "loss_chunk": settings.loss_chunk, "attention": program.model.attention.describe(),
        "hbm_bytes_per_device": where.hbm_per_device,
    }
    traced = program.trace(rows, seq_len)
    program_flops = matmul_flops(traced.jaxpr)
    try:
        compiled = traced.lower().compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        report.update(compile_s=time.perf_counter() - began, fits=False,
                      error=_first_lines(str(e)), **_exhausted_bytes(str(e)))
        return _with_flops(report, model, where, rows, seq_len, program_flops)
    report["compile_s"] = time.perf_counter() - began
    memory = compiled.memory_analysis()
    per_device = {
        "arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
        "aliased": memory.alias_size_in_bytes, "temporaries": memory.temp_size_in_bytes,
        "generated_code": memory.generated_code_size_in_bytes,
        # Host memory the program uses (remat=offload keeps saved activations there).
        "host_temporaries": memory.host_temp_size_in_bytes,
    }
    # Donated state: an output aliased to its argument occupies one buffer, not two.
    per_device["total"] = (per_device["arguments"] + per_device["outputs"] - per_device["aliased"]
                           + per_device["temporaries"] + per_device["generated_code"])
    report["per_device_bytes"] = per_device
    report["fits"] = per_device["total"] <= where.hbm_per_device
    report["hbm_spare_fraction"] = 1.0 - per_device["total"] / where.hbm_per_device
    return _with_flops(report, model, where, rows, seq_len, program_flops)


def _with_flops(report: dict[str, Any], model: Qwen3Config, where: Slice, rows: int,
                seq_len: int, program_flops: float) -> dict[str, Any]:
    flops = model_flops_per_step(model, rows, seq_len)
    step_s = flops["total"] / (where.chips * where.chip.peak_bf16_flops)
    report.update(
        model_flops_per_step=flops["total"], model_flops_attention_fraction=flops["attention"] / flops["total"],
        peak_bf16_flops_per_chip=where.chip.peak_bf16_flops, roofline_step_s=step_s,
        roofline_tokens_per_s=rows * seq_len / step_s,
        roofline_tokens_per_s_per_chip=rows * seq_len / step_s / where.chips,
        # What the step's program multiplies (train/flop_count.py): remat's recomputation in,
        # a kernel's skipped blocks counted (an upper bound); model / program < 1 is the share
        # of the work that is the model's own.
        program_matmul_flops_per_step=program_flops,
        model_over_program_flops=flops["total"] / program_flops)
    return report


def _first_lines(message: str, lines: int = 3) -> str:
    return "\n".join(message.strip().splitlines()[:lines])


def _exhausted_bytes(message: str) -> dict[str, Any]:
    """What XLA's out-of-memory message states: the temporaries' need and the usable HBM,
    e.g. "HLO temporaries (338.25G) exceeds available HBM (95.74G)"."""
    found = re.search(r"HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds available HBM "
                      r"\(([\d.]+)([KMGT]?)\)", message)
    if not found:
        return {}
    unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "": 1}
    return {"temporaries_bytes_per_device": int(float(found.group(1)) * unit[found.group(2)]),
            "xla_hbm_bytes_per_device": int(float(found.group(3)) * unit[found.group(4)])}
