"""The causal query block of training attention: step time of one config at several blocks.

    .venv/bin/python benchmarks/attention_block.py [--config configs/local.py:dagger]
        [--blocks 0,512,256,128,64[,splash]] [--steps 5] [--json out.json]

`attention_block` (config) splits the queries of a training sequence into blocks and skips the
key blocks after each one (causal), a Python loop unrolled into the jitted step: smaller blocks
skip more of the T x T scores but give XLA more, smaller ops to compile and run. One process,
the blocks' steps interleaved (`train_step.time_interleaved`) so all see the same machine noise;
reported: compile + first step, median step, and each block's step time relative to the first
block listed. 0 = dense scores with a causal mask. `splash` adds the Pallas splash kernel
(config.attention_impl=splash): on a CPU it runs in Pallas interpret mode, which checks its
numbers and says nothing of its speed (it is an emulator, far slower than XLA); its figure means
something on a TPU only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from train_step import (REPO, bench_cases, cpu_pressure, jax_train_runner,  # noqa: E402
                        time_interleaved)

from dagger_jax.config_base import load_config_file  # noqa: E402


def case_of(base, block: int | str):
    if block == "splash":
        return dataclasses.replace(base, attention_impl="splash", attention_block=0)
    if block and base.seq_len % block:
        raise ValueError(f"--blocks: {block} does not divide the config's seq_len {base.seq_len}")
    return dataclasses.replace(base, attention_block=block)


def run(config_path: str, blocks: list[int | str], steps: int) -> dict:
    config = load_config_file(config_path)
    base = bench_cases(config)["local"]
    runners, compile_s = {}, {}
    for block in blocks:
        runner = jax_train_runner(case_of(base, block), config.train)
        start = time.perf_counter()
        runner()  # compiles
        compile_s[block] = time.perf_counter() - start
        runners[str(block)] = runner
    timing = time_interleaved(runners, steps, warmup=1)
    first = timing[str(blocks[0])]["median_s"]
    rows = [{"attention_block": b, "compile_and_first_step_s": round(compile_s[b], 2),
             "median_step_s": round(timing[str(b)]["median_s"], 4),
             "relative_to_first": round(timing[str(b)]["median_s"] / first, 3)} for b in blocks]
    return {"config": config_path, "batch_size": base.batch_size, "seq_len": base.seq_len,
            "cpu_pressure_avg10": cpu_pressure(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "local.py") + ":dagger")
    parser.add_argument("--blocks", default="0,512,256,128,64")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    blocks = [b if b == "splash" else int(b) for b in args.blocks.split(",")]
    result = run(args.config, blocks, args.steps)
    for row in result["rows"]:
        print(f"block {row['attention_block']!s:>6}: compile+first {row['compile_and_first_step_s']:6.1f} s  "
              f"step {row['median_step_s']:.3f} s  x{row['relative_to_first']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
