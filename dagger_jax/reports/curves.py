"""Resolve rate and the covariate-shift measure per iteration, several runs side by side.

Left: held-out resolve rate. Right: the student's NLL of teacher labels on the states it visits
itself (solid) and on the teacher's states (dashed); their gap is the covariate shift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a training host
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dagger_jax.storage import layout  # noqa: E402

X_AXES = ("iteration", "labelled_turns")


def evaluated_history(workdir: Path) -> list[dict]:
    """The evaluated iterations of a loop workdir's state.json; ValueError when there are none."""
    path = layout.state_file(workdir)
    if not path.is_file():
        raise ValueError(f"{workdir} has no state.json (not a loop workdir, or not started)")
    rows = [r for r in json.loads(path.read_text()).get("history", []) if "resolve_rate" in r]
    if not rows:
        raise ValueError(f"{path} has no evaluated iteration yet")
    return rows


def nll_scale(values: Sequence[float]) -> str:
    """"log" when the NLLs span ten times or more (SFT's own-state NLL can be hundreds of times
    its teacher-state one, and a linear axis flattens every DAgger line at zero), else "linear"."""
    values = [v for v in values if v is not None]
    if values and min(values) > 0 and max(values) >= 10 * min(values):
        return "log"
    return "linear"


def draw_curves(runs: Sequence[tuple[str, list[dict]]], out: Path, x: str = "iteration") -> Path:
    """Draws (label, history rows) runs into the PNG `out`."""
    if x not in X_AXES:
        raise ValueError(f"x axis {x!r}: choose from {X_AXES}")
    fig, (resolve, shift) = plt.subplots(1, 2, figsize=(11, 4))
    if all(len(rows) == 1 for _, rows in runs):
        # Each run evaluated once (the demo evaluates its last iteration only): dots at nearly
        # equal x values read as noise, so one bar per run instead.
        _draw_bars(runs, resolve, shift)
        return _save(fig, out)
    every_x, every_nll = [], []
    for label, rows in runs:
        xs = [r.get(x, i + 1) for i, r in enumerate(rows)]
        every_x += xs
        line, = resolve.plot(xs, [r["resolve_rate"] for r in rows], marker="o", label=label)
        # Own and teacher states told apart by marker too: a run evaluated once has no line.
        for key, style, marker in (("nll_student_states", "-", "o"), ("nll_teacher_states", "--", "x")):
            points = [(px, r[key]) for px, r in zip(xs, rows) if r.get(key) is not None]
            every_nll += [value for _, value in points]
            if points:
                shift.plot(*zip(*points), style, marker=marker, color=line.get_color(),
                           label=f"{label}: {'own' if 'student' in key else 'teacher'} states")
    resolve.set(title="held-out resolve rate", xlabel=x.replace("_", " "), ylim=(-0.02, 1.02))
    shift.set(title="student NLL of teacher labels", xlabel=x.replace("_", " "), ylabel="nats / token",
              yscale=nll_scale(every_nll))
    for axis in (resolve, shift):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations, labelled turns
        if max(every_x) - min(every_x) < 2:  # one evaluated iteration: whole numbers around it
            axis.set_xlim(min(every_x) - 1, max(every_x) + 1)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _save(fig, out)


def _draw_bars(runs: Sequence[tuple[str, list[dict]]], resolve, shift) -> None:
    """One evaluated iteration per run: its resolve rate, and its own- and teacher-state NLLs
    side by side (a log scale: SFT's own-state NLL can be hundreds of times its teacher-state one)."""
    labels = [label for label, _ in runs]
    rows = [run_rows[0] for _, run_rows in runs]
    positions = range(len(runs))
    bars = resolve.bar(positions, [r["resolve_rate"] for r in rows], color=[f"C{i}" for i in positions])
    resolve.bar_label(bars, fmt="%.3f", fontsize=8)
    iterations = {r.get("iteration") for r in rows}
    when = f"iteration {iterations.pop()}" if len(iterations) == 1 else "each run's evaluated iteration"
    resolve.set(title=f"held-out resolve rate ({when})", ylim=(0, 1.05))
    width = 0.4
    for offset, key, hatch, name in ((-width / 2, "nll_student_states", "", "own states"),
                                     (width / 2, "nll_teacher_states", "//", "teacher states")):
        values = [r.get(key) for r in rows]
        shown = [(i + offset, v) for i, v in zip(positions, values) if v is not None]
        if shown:
            xs, ys = zip(*shown)
            drawn = shift.bar(xs, ys, width, hatch=hatch, label=name, edgecolor="black",
                              color=[f"C{round(px - offset)}" for px in xs])
            shift.bar_label(drawn, fmt="%.3g", fontsize=8)
    shift.set(title="student NLL of teacher labels", ylabel="nats / token", yscale="log")
    for axis in (resolve, shift):
        axis.set_xticks(list(positions), labels)
        axis.grid(alpha=0.3, axis="y")
    shift.legend(fontsize=8)


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
