"""Draws resolve rate and the covariate-shift measure per iteration for several runs side by side.

    python tools/plot_run.py W1 W2 ... --out curves.png [--x iteration|labelled_turns] [--labels A,B]

Each W is a loop workdir; its `state.json` history (one row per evaluated iteration) is what is
drawn: left, the held-out resolve rate; right, the student's label NLL on its own states (solid)
and on the teacher's (dashed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dagger_jax.reports.curves import X_AXES, draw_curves, evaluated_history
from dagger_jax.storage.store import store_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=store_path,
                        help="loop workdirs: local paths or gs://bucket/path")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--x", choices=X_AXES, default="iteration")
    parser.add_argument("--labels", help="comma-separated names (default: the workdirs' names)")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [w.name for w in args.workdirs]
    if len(labels) != len(args.workdirs):
        parser.error(f"--labels names {len(labels)} runs but {len(args.workdirs)} workdirs are given")
    try:
        runs = [(label, evaluated_history(w)) for w, label in zip(args.workdirs, labels)]
    except ValueError as e:
        raise SystemExit(f"plot_run: {e}") from None
    print(f"wrote {draw_curves(runs, args.out, args.x)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
