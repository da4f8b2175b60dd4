"""The per-iteration cost table: worked out from the config, checked against hand arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagger_jax.reports.cost import iteration_cost
from dagger_jax.settings import loop_settings, recipe_run


def plan(config):
    return loop_settings(config, recipe_run(config))
from tools.iteration_cost import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_paper_configs_give_the_papers_loop():
    for name in ("qwen3_4b", "qwen3_8b"):
        config = load_config(str(ROOT / "configs" / f"{name}.py") + ":dagger")
        assert config.loop.enabled and config.loop.iterations == 5
        assert config.loop.tasks_per_iteration == 512 and config.loop.epochs == 3
        assert (config.loop.temperature, config.loop.top_p) == (0.7, 0.9)
        assert config.loop.context_budget == 65_536 and config.loop.max_turns == 100
        assert config.train.lr == 3e-6 and config.train.batch_size == 16
        assert config.loop.teacher_model == "Qwen/Qwen3-Coder-30B-A3B-Instruct"
    assert not load_config(str(ROOT / "configs" / "qwen3_4b.py")).loop.enabled


def test_costs_by_hand():
    config = load_config(str(ROOT / "configs" / "qwen3_4b.py") + ":dagger")
    second = iteration_cost(plan(config), 2, mean_turns=10, tokens_per_turn=100)
    assert second.beta == 0.8 and second.episodes == 512 and second.turns == 5120
    assert second.teacher_calls == 5120 and second.student_calls == round(5120 * 0.2)
    # trunk 11 * 100 + 0.2 * 100 * 11 * 12 / 2 per episode
    assert second.training_tokens == round(512 * (1100 + 0.2 * 6600))
    assert second.training_tokens_per_turn_examples == 512 * 6600
    capped = iteration_cost(plan(config), 1, mean_turns=500, tokens_per_turn=1000)
    assert capped.turns == 512 * 64  # 65 turns of 1000 tokens would overflow the 64K budget
    opd = load_config(str(ROOT / "configs" / "qwen3_4b.py") + ":opd")
    assert iteration_cost(plan(opd), 1, 10, 100).teacher_calls == 5120  # one scoring call per turn


def test_the_tool_prints_a_table():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "iteration_cost.py"), "--config",
                           str(ROOT / "configs" / "qwen3_8b.py") + ":sft", "--markdown"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 7 and "| 1 | 1 | 512 |" in done.stdout
