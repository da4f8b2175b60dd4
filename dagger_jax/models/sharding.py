"""The device mesh (data, fsdp, tensor) and partition rules as data: regex on path -> spec."""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# First match wins. Paths are "/"-joined parameter paths; optimizer states (mu, nu) contain the
# parameter path, so they shard like their parameter. Stacked layer params lead with [layers].
QWEN3_RULES: tuple[tuple[str, tuple], ...] = (
    (r"embed_tokens$", ("tensor", "fsdp")),
    (r"lm_head$", ("fsdp", "tensor")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", (None, "fsdp", "tensor")),
    (r"(o_proj|down_proj)/kernel$", (None, "tensor", "fsdp")),
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
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
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
    """A (data, fsdp, tensor) mesh; one entry of `shape` may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(resolve_mesh_shape(shape, len(devices)))
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
    """Examples split over the data and fsdp axes; sequence positions kept whole."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def abstract_sharded_params(params_shape: Any, mesh: Mesh,
                            rules: Sequence[tuple[str, Sequence]] = QWEN3_RULES) -> Any:
    """ShapeDtypeStructs carrying their target shardings: a restore / import target."""
    shardings = named_shardings(mesh, match_partition_rules(rules, params_shape, mesh))
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params_shape, shardings)
