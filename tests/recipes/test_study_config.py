"""configs/local_study.py (the demo's family) and configs/studies/decoys.py (make study): each
is the config it builds on with its study's knobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dagger_jax.config_base import load_config_file
from dagger_jax.envs.tasks.sets import load_task_sets
from dagger_jax.recipes.recipes import RECIPES
from dagger_jax.recipes.schedules import make_schedule
from dagger_jax.settings import parse_label_budgets, recipe_run, task_settings, teacher_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def study(recipe: str):
    return load_config_file(f"{CONFIGS / 'local_study.py'}:{recipe}")


def decoy_family(recipe: str):
    return load_config_file(f"{CONFIGS / 'studies' / 'decoys.py'}:{recipe}")


def load_tasks(config):
    sets = load_task_sets(task_settings(config.tasks))
    return list(sets.train), list(sets.heldout)


def test_the_study_family_differs_from_the_demo_only_in_its_knobs():
    config, demo = study("dagger"), load_config_file(f"{CONFIGS / 'local.py'}:dagger")
    assert config.model == demo.model and config.loop.recipe == "dagger"
    assert parse_label_budgets(config.loop.label_budgets, config.loop.label_budget,
                               config.loop.iterations) == (160, 80, 80)
    schedule = make_schedule(config.loop.schedule, json.loads(config.loop.schedule_params))
    assert [schedule(i) for i in (1, 2, 3)] == pytest.approx([1.0, 0.65, 0.3])
    assert config.loop.takeover_unparseable and config.train.loss_tokens == 448
    assert config.train.round_schedule == "cosine"
    assert not demo.loop.takeover_unparseable and demo.train.loss_tokens == 0
    assert not demo.train.round_schedule
    train, heldout = load_tasks(config)
    assert len(train) == 180 and len(heldout) == config.eval.num_tasks == 48
    assert all(t.repo_files["ledger/core.py"].count("def ") == 1 for t in train + heldout)


def test_takeover_only_where_the_teacher_labels_actions():
    # The config names opd and grpo instead of asking the recipes package (configs do not import
    # it); this keeps that list in step with the recipes' own labels.
    for name, recipe in RECIPES.items():
        assert study(name).loop.takeover_unparseable == (recipe.label == "action"), name
    with pytest.raises(ValueError, match="does not exist"):
        recipe_run(study("daggerr"))


def test_the_decoy_family_is_the_study_config_on_decoy_tasks():
    config = decoy_family("dagger")
    base = study("dagger")
    assert config.model == base.model and config.train == base.train
    assert parse_label_budgets(config.loop.label_budgets, config.loop.label_budget,
                               config.loop.iterations) == (160, 80, 80, 80, 80, 80)
    schedule = make_schedule(config.loop.schedule, json.loads(config.loop.schedule_params))
    assert [schedule(i) for i in range(1, 7)] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert config.loop.first_round_epochs == 6 and config.eval.from_iteration == 5
    assert teacher_spec(config.loop) == {"kind": "expert", "search": "definitions"}
    train, heldout = load_tasks(config)
    assert len(train) == 340 and len(heldout) == 96 == config.eval.num_tasks
    for task in train[:20] + heldout:
        modules = [p for p in task.repo_files if p.startswith("ledger/") and p != "ledger/__init__.py"]
        decoys = [p for p in modules if "def " not in task.repo_files[p]]
        assert len(modules) == 2 and len(decoys) == 1, modules
        # The issue names the function, not the file.
        assert task.metadata["target_function"] in task.problem_statement
        assert task.metadata["target_file"] not in task.problem_statement
    assert decoy_family("sft").loop.recipe == "sft"
