"""Reads a Hugging Face Qwen3 directory straight into sharded JAX arrays.

Each device shard is read from the safetensors files by slicing (`get_slice`), inside
`jax.make_array_from_callback`, so a host only ever reads the parts of a tensor that its own
devices hold: an 8B model never has to sit whole in one host's memory.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from safetensors import safe_open

from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_names import TensorMapping, path_str, tensor_mappings

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def tensor_locations(hf_dir: Path) -> dict[str, Path]:
    """Maps each tensor name to the safetensors file that holds it (single file or index)."""
    index = hf_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        locations = {name: hf_dir / file for name, file in weight_map.items()}
        missing = sorted({str(p) for p in locations.values() if not p.is_file()})
        if missing:
            raise FileNotFoundError(f"{index} names shard files that do not exist: {missing}")
        return locations
    single = hf_dir / SINGLE_FILE
    if single.is_file():
        with safe_open(str(single), framework="flax") as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(f"{hf_dir}: neither {INDEX_FILE} nor {SINGLE_FILE} found")


class _Reader:
    """Open safetensors handles, reading slices on the CPU whatever the default backend is."""

    def __init__(self, locations: dict[str, Path], stack: contextlib.ExitStack):
        self._locations = locations
        self._stack = stack
        self._handles: dict[Path, Any] = {}
        self._cpu = jax.devices("cpu")[0]

    def _handle(self, name: str):
        path = self._locations[name]
        if path not in self._handles:
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="flax"))
        return self._handles[path]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        with jax.default_device(self._cpu):
            return np.asarray(self._handle(name).get_slice(name)[index])


def _expected_hf_shape(mapping: TensorMapping, shape: tuple[int, ...]) -> tuple[int, ...]:
    per_tensor = shape[1:] if mapping.stacked else shape
    return tuple(reversed(per_tensor)) if mapping.transpose else tuple(per_tensor)


def _shard_reader(mapping: TensorMapping, reader: _Reader, dtype: Any) -> Callable:
    def read(index: tuple[slice, ...]) -> np.ndarray:
        def one(name: str, idx: tuple[slice, ...]) -> np.ndarray:
            if mapping.transpose:
                return reader.read(name, tuple(reversed(idx))).T
            return reader.read(name, idx)

        if not mapping.stacked:
            return one(mapping.hf_names[0], index).astype(dtype)
        layers = range(len(mapping.hf_names))[index[0]]
        return np.stack([one(mapping.hf_names[i], index[1:]) for i in layers]).astype(dtype)

    return read


def load_hf_params(hf_dir: str | Path, config: Qwen3Config, params_shape: Any,
                   shardings: Any, dtype: Any = np.float32) -> Any:
    """Returns a params tree shaped like `params_shape`, each leaf placed with its sharding.

    Fails before reading any data if a tensor is missing, unexpected, or of the wrong shape.
    """
    hf_dir = Path(hf_dir)
    locations = tensor_locations(hf_dir)
    mappings = list(tensor_mappings(params_shape, config))
    wanted = {name for m in mappings for name in m.hf_names}
    # A tied checkpoint may still carry lm_head.weight (a copy of the embedding): not an error.
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(wanted - set(locations))
    unexpected = sorted(set(locations) - wanted - ignorable)
    if missing:
        raise ValueError(f"{hf_dir}: tensors missing for this config: {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        raise ValueError(f"{hf_dir}: tensors this Qwen3 config has no place for: {unexpected[:8]} "
                         f"(does config.json match the weights?)")

    shapes = jax.tree_util.tree_leaves(params_shape)
    sharding_leaves = jax.tree_util.tree_leaves(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    arrays = []
    with contextlib.ExitStack() as stack:
        reader = _Reader(locations, stack)
        for mapping, leaf in zip(mappings, shapes):
            expected = _expected_hf_shape(mapping, tuple(leaf.shape))
            for name in mapping.hf_names:
                got = reader.shape(name)
                if got != expected:
                    raise ValueError(
                        f"{locations[name]}: tensor {name} has shape {list(got)}, but config.json "
                        f"implies {list(expected)} (for parameter {path_str(mapping.path)})")
        for mapping, leaf, sharding in zip(mappings, shapes, sharding_leaves):
            arrays.append(jax.make_array_from_callback(
                tuple(leaf.shape), sharding, _shard_reader(mapping, reader, dtype)))
    treedef = jax.tree_util.tree_structure(params_shape)
    return jax.tree_util.tree_unflatten(treedef, arrays)
