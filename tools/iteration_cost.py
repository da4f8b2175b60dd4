"""Prints what each iteration of a config's loop costs (episodes, turns, teacher calls, tokens).

    python tools/iteration_cost.py --config configs/qwen3_4b.py:dagger \
        [--mean-turns 40] [--tokens-per-turn 1000] [--markdown]

The two assumptions are stated in dagger_jax/reports/cost.py; the rest comes from the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from dagger_jax.config_base import load_config_file
from dagger_jax.reports.cost import iteration_cost
from dagger_jax.settings import loop_settings, recipe_run


def load_config(spec: str):
    try:
        return load_config_file(spec)
    except FileNotFoundError as e:
        raise SystemExit(f"iteration_cost: {e}") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="FILE[:RECIPE], as main's --config")
    parser.add_argument("--mean-turns", type=float, default=40.0)
    parser.add_argument("--tokens-per-turn", type=float, default=1000.0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if not config.loop.enabled:
        raise SystemExit(f"iteration_cost: {args.config} runs no loop (name a recipe: FILE:dagger)")
    # The loop's plan only: where the teacher will be served does not change what it costs.
    loop = loop_settings(config, recipe_run(config))
    rows = [iteration_cost(loop, i, args.mean_turns, args.tokens_per_turn)
            for i in range(1, config.loop.iterations + 1)]
    if not args.markdown:
        for row in rows:
            print(json.dumps(dataclasses.asdict(row)))
        return 0
    print(f"| {config.loop.recipe} iteration | beta | episodes | turns | teacher calls | "
          "its training tokens per epoch | (one example per labelled turn) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.iteration} | {r.beta:g} | {r.episodes:,} | {r.turns:,} | {r.teacher_calls:,} | "
              f"{r.training_tokens / 1e6:,.1f}M | {r.training_tokens_per_turn_examples / 1e6:,.1f}M |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
