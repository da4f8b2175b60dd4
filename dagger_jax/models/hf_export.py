"""Writes params as a Hugging Face Qwen3 directory that `transformers` loads.

Tensors are gathered to the host one layer at a time and written shard by shard, so the export
never holds more than one safetensors shard in memory. The directory is built under a temporary
name and renamed into place, so a failed export (a full disk, a killed process) leaves the
previous export intact and no half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_names import tensor_mappings

EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
# Only tokenizer files travel with an export (a tokenizer dir may be a whole HF model dir).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _tensors(params: Any, config: Qwen3Config, dtype: Any) -> Iterator[tuple[str, tuple, Any]]:
    """(HF name, shape, thunk producing the host array) for every tensor, in a stable order."""
    leaves = jax.tree_util.tree_leaves(params)
    for mapping, leaf in zip(tensor_mappings(params, config), leaves):
        for layer, name in enumerate(mapping.hf_names):
            def fetch(leaf=leaf, layer=layer, mapping=mapping) -> np.ndarray:
                value = _to_host(leaf[layer] if mapping.stacked else leaf)
                return np.ascontiguousarray((value.T if mapping.transpose else value).astype(dtype))
            shape = tuple(leaf.shape[1:] if mapping.stacked else leaf.shape)
            yield name, (tuple(reversed(shape)) if mapping.transpose else shape), fetch


def _plan_shards(tensors: list[tuple[str, tuple, Any]], itemsize: int,
                 max_shard_bytes: int) -> list[list[int]]:
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape, _) in enumerate(tensors):
        nbytes = int(np.prod(shape)) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def export_hf(params: Any, config: Qwen3Config, out_dir: str | Path,
              tokenizer_dir: str | Path | None = None, dtype: str = "float32",
              max_shard_bytes: int = 2 * 1024**3) -> Path | None:
    """Exports `params` to `out_dir` (config.json, safetensors [+ index], tokenizer files).

    Collective on multi-host runs: every process must call it; only process 0 writes.
    Returns the directory on process 0, None elsewhere.
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r} unknown; choose from {sorted(EXPORT_DTYPES)}")
    np_dtype = EXPORT_DTYPES[dtype]
    writer = jax.process_index() == 0
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    if writer:
        _remove_dead_temps(out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    tensors = list(_tensors(params, config, np_dtype))
    shards = _plan_shards(tensors, np.dtype(np_dtype).itemsize, max_shard_bytes)
    names = ([f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
             if len(shards) > 1 else ["model.safetensors"])
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for file_name, members in zip(names, shards):
        # Gathering is collective: every process fetches, process 0 alone writes.
        shard = {tensors[i][0]: tensors[i][2]() for i in members}
        if writer:
            save_file(shard, str(tmp / file_name), metadata={"format": "pt"})
        for name, value in shard.items():
            weight_map[name] = file_name
            total_bytes += value.nbytes
        del shard
    if not writer:
        return None

    if len(shards) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(dtype), indent=2))
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if tokenizer_dir is not None:
        copied = [name for name in TOKENIZER_FILES if (Path(tokenizer_dir) / name).is_file()]
        if not copied:
            raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer files to export")
        for name in copied:
            shutil.copy2(Path(tokenizer_dir) / name, tmp / name)

    old = out_dir.with_name(out_dir.name + f".old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_dead_temps(out_dir: Path) -> None:
    """Temp dirs of exports to out_dir whose writer died (a killed run): each is a whole model's
    worth of disk, and no later process would remove another pid's. A live writer's is kept."""
    for stale in out_dir.parent.glob(f"{out_dir.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
