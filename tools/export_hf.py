"""Exports a checkpoint of a run as a Hugging Face Qwen3 directory.

    python tools/export_hf.py --workdir W [--step N] --out DIR [--dtype float32|bfloat16]

The model shape comes from the checkpoint itself; the tokenizer from W/tokenizer. The result
loads with `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and serves with SGLang.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dagger_jax.storage import layout
from dagger_jax.log_filters import quiet_library_logs
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import EXPORT_DTYPES, export_hf
from dagger_jax.models.qwen3 import params_shape
from dagger_jax.models.sharding import abstract_sharded_params, make_mesh
from dagger_jax.storage.store import PathLike, local_dir, store_path
from dagger_jax.train.checkpoint import Checkpointer


def export_checkpoint(workdir: PathLike, out: Path, step: int | None = None,
                      dtype: str = "float32", max_shard_bytes: int = 2 * 1024**3) -> Path:
    """W may be local or gs://bucket/path; DIR is local."""
    workdir = store_path(workdir)
    checkpointer = Checkpointer(layout.checkpoints_dir(workdir), max_to_keep=None)
    meta = checkpointer.meta(step)
    config = Qwen3Config.from_dict(meta["model_config"], where=f"checkpoint meta of {workdir}")
    target = abstract_sharded_params(params_shape(config), make_mesh((1, -1, 1, 1)))
    step, params, _ = checkpointer.restore(meta["step"] if step is None else step, config, target, None)
    tokenizer = local_dir(layout.tokenizer_dir(workdir)) if layout.has_tokenizer(workdir) \
        else None
    if tokenizer is None:
        print(f"export_hf: warning: {layout.tokenizer_dir(workdir)} holds no tokenizer; "
              "the export will have none", file=sys.stderr)
    result = export_hf(params, config, out, tokenizer_dir=tokenizer, dtype=dtype,
                       max_shard_bytes=max_shard_bytes)
    checkpointer.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a local path or gs://bucket/path")
    parser.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", choices=sorted(EXPORT_DTYPES), default="float32")
    parser.add_argument("--max-shard-bytes", type=int, default=2 * 1024**3)
    args = parser.parse_args(argv)
    quiet_library_logs()
    try:
        out = export_checkpoint(args.workdir, args.out, args.step, args.dtype, args.max_shard_bytes)
    except (FileNotFoundError, ValueError) as e:
        print(f"export_hf: {e}", file=sys.stderr)
        return 1
    print(f"exported {args.workdir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
