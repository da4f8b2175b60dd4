"""Writes tasks as JSONL.

    python tools/make_tasks.py --source synthetic --n 100 --seed 0 --out tasks.jsonl \
        [--split train|heldout] [--files 2 --functions-per-file 3 --distractors 1 --hide-location]

Only the synthetic source exists so far; `--source pypi` (bug-injected real packages) and
SWE-bench instances are not implemented yet and are refused here rather than half-done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dagger_jax.envs.tasks.synthetic import Difficulty, generate_tasks
from dagger_jax.envs.tasks.task import SPLITS, write_tasks

IMPLEMENTED_SOURCES = ("synthetic",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=("synthetic", "pypi"))
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--functions-per-file", type=int, default=2)
    parser.add_argument("--distractors", type=int, default=0)
    parser.add_argument("--hide-location", action="store_true",
                        help="the problem statement does not name the buggy file")
    args = parser.parse_args(argv)
    if args.source not in IMPLEMENTED_SOURCES:
        print(f"make_tasks: --source {args.source} is not implemented yet "
              f"(implemented: {', '.join(IMPLEMENTED_SOURCES)})", file=sys.stderr)
        return 2
    if args.n <= 0:
        parser.error("--n must be positive")
    difficulty = Difficulty(files=args.files, functions_per_file=args.functions_per_file,
                            distractors=args.distractors, name_location=not args.hide_location)
    count = write_tasks(generate_tasks(args.n, args.seed, args.split, difficulty), args.out)
    print(f"wrote {count} {args.source} tasks ({args.split}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
