"""The demo's per-run configs and its comparison of recipes across seeds (the loop runs
themselves are tested in test_loop_resume.py and the end-to-end rollout tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagger_jax.config_base import load_config_file
from dagger_jax.demo import comparison, print_comparison, run_config

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def local_config(arg: str):
    return load_config_file(f"{ROOT / 'configs' / 'local.py'}:{arg}")


def test_each_run_gets_its_recipe_and_seed_and_the_same_heldout_tasks():
    base = local_config("dagger")
    sft, dagger = run_config(base, "sft", 2), run_config(base, "dagger", 2)
    assert (sft.loop.recipe, dagger.loop.recipe) == ("sft", "dagger")
    assert sft.seed == dagger.seed == base.seed + 2
    assert sft.tasks.train_seed == base.tasks.train_seed + 2
    assert sft.tasks.heldout_seed == run_config(base, "sft", 0).tasks.heldout_seed
    assert sft.loop.label_budget == dagger.loop.label_budget > 0  # compared at equal labels
    with pytest.raises(ValueError, match="recipe 'dagge' does not exist"):
        run_config(base, "dagge", 0)
    with pytest.raises(AttributeError):  # still locked: a misspelt key is an error
        sft.loop.lable_budget = 3


def rows(*rates):
    return [{"iteration": i + 1, "resolve_rate": r} for i, r in enumerate(rates)]


def test_comparison_uses_the_last_iteration_and_the_wider_spread():
    histories = {("sft", 0): rows(0.1, 0.2), ("sft", 1): rows(0.0, 0.3),
                 ("dagger", 0): rows(0.1, 0.6), ("dagger", 1): rows(0.2, 0.5)}
    summary = comparison(histories)
    assert summary["final_resolve_rate"] == {"dagger": [0.6, 0.5], "sft": [0.2, 0.3]}
    assert summary["dagger_minus_sft"] == pytest.approx(0.3)
    assert summary["spread"] == pytest.approx(0.1)
    assert summary["dagger_beats_sft_beyond_spread"] is True
    histories[("dagger", 2)] = rows(0.0, 0.25)  # one bad seed: spread 0.35 > gap
    summary = comparison(histories)
    assert summary["dagger_beats_sft_beyond_spread"] is False
    assert summary["every_dagger_seed_above_every_sft_seed"] is False  # 0.25 < 0.3
    assert summary["recipes"]["dagger"]["seeds"] == 3


def test_one_seed_gives_no_verdict_on_the_spread(capsys):
    histories = {("sft", 0): rows(0.2, 0.6), ("dagger", 0): rows(0.3, 0.8)}
    summary = comparison(histories)
    assert summary["dagger_minus_sft"] == pytest.approx(0.2) and summary["spread"] == 0
    assert summary["dagger_beats_sft_beyond_spread"] is None
    assert summary["every_dagger_seed_above_every_sft_seed"] is True
    print_comparison(histories, summary)
    out = capsys.readouterr().out
    assert "no spread to compare it with" in out and "exceeds" not in out
