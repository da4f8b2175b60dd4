"""Which Hugging Face tensor each of our parameters is, and how its layout differs."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jax

from dagger_jax.models.config import Qwen3Config


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One parameter leaf of ours and the HF tensor(s) behind it.

    `hf_names` has one name per layer for stacked (scanned) parameters, else a single name.
    `transpose`: our Dense kernels are [in, out], torch Linear weights are [out, in].
    """

    path: tuple[str, ...]
    hf_names: tuple[str, ...]
    transpose: bool
    stacked: bool


def path_str(path: tuple[str, ...]) -> str:
    return "/".join(path)


def _keys(key_path: Any) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in key_path)


def tensor_mappings(params_shape: Any, config: Qwen3Config) -> Iterator[TensorMapping]:
    """Yields the mapping of every leaf in a params tree (or its eval_shape), in tree order."""
    for key_path, _ in jax.tree_util.tree_flatten_with_path(params_shape)[0]:
        path = _keys(key_path)
        if path == ("embed_tokens",):
            yield TensorMapping(path, ("model.embed_tokens.weight",), False, False)
        elif path == ("lm_head",):
            yield TensorMapping(path, ("lm_head.weight",), True, False)
        elif path == ("norm", "scale"):
            yield TensorMapping(path, ("model.norm.weight",), False, False)
        elif path[0] == "layers":
            *modules, leaf = path[1:]
            hf_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
            suffix = ".".join([*modules, hf_leaf])
            names = tuple(f"model.layers.{i}.{suffix}" for i in range(config.num_hidden_layers))
            yield TensorMapping(path, names, leaf == "kernel", True)
        else:
            raise ValueError(f"parameter {path_str(path)!r} has no Hugging Face name")
