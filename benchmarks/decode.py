"""Agent-shaped decoding with and without the prefix cache (models/prefix_cache.py).

Each of `--rows` episodes runs `--turns` turns: the prompt starts at `--prompt` tokens, and each
turn appends the tokens generated (`--new`, no stop) plus an `--observation`-token tool answer,
as an agent's context grows. Both ways run the same greedy requests on the same params in this
process, turn by turn interleaved, and must produce the same tokens; the report is seconds per
turn of each, their ratio, and the prompt tokens the cache let the model skip.

    .venv/bin/python benchmarks/decode.py [--config configs/local.py:dagger] [--turns 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagger_jax.config_base import load_config_file  # noqa: E402
from dagger_jax.models import sampling  # noqa: E402
from dagger_jax.models.config import Qwen3Config  # noqa: E402
from dagger_jax.models.prefix_cache import PrefixCache  # noqa: E402
from dagger_jax.models.qwen3 import init_params  # noqa: E402


def model_config(spec: str) -> Qwen3Config:
    return Qwen3Config.from_dict(load_config_file(spec).model.to_dict(), where=f"{spec} model")


def run(config: Qwen3Config, *, rows: int, turns: int, prompt: int, new: int, observation: int,
        batch: int, seed: int = 0) -> dict:
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    vocab = config.vocab_size
    prompts = [rng.integers(1, vocab, prompt - 7 * i).tolist() for i in range(rows)]
    cache = PrefixCache(capacity=4 * batch)
    seconds = {"cache": [], "plain": []}
    for turn in range(turns):
        requests = [sampling.Request(tuple(p), new) for p in prompts]
        outs = {}
        # Interleaved, plain first on even turns: drift on a shared machine hits both alike.
        order = ("plain", "cache") if turn % 2 == 0 else ("cache", "plain")
        for way in order:
            start = time.perf_counter()
            outs[way] = sampling.generate(params, config, requests, min_batch=batch,
                                          prefix_cache=cache if way == "cache" else None)
            seconds[way].append(time.perf_counter() - start)
        if [o.tokens for o in outs["cache"]] != [o.tokens for o in outs["plain"]]:
            raise AssertionError(f"turn {turn}: the prefix cache changed the generated tokens")
        prompts = [p + list(o.tokens) + rng.integers(1, vocab, observation).tolist()
                   for p, o in zip(prompts, outs["plain"])]
    # Turn 0 compiles (and has nothing cached): the steady state is the later turns.
    later = lambda xs: statistics.median(xs[1:]) if len(xs) > 1 else xs[0]  # noqa: E731
    return {
        "rows": rows, "turns": turns, "final_prompt_tokens": max(len(p) for p in prompts),
        "plain_s_per_turn": later(seconds["plain"]), "cache_s_per_turn": later(seconds["cache"]),
        "speedup": later(seconds["plain"]) / later(seconds["cache"]),
        "cache_hits": cache.hits, "cache_misses": cache.misses,
        "prompt_tokens_skipped": cache.reused_tokens,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/local.py:dagger")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8, help="rows per compiled batch (padding)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=300)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--observation", type=int, default=200)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    for name in ("rows", "batch", "turns", "prompt", "new"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    result = run(model_config(args.config), rows=args.rows, turns=args.turns, prompt=args.prompt,
                 new=args.new, observation=args.observation, batch=max(args.batch, args.rows))
    summary = {k: v for k, v in result.items() if k != "seconds"}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
