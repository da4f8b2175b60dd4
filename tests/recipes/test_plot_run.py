"""tools/plot_run.py draws real loop histories (state.json as the loop writes it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagger_jax.reports.curves import nll_scale
from dagger_jax.recipes.state import LoopState

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "plot_run.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_plots_several_runs_and_refuses_a_non_loop_dir(tmp_path):
    for name, rates in (("sft", [0.1, 0.2]), ("dagger", [0.1, 0.4])):
        history = [{"iteration": i + 1, "resolve_rate": r, "labelled_turns": 50 * (i + 1),
                    "nll_student_states": 1.0 - r, "nll_teacher_states": 0.5} for i, r in enumerate(rates)]
        (tmp_path / name).mkdir()
        LoopState(iteration=3, history=history).save(tmp_path / name)
    out = tmp_path / "curves.png"
    done = run(str(tmp_path / "sft"), str(tmp_path / "dagger"), "--out", str(out), "--x", "labelled_turns")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    bad = run(str(tmp_path / "nowhere"), "--out", str(out))
    assert bad.returncode != 0 and "has no state.json" in bad.stderr


def test_runs_evaluated_once_are_drawn_as_bars(tmp_path):
    # The demo evaluates only its last iteration; bars, one per run, on a log NLL axis (SFT's
    # own-state NLL can be hundreds of times its teacher-state one), and a run without NLLs.
    for name, row in (("sft", {"resolve_rate": 0.667, "nll_student_states": 2.9, "nll_teacher_states": 0.004}),
                      ("dagger", {"resolve_rate": 0.875, "nll_student_states": 0.02, "nll_teacher_states": 0.01}),
                      ("grpo", {"resolve_rate": 0.5})):
        (tmp_path / name).mkdir()
        LoopState(iteration=3, history=[{"iteration": 3, "labelled_turns": 380, **row}]).save(tmp_path / name)
    out = tmp_path / "bars.png"
    done = run(*(str(tmp_path / n) for n in ("sft", "dagger", "grpo")), "--out", str(out),
               "--x", "labelled_turns")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_the_nll_axis_is_logarithmic_when_the_values_span_ten_times():
    # The decoy study's SFT own-state NLL (2-8 nats) beside DAgger's (0.008-0.13).
    assert nll_scale([2.96, 0.004, 0.017, None]) == "log"
    assert nll_scale([0.9, 0.5, 0.6]) == "linear"
    assert nll_scale([0.0, 3.0]) == "linear"  # a zero has no place on a log axis
    assert nll_scale([]) == "linear"
