"""Draws resolve rate and the covariate-shift measure per iteration for several runs side by side.

    python tools/plot_run.py W1 W2 ... --out curves.png [--x iteration|labelled_turns] [--labels A,B]

Each W is a loop workdir; its `state.json` history (one row per evaluated iteration) is what is
drawn: left, the held-out resolve rate; right, the student's label NLL on its own states (solid)
and on the teacher's (dashed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training host
import matplotlib.pyplot as plt  # noqa: E402


def history(workdir: Path) -> list[dict]:
    path = workdir / "state.json"
    if not path.is_file():
        raise SystemExit(f"plot_run: {workdir} has no state.json (not a loop workdir, or not started)")
    rows = [r for r in json.loads(path.read_text()).get("history", []) if "resolve_rate" in r]
    if not rows:
        raise SystemExit(f"plot_run: {path} has no evaluated iteration yet")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--x", choices=("iteration", "labelled_turns"), default="iteration")
    parser.add_argument("--labels", help="comma-separated names (default: the workdirs' names)")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [w.name for w in args.workdirs]
    if len(labels) != len(args.workdirs):
        parser.error(f"--labels names {len(labels)} runs but {len(args.workdirs)} workdirs are given")
    fig, (resolve, shift) = plt.subplots(1, 2, figsize=(11, 4))
    for workdir, label in zip(args.workdirs, labels):
        rows = history(workdir)
        xs = [r.get(args.x, i + 1) for i, r in enumerate(rows)]
        line, = resolve.plot(xs, [r["resolve_rate"] for r in rows], marker="o", label=label)
        for key, style in (("nll_student_states", "-"), ("nll_teacher_states", "--")):
            points = [(x, r[key]) for x, r in zip(xs, rows) if r.get(key) is not None]
            if points:
                shift.plot(*zip(*points), style, marker=".", color=line.get_color(),
                           label=f"{label}: {'own' if 'student' in key else 'teacher'} states")
    resolve.set(title="held-out resolve rate", xlabel=args.x.replace("_", " "), ylim=(-0.02, 1.02))
    shift.set(title="student NLL of teacher labels", xlabel=args.x.replace("_", " "),
              ylabel="nats / token")
    for axis in (resolve, shift):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
