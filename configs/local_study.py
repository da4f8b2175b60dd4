"""The demo's and the seed study's family: configs/local.py's student and loop on a task family
where SFT sits clearly between zero and the expert, with DAgger's knobs on (docs/demo.md says why
each; docs/studies/05-family-h-seed-study.md has its seeds).

    make demo   # = python -m dagger_jax.demo --config=configs/local_study.py --workdir=W \
                #       --recipes=sft,dagger --seeds=0 --jobs=2 --config.eval.num_tasks=24
    python -m dagger_jax.demo --config=configs/local_study.py --workdir=W \
        --recipes=sft,dagger --seeds=0,1,2 --jobs=2          # the seed study, 48 held-out tasks

A (recipe, seed) takes 11-15 minutes on 2 cores, two at a time. `:<recipe>` picks the recipe
as in configs/local.py (the demo command's --recipes overrides it); opd and grpo need
`--config.loop.takeover_unparseable=False` when the config was loaded for another recipe.
"""

from pathlib import Path

from dagger_jax.config_base import load_config_file


def get_config(arg: str | None = None):
    recipe = arg or "dagger"
    c = load_config_file(f"{Path(__file__).with_name('local.py')}:{recipe}")
    # One function per file: the file names its fix, and SFT stops collapsing onto one or two
    # fixes (docs/studies/03-one-function-per-file.md). 48 held-out tasks: the resolve rate
    # moves in steps of 1/48, and its sampling error at ~0.7 is 0.07 instead of 24 tasks' 0.09.
    c.tasks.update(dict(functions_per_file=1, num_train=180, num_heldout=48))
    c.eval.update(dict(num_tasks=48, max_turns=8, from_iteration=3))
    # 160 labels from the teacher's own episodes, then 80 per iteration, over fresh windows of
    # 60 tasks; DAgger's beta 1, 0.65, 0.3, so its student acts in ~55 turns of iteration 3.
    c.loop.update(dict(label_budgets="160,80,80", tasks_per_iteration=60, schedule="linear",
                       schedule_params='{"start": 1.0, "end": 0.3, "steps": 2}'))
    # A student reply that does not parse is replaced by the teacher's action (its label), so
    # no later state holds the malformed text; only recipes whose teacher labels actions. opd
    # (the teacher scores tokens) and grpo (no teacher) are the two without action labels, and
    # the loop refuses takeover for them. Named here because configs do not import the recipes.
    c.loop.takeover_unparseable = recipe not in ("opd", "grpo")
    # Each step's loss is summed over ~one SFT batch's targets, not averaged over the batch's
    # own: a batch with few (student-state) labels takes a proportionally smaller step.
    c.train.loss_tokens = 448
    # Each round warms up and decays to 0.1 x lr by its last step: a round whose last batches
    # hold high-loss labels (DAgger's student states) does not end on a full-size step there.
    c.train.round_schedule = "cosine"
    return c
