"""The device mesh (data, fsdp, sequence, tensor) and partition rules as data: regex on path ->
spec.

Rows of a batch split over (data, fsdp); the tokens of each row over `sequence` (context
parallelism: a 64K row's activations spread over several chips, attention gathering keys and
values, models/attention.py); heads and MLP columns over `tensor`. Parameters and optimizer
state are FSDP-sharded over (fsdp, sequence): the sequence shards each hold part of the weights
as FSDP shards do, and gather them per layer the same way, so adding sequence parallelism does
not replicate the model."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_AXES = ("data", "fsdp")
SEQUENCE_AXIS = "sequence"
FSDP = ("fsdp", "sequence")  # the axes a parameter's FSDP dimension is split over

# First match wins. Paths are "/"-joined parameter paths; optimizer states (mu, nu) contain the
# parameter path, so they shard like their parameter. Stacked layer params lead with [layers].
QWEN3_RULES: tuple[tuple[str, tuple], ...] = (
    (r"embed_tokens$", ("tensor", FSDP)),
    (r"lm_head$", (FSDP, "tensor")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", (None, FSDP, "tensor")),
    (r"(o_proj|down_proj)/kernel$", (None, "tensor", FSDP)),
    (r"(q_proj|k_proj|v_proj)/bias$", (None, "tensor")),
    (r"(q_norm|k_norm|layernorm|norm)/scale$", ()),
    (r"o_proj/bias$", ()),
    (r".*", ()),
)


def resolve_mesh_shape(shape: Sequence[int], count: int) -> tuple[int, ...]:
    """`shape` over `count` devices with its one -1 entry (if any) filled in; a ValueError if it
    does not cover exactly that many."""
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries "
                         f"{MESH_AXES}, e.g. (1, -1, 1, 1) for FSDP over every device")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if count % known:
            raise ValueError(f"mesh shape {shape} does not divide {count} devices")
        shape[shape.index(-1)] = count // known
    if math.prod(shape) != count or min(shape) < 1:
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, "
                         f"{count} are available")
    return tuple(shape)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, sequence, tensor) mesh; one entry of `shape` may be -1 to take the
    remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    try:
        shape = list(resolve_mesh_shape(shape, len(devices)))
    except ValueError as e:
        if jax.process_count() == 1:
            raise
        raise ValueError(f"{e} ({jax.process_count()} processes x {jax.local_device_count()} "
                         "devices each: config.mesh.shape covers the devices of every process)"
                         ) from None
    try:
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def _path_str(key_path: Any) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)


def _fit(spec: tuple, shape: Sequence[int], mesh: Mesh, path: str) -> P:
    """Drops mesh axes from dimensions they do not divide (tiny models on big meshes)."""
    spec = tuple(spec)[: len(shape)]
    fitted = []
    for dim, axes in zip(shape, spec + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        size = math.prod(mesh.shape[a] for a in names)
        if names and dim % size:
            logging.warning("sharding: %s dim %d not divisible by %s (%d); replicated instead",
                            path, dim, names, size)
            fitted.append(None)
        else:
            fitted.append(axes)
    while fitted and fitted[-1] is None:  # P(None) and P() mean the same; keep the short form
        fitted.pop()
    return P(*fitted)


def match_partition_rules(rules: Sequence[tuple[str, Sequence]], tree: Any, mesh: Mesh) -> Any:
    """A PartitionSpec for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
    compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

    def spec_for(key_path: Any, leaf: Any) -> P:
        path = _path_str(key_path)
        shape = getattr(leaf, "shape", ())
        if len(shape) == 0:
            return P()
        for pattern, spec in compiled:
            if pattern.search(path):
                return _fit(spec, shape, mesh, path)
        raise ValueError(f"no partition rule matches parameter {path!r}")

    return jax.tree_util.tree_map_with_path(spec_for, tree)


def named_shardings(mesh: Mesh, specs: Any) -> Any:
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                  is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[rows, tokens] arrays: rows split over the data and fsdp axes, tokens over sequence."""
    return NamedSharding(mesh, P(BATCH_AXES, SEQUENCE_AXIS))


@dataclasses.dataclass(frozen=True)
class RowBlock:
    """The rows of every global batch that one process feeds: the batch shards its devices
    hold (`shards`, ascending, of `of`; a shard is rows / `of` consecutive rows), block `index`
    of the `count` distinct blocks. A process's shards need not be consecutive (mesh_utils
    orders devices for the interconnect, not by host). Processes share a block when a row's
    (sequence, tensor) group spans hosts; each of them feeds the same rows."""
    index: int
    count: int
    shards: tuple[int, ...]
    of: int


def row_block(mesh: Mesh, process: int | None = None) -> RowBlock:
    """`process`'s (default: this one's) RowBlock on `mesh`; a ValueError if the processes'
    shards overlap without being equal, which no feed of whole blocks could serve."""
    of = math.prod(mesh.shape[a] for a in BATCH_AXES)
    held: dict[int, set[int]] = {}
    indices = batch_sharding(mesh).devices_indices_map((of, mesh.shape[SEQUENCE_AXIS]))
    for device, index in indices.items():
        held.setdefault(device.process_index, set()).update(range(*index[0].indices(of)))
    blocks = sorted({tuple(sorted(shards)) for shards in held.values()})
    if sum(map(len, blocks)) != of:
        raise ValueError(f"mesh {dict(mesh.shape)}: processes hold overlapping but different "
                         f"batch shards {blocks}; choose another config.mesh.shape")
    mine = tuple(sorted(held[jax.process_index() if process is None else process]))
    return RowBlock(blocks.index(mine), len(blocks), mine, of)


def abstract_sharded_params(params_shape: Any, mesh: Mesh,
                            rules: Sequence[tuple[str, Sequence]] = QWEN3_RULES) -> Any:
    """ShapeDtypeStructs carrying their target shardings: a restore / import target."""
    shardings = named_shardings(mesh, match_partition_rules(rules, params_shape, mesh))
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params_shape, shardings)
