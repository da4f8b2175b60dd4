"""Beta schedules, recipes as data, and the loop's refusals at config time."""

from __future__ import annotations

import json

import pytest

from dagger_jax.config_base import base_config
from dagger_jax.envs.tasks.task import write_tasks
from dagger_jax.data.examples import target_of
from dagger_jax.envs.tasks.sets import load_task_sets, same_task_key
from dagger_jax.recipes.loop_settings import TrainingPlan
from dagger_jax.recipes.state import LoopState
from dagger_jax.settings import parse_label_budgets, read_settings, student_sampling, task_settings
from dagger_jax.names import WEIGHTS
from dagger_jax.recipes.recipes import RECIPES, Recipe, RecipeRun, get_recipe
from dagger_jax.train.train_step import batch_keys
from dagger_jax.recipes.schedules import make_schedule
from dagger_jax.storage.store import store_path


def test_the_papers_schedule_and_the_others():
    paper = make_schedule("paper")
    assert [round(paper(i), 6) for i in range(1, 6)] == [1.0, 0.8, 0.6, 0.6, 0.6]
    assert make_schedule("constant", {"value": 0.3})(7) == 0.3
    linear = make_schedule("linear", {"start": 1.0, "end": 0.2, "steps": 4})
    assert [round(linear(i), 6) for i in (1, 3, 5, 9)] == [1.0, 0.6, 0.2, 0.2]
    exponential = make_schedule("exponential", {"start": 1.0, "decay": 0.5, "floor": 0.1})
    assert [exponential(i) for i in (1, 2, 3, 6)] == [1.0, 0.5, 0.25, 0.1]


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="does not exist; choose from"):
        make_schedule("cosine")
    with pytest.raises(ValueError, match=r"value=1.5 is outside \[0, 1\]"):
        make_schedule("constant", {"value": 1.5})
    with pytest.raises(ValueError, match=r"unknown parameters \['floor'\]"):
        make_schedule("linear", {"floor": 0.1})
    with pytest.raises(ValueError, match="iterations count from 1"):
        make_schedule("paper")(0)


def test_recipes_are_data_and_give_rollout_rules():
    assert set(RECIPES) == {"sft", "rs_sft", "dagger", "aggrevate", "opd", "grpo"}
    paper = make_schedule("paper")

    def rule(name, i, **knobs):
        return RecipeRun(get_recipe(name), paper, **knobs).rollout_rule(i)
    assert rule("sft", 3).beta == 1.0 and rule("sft", 3).student_prefix is None  # the teacher acts
    dagger = rule("dagger", 3)
    assert dagger.beta == 0.6 and dagger.label == "action"       # the paper's beta_3
    assert rule("aggrevate", 2, prefix_start=1, prefix_step=2).student_prefix == 3
    assert rule("aggrevate", 2).beta == 0.0
    opd = rule("opd", 1)
    assert opd.beta == 0.0 and opd.label == "logprobs"
    assert rule("grpo", 1).label == "none" and get_recipe("grpo").group_size > 1
    # The rule is complete when the recipe builds it: takeover included, nothing amends it.
    assert rule("dagger", 2, takeover_unparseable=True).takeover_unparseable
    run = RecipeRun(get_recipe("dagger"), paper)
    assert [run.beta(i) for i in (1, 2, 3)] == [1.0, 0.8, 0.6]
    assert not run.student_acts(1) and run.student_acts(2)
    assert RecipeRun(get_recipe("aggrevate"), paper).student_acts(1)
    with pytest.raises(ValueError, match="recipe 'ppo' does not exist"):
        get_recipe("ppo")
    with pytest.raises(ValueError, match=r"recipe bad: weight 'kl' not in"):
        Recipe("bad", executor="student", label="logprobs", weight="kl")
    with pytest.raises(ValueError, match=r"recipe bad: executor 'anyone' not in"):
        Recipe("bad", executor="anyone", label="action", weight="one")
    # Every weight is a train objective and a data weighting: all recipes are trainable.
    assert set(WEIGHTS) == {r.weight for r in RECIPES.values()}
    for weight in WEIGHTS:
        assert batch_keys(weight) and target_of(weight) in ("label", "executed")
    with pytest.raises(ValueError, match="train objective: weight 'kl' not in"):
        batch_keys("kl")
    assert get_recipe("rs_sft").success_filter and get_recipe("grpo").weight == "group_advantage"


def loop_config(recipe: str, **loop):
    config = base_config()
    config.loop.update(dict(enabled=True, recipe=recipe, **loop))
    return config


def test_the_loop_refuses_what_a_recipe_cannot_run_at_config_time(tmp_path):
    # Refused before anything is built (no model config, tokenizer or workdir needed).
    with pytest.raises(ValueError, match="recipe 'opd' needs the teacher's log-probs.*"
                                         "config.loop.teacher='expert'.*teacher='sglang'"):
        read_settings(loop_config("opd"))
    with pytest.raises(ValueError, match="teacher='openai'.*gives none"):
        read_settings(loop_config("opd", teacher="openai", teacher_endpoints="http://x"))
    with pytest.raises(ValueError, match="needs config.loop.teacher_endpoints"):
        read_settings(loop_config("opd", teacher="sglang"))
    config = loop_config("grpo")
    config.train.objective = "one"
    with pytest.raises(ValueError, match="train.objective='one' contradicts recipe 'grpo'.*"
                                         "'group_advantage'"):
        read_settings(config)
    with pytest.raises(ValueError, match="recipe 'ppo' does not exist; choose from"):
        read_settings(loop_config("ppo"))
    with pytest.raises(ValueError, match=r"label_budgets='240,60': need 3 budgets >= 0 "
                                         r"\(config.loop.iterations=3\)"):
        read_settings(loop_config("sft", label_budgets="240,60"))
    with pytest.raises(ValueError, match="recipe 'grpo' gets no labels from the teacher.*"
                                         "set config.loop.label_budget=0"):
        read_settings(loop_config("grpo", label_budget=100))
    with pytest.raises(ValueError, match="recipe 'opd' gets log-probs"):
        read_settings(loop_config("opd", label_budgets="0,10,0", teacher="sglang",
                         teacher_endpoints="http://t:1"))
    with pytest.raises(ValueError, match="stuck_repeats must be 0"):
        read_settings(loop_config("sft", stuck_repeats=-1))
    with pytest.raises(ValueError, match="takeover_unparseable=True but recipe 'grpo' gets no "
                                         "labels.*only the action-label recipes"):
        read_settings(loop_config("grpo", takeover_unparseable=True))
    with pytest.raises(ValueError, match=r"earlier_epochs=3 must be -1 \(all epochs\) or "
                                         r"between 0 and config.loop.epochs=2"):
        read_settings(loop_config("dagger", epochs=2, earlier_epochs=3))
    with pytest.raises(ValueError, match=r"first_round_epochs=0 must be -1 "):
        read_settings(loop_config("dagger", first_round_epochs=0))
    with pytest.raises(ValueError, match=r"expert_search='names': choose from"):
        read_settings(loop_config("dagger", expert_search="names"))
    never = loop_config("sft")
    never.eval.from_iteration = 0
    with pytest.raises(ValueError, match=r"eval.from_iteration=0 must be >= 1"):
        read_settings(never)
    assert not any(tmp_path.iterdir())


def test_on_policy_recipes_sample_the_policy_itself(tmp_path):
    loop = base_config().loop
    for name in ("opd", "grpo"):
        sampled = student_sampling(loop, get_recipe(name), greedy=False)
        assert (sampled.temperature, sampled.top_p) == (1.0, 1.0)
    dagger = student_sampling(loop, get_recipe("dagger"), greedy=False)
    assert (dagger.temperature, dagger.top_p) == (0.7, 0.9)  # PAPER.md's rollout setting
    assert student_sampling(loop, get_recipe("opd"), greedy=True).temperature == 0.0
    loop.on_policy_sampling = "rollout"
    assert student_sampling(loop, get_recipe("grpo"), greedy=False).temperature == 0.7
    with pytest.raises(ValueError, match=r"on_policy_sampling='tempered': choose from"):
        read_settings(loop_config("grpo", on_policy_sampling="tempered"))


def test_training_plan_per_round():
    plan = TrainingPlan(epochs=2, earlier_epochs=1)
    # (new iteration's data only, epochs): one epoch over all the data, then one over the new.
    assert plan.passes(1) == [(False, 2)]
    assert plan.passes(3) == [(False, 1), (True, 1)]
    assert TrainingPlan(epochs=2, earlier_epochs=1, aggregate=False).passes(3) == [(False, 2)]
    first = TrainingPlan(epochs=2, earlier_epochs=1, first_round_epochs=6)  # round 1 only
    assert first.passes(1) == [(False, 6)]
    assert TrainingPlan(epochs=2, first_round_epochs=6, aggregate=False).passes(1) == [(False, 6)]
    assert first.passes(2) == [(False, 1), (True, 1)]
    assert TrainingPlan(epochs=2, earlier_epochs=0).passes(2) == [(True, 2)]


def test_label_budgets_per_iteration():
    assert parse_label_budgets("", 100, 3) == (100, 100, 100)
    assert parse_label_budgets("240, 60,0", 100, 3) == (240, 60, 0)  # overrides label_budget
    for bad in ("240,60,x", "240,-1,60", "1,2,3,4"):
        with pytest.raises(ValueError, match="config.loop.label_budgets"):
            parse_label_budgets(bad, 0, 3)
    with pytest.raises(ValueError, match="label_budget must be >= 0"):
        parse_label_budgets("", -5, 3)


def load_tasks(config):
    return load_task_sets(task_settings(config.tasks), config.eval.num_tasks)


def test_overlapping_eval_tasks_are_refused(tmp_path):
    config = base_config()
    config.tasks.update(dict(num_train=6, num_heldout=3, train_seed=4, heldout_seed=4))
    with pytest.raises(ValueError, match=r"eval.num_tasks=16 but there are only 3 held-out tasks"):
        load_tasks(config)
    config.eval.num_tasks = 3
    train, heldout = (lambda t: (list(t.train), list(t.heldout)))(load_tasks(config))  # the synthetic splits are disjoint even at one seed
    assert len(train) == 6 and len(heldout) == 3 and all(t.split == "heldout" for t in heldout)
    write_tasks(train, tmp_path / "train.jsonl")
    write_tasks(train[:2], tmp_path / "eval.jsonl")
    config.tasks.update(dict(source="file", train_path=str(tmp_path / "train.jsonl"),
                             heldout_path=str(tmp_path / "eval.jsonl")))
    with pytest.raises(ValueError, match="evaluation tasks overlap the training tasks"):
        load_tasks(config)
    config.tasks.heldout_path = ""
    with pytest.raises(ValueError, match="tasks.heldout_path is empty"):
        task_settings(config.tasks)


def test_loop_state_round_trips_and_refuses_garbage(tmp_path):
    state = LoopState(iteration=3, phase="train", train_start=10, train_end=30,
                      history=[{"iteration": 1, "resolve_rate": 0.5}])
    state.save(tmp_path)
    assert LoopState.load(tmp_path) == state
    (tmp_path / "state.json").write_text(json.dumps({"iteration": 1, "surprise": True}))
    with pytest.raises(ValueError, match="not a loop state"):
        LoopState.load(tmp_path)


def test_a_narrow_synthetic_family_repeats_fixes_but_never_a_training_repo(monkeypatch):
    config = base_config()
    # One package, one module, four templates: fixes repeat within a few dozen draws.
    config.tasks.update(dict(num_train=64, num_heldout=8, templates=4, bug_kinds="compare,arith",
                             packages=1, numbered_packages=False, modules=1))
    config.eval.num_tasks = 2
    train, heldout = (lambda t: (list(t.train), list(t.heldout)))(load_tasks(config))
    assert len(heldout) == 8
    assert {t.gold_patch for t in train} & {t.gold_patch for t in heldout}  # the family is narrow
    assert not {same_task_key(t) for t in train} & {same_task_key(t) for t in heldout}
    assert [t.instance_id for t in load_tasks(config).heldout] == [t.instance_id for t in heldout]
    # A held-out draw that repeats a training repo is skipped; none left is an error.
    from dagger_jax.envs.tasks import sets as sets_module
    drawn = iter([train[0], heldout[0]] + [train[1]] * 1000)
    monkeypatch.setattr(sets_module, "generate_task", lambda *args: next(drawn))
    config.tasks.num_heldout = 2
    with pytest.raises(ValueError, match="only 1 of 100 held-out synthetic tasks differ from every "
                                         "training task"):
        load_tasks(config)


def test_a_student_fleet_without_export_sidecars_is_refused_with_a_bucket_workdir():
    from dagger_jax.main import refuse_remote_loop_parts
    from tests.recipes.test_loop_service import MODEL
    bucket = store_path("gs://bucket/run")

    def settings(recipe, **loop):
        config = loop_config(recipe, **loop)
        config.model.update(MODEL)
        return read_settings(config)

    with pytest.raises(ValueError, match=r"gs://bucket/run: the student servers .* cannot read "
                                         r"exports in a bucket; start an export sidecar"):
        refuse_remote_loop_parts(settings("dagger", student_endpoints="http://s:1"), bucket)
    refuse_remote_loop_parts(settings("dagger", student_endpoints="http://s:1",
                                      student_loaders="http://s:2"), bucket)
    refuse_remote_loop_parts(settings("dagger"), bucket)  # the in-process student
    refuse_remote_loop_parts(settings("sft", rollout_service="http://r:1"), bucket)
