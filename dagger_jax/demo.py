"""The local demo: recipes trained at the same teacher-label budget, compared on held-out tasks.

    python -m dagger_jax.demo --config=configs/local.py:dagger --workdir=W
        [--recipes=sft,dagger] [--seeds=0,1,2] [--jobs=2] [--config.loop.label_budget=N ...]

Each (recipe, seed) is one outer-loop run in `W/<recipe>-seed<N>` (resumable: the same command
picks up where a killed run stopped). The seed sets the student's initialisation, the sampling
and the training tasks; the held-out tasks are the same for every run, so the spread across
seeds is the spread of training. Prints each run's table per iteration as it finishes, then the
comparison, and writes `W/curves.png` and `W/summary.json`. With --jobs=N, N runs go at once,
each in its own process with its log in `W/<recipe>-seed<N>.log` (run_processes.py).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import app, flags

from dagger_jax.log_filters import quiet_library_logs
from dagger_jax.main import _CONFIG, _WORKDIR, initialize_distributed, print_history, run
from dagger_jax.reports.curves import draw_curves
from dagger_jax.run_processes import run_in_processes
from dagger_jax.settings import read_settings

# --config (the loop config every run shares; the recipe is set per run) and --workdir (the
# demo's directory, one subdir per run) are the entry point's flags.
_RECIPES = flags.DEFINE_list("recipes", ["sft", "dagger"], "Recipes to compare.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds; each recipe runs once per seed.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Runs at once, each in its own process (on 2 cores, 2: "
                             "one run trains while the other samples or grades).")
_COMPARE = flags.DEFINE_bool("compare", True, "Print the comparison, write summary.json and "
                             "curves.png (off in the per-run processes --jobs starts).")


def run_config(base: ml_collections.ConfigDict, recipe: str, seed: int) -> ml_collections.ConfigDict:
    """The base config with this run's recipe and seed (the held-out tasks stay fixed)."""
    config = ml_collections.ConfigDict(base.to_dict())
    config.loop.enabled = True
    config.loop.recipe = recipe
    config.seed = base.seed + seed
    config.tasks.train_seed = base.tasks.train_seed + seed
    config.lock()
    read_settings(config)  # a bad recipe or setting fails before any run starts
    return config


def final_rates(histories: dict[tuple[str, int], list[dict]]) -> dict[str, list[float]]:
    """recipe -> held-out resolve rate after the last iteration, one per seed."""
    out: dict[str, list[float]] = {}
    for (recipe, _), rows in sorted(histories.items()):
        evaluated = [r for r in rows if "resolve_rate" in r]
        if evaluated:
            out.setdefault(recipe, []).append(evaluated[-1]["resolve_rate"])
    return out


def comparison(histories: dict[tuple[str, int], list[dict]]) -> dict[str, Any]:
    """Mean, min, max per recipe and, for sft vs dagger, whether the gap exceeds the spread."""
    rates = final_rates(histories)
    summary: dict[str, Any] = {"final_resolve_rate": rates, "recipes": {}}
    for recipe, values in rates.items():
        summary["recipes"][recipe] = dict(mean=statistics.fmean(values), min=min(values),
                                          max=max(values), seeds=len(values))
    if "sft" in rates and "dagger" in rates:
        spread = max(max(v) - min(v) for v in (rates["sft"], rates["dagger"]))
        gap = summary["recipes"]["dagger"]["mean"] - summary["recipes"]["sft"]["mean"]
        # One seed has no spread: a gap over 0 says nothing, so there is no verdict (None).
        seeded = min(len(rates["sft"]), len(rates["dagger"])) >= 2
        summary.update(dagger_minus_sft=gap, spread=spread,
                       dagger_beats_sft_beyond_spread=gap > spread if seeded else None,
                       every_dagger_seed_above_every_sft_seed=min(rates["dagger"]) > max(rates["sft"]))
    return summary


def print_comparison(histories: dict[tuple[str, int], list[dict]], summary: dict[str, Any]) -> None:
    columns = ("recipe", "seed", "iteration", "beta", "labelled_turns", "trained_labels",
               "resolve_rate", "submission_rate", "parse_error_rate", "mean_turns", "loop_rate",
               "nll_student_states", "nll_teacher_states")
    print("\n" + " ".join(f"{c:>14}" for c in columns))
    for (recipe, seed), rows in sorted(histories.items()):
        for row in rows:
            values = {"recipe": recipe, "seed": seed, **row}
            print(" ".join(f"{values[c]:>14.4g}" if isinstance(values.get(c), float)
                           else f"{str(values.get(c, '-')):>14}" for c in columns))
    print()
    for recipe, stats in summary["recipes"].items():
        rates = ", ".join(f"{r:.3f}" for r in summary["final_resolve_rate"][recipe])
        print(f"{recipe:>8}: final held-out resolve rate per seed [{rates}]  mean {stats['mean']:.3f}  "
              f"spread {stats['max'] - stats['min']:.3f}")
    if "dagger_minus_sft" in summary:
        beyond = summary["dagger_beats_sft_beyond_spread"]
        if beyond is None:
            print(f"DAgger - SFT = {summary['dagger_minus_sft']:+.3f} with one seed of a recipe: no "
                  "spread to compare it with (the seed study: --seeds=0,1,2)")
        else:
            verdict = "exceeds" if beyond else "does NOT exceed"
            print(f"DAgger - SFT = {summary['dagger_minus_sft']:+.3f}, which {verdict} the spread "
                  f"across seeds ({summary['spread']:.3f})")


def run_each_in_a_process(configs: dict[tuple[str, int], ml_collections.ConfigDict],
                          workdir: Path, jobs: int) -> None:
    """Each (recipe, seed) as this command restricted to it (absl keeps the last value of a
    repeated flag), `jobs` at a time; prints each run's table as it finishes."""
    names = {f"{recipe}-seed{seed}": (recipe, seed) for recipe, seed in configs}
    commands = {name: [sys.executable, "-m", "dagger_jax.demo", *sys.argv[1:], f"--recipes={recipe}",
                       f"--seeds={seed}", "--jobs=1", "--nocompare"]
                for name, (recipe, seed) in names.items()}
    logs = {name: workdir / f"{name}.log" for name in names}
    print(f"{len(names)} runs, {jobs} at a time; logs: {workdir}/<recipe>-seed<N>.log", flush=True)

    def done(name: str) -> None:
        print(f"\n=== {name} done: {workdir / name}", flush=True)
        state = json.loads((workdir / name / "state.json").read_text())
        print_history(names[name][0], state["history"])
        sys.stdout.flush()

    run_in_processes(commands, logs, jobs, on_done=done)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    base = _CONFIG.value
    initialize_distributed(base)
    workdir = Path(_WORKDIR.value)
    # Compiled programs persist beside the demo's workdirs: a resumed or repeated demo skips
    # the compiles (tens of seconds of its budget on 2 cores).
    jax.config.update("jax_compilation_cache_dir", str(workdir.resolve().parent / ".xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    seeds = [int(s) for s in _SEEDS.value]
    configs = {(recipe, seed): run_config(base, recipe, seed) for seed in seeds for recipe in _RECIPES.value}
    if _JOBS.value > 1 and len(configs) > 1:
        if jax.process_count() > 1:
            raise app.UsageError("--jobs > 1 runs on one machine; a multi-host demo runs with --jobs=1")
        run_each_in_a_process(configs, workdir, _JOBS.value)
    else:
        for (recipe, seed), config in configs.items():
            print(f"\n=== {recipe}, seed {seed}: {workdir / f'{recipe}-seed{seed}'}", flush=True)
            run(config, workdir / f"{recipe}-seed{seed}")
    if not _COMPARE.value or jax.process_index() != 0:
        return
    histories = {key: json.loads((workdir / f"{key[0]}-seed{key[1]}" / "state.json").read_text())["history"]
                 for key in configs}
    summary = comparison(histories)
    print_comparison(histories, summary)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    runs = [(f"{recipe} seed {seed}", [r for r in rows if "resolve_rate" in r])
            for (recipe, seed), rows in sorted(histories.items())]
    runs = [(label, rows) for label, rows in runs if rows]
    if runs:
        print(f"wrote {draw_curves(runs, workdir / 'curves.png', x='labelled_turns')}")


if __name__ == "__main__":
    app.run(main)
