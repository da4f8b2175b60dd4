"""Imports a Hugging Face Qwen3 directory as a checkpoint a run can start from.

    python tools/import_hf.py --hf-dir DIR --workdir W [--mesh 1,-1,1]

Writes W/checkpoints/0 (params and the model config; no optimizer state, so the run starts its
optimizer fresh) and W/tokenizer (when DIR has tokenizer files). Weights are read shard by
shard straight onto the mesh. Train from it with a config whose `model` matches config.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from dagger_jax.storage import layout
from dagger_jax.log_filters import quiet_library_logs
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_import import load_hf_params
from dagger_jax.models.qwen3 import params_shape
from dagger_jax.models.sharding import abstract_sharded_params, make_mesh
from dagger_jax.storage.store import (PathLike, StorePath, StoreUnavailable, check_writable,
                                      staged_dir, store_path)
from dagger_jax.tokenizer import load_tokenizer, save_tokenizer
from dagger_jax.train.checkpoint import Checkpointer


def parse_mesh(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected four ints (data,fsdp,sequence,tensor) like 1,-1,1,1") from None


def import_hf(hf_dir: Path, workdir: PathLike, mesh_shape: tuple[int, ...] = (1, -1, 1, 1)
              ) -> StorePath:
    """W may be a local directory or gs://bucket/path (storage/store.py)."""
    workdir = store_path(workdir)
    check_writable(workdir)
    config = Qwen3Config.from_hf_dir(hf_dir)
    checkpointer = Checkpointer(layout.checkpoints_dir(workdir))
    if checkpointer.all_steps():
        raise FileExistsError(f"{checkpointer.directory} already holds steps {checkpointer.all_steps()}; "
                              "import into a new workdir")
    mesh = make_mesh(mesh_shape)
    target = abstract_sharded_params(params_shape(config), mesh)
    shardings = jax.tree_util.tree_map(lambda a: a.sharding, target)
    params = load_hf_params(hf_dir, config, target, shardings, dtype=np.float32)
    checkpointer.save(0, params, None, config, extra_meta={"imported_from": str(hf_dir)})
    checkpointer.close()
    has_tokenizer = (hf_dir / "tokenizer.json").is_file() or (hf_dir / "tokenizer_config.json").is_file()
    if has_tokenizer and jax.process_index() == 0:
        with staged_dir(layout.tokenizer_dir(workdir)) as staged:
            save_tokenizer(load_tokenizer(hf_dir), staged)
    return checkpointer.directory / "0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-dir", type=Path, required=True, help="Hugging Face Qwen3 directory")
    parser.add_argument("--workdir", required=True,
                        help="run directory to create: a local path or gs://bucket/path")
    parser.add_argument("--mesh", type=parse_mesh, default=(1, -1, 1, 1), help="data,fsdp,sequence,tensor")
    args = parser.parse_args(argv)
    quiet_library_logs()
    try:
        path = import_hf(args.hf_dir, args.workdir, args.mesh)
    except (FileNotFoundError, FileExistsError, ValueError, StoreUnavailable) as e:
        print(f"import_hf: {e}", file=sys.stderr)
        return 1
    print(f"imported {args.hf_dir} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
