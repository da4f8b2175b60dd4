"""The decoy family: configs/local_study.py on tasks whose first look is a guess the student can
recover from, with DAgger's student acting from iteration 2 (docs/studies/04-decoy-family.md has
the study and its results). `make study` runs it for seeds 0-3:

    python -m dagger_jax.demo --config=configs/studies/decoys.py --workdir=W \
        --recipes=sft,dagger --seeds=0,1,2,3 --jobs=2

The issue names the function, not the file, and the package holds the module with the bug beside
a module of constants only (a decoy): the privileged teacher opens the right module at once, so
SFT's student never sees a wrong look, and only DAgger's is labelled there (the teacher lists
the project's functions, then opens the file the hit names). On 2 cores, two at a time, an SFT
run takes ~35 minutes, a DAgger run ~50 (five iterations took 23 and 37; the sixth 11-16).
"""

from pathlib import Path

from dagger_jax.config_base import load_config_file


def get_config(arg: str | None = None):
    # configs/ is not a package: the demo's config is loaded by its path, one folder up.
    c = load_config_file(f"{Path(__file__).parents[1] / 'local_study.py'}:{arg or 'dagger'}")
    c.tasks.update(dict(modules=2, hide_location=True, decoys=1, num_train=340))
    # Six iterations: 160 teacher labels, then 80 per iteration. DAgger's beta is 1, then 0:
    # from iteration 2 its student takes every turn it can parse, so every wrong look it makes
    # is a labelled state. With PAPER.md's five, one seed of three had not learned to copy the
    # listing's path (0.521 vs 0.844, 0.844); the sixth round's labels taught it
    # (docs/studies/04-decoy-family.md).
    c.loop.update(dict(iterations=6, label_budgets="160,80,80,80,80,80", schedule="linear",
                       schedule_params='{"start": 1.0, "end": 0.0, "steps": 1}'))
    # Six epochs of the first 160 labels (40 steps -> 120): the round-1 student's replies parse
    # (loss 0.10 at step 120; 1.07 after 60 steps of 240 labels), so iteration 2 yields student
    # states; with two epochs every turn of iteration 2 was taken over.
    c.loop.first_round_epochs = 6
    # After a wrong look the teacher lists the project's functions instead of grepping for the
    # issue's name: students wrote a memorised synonym of the name, and their grep found nothing.
    c.loop.expert_search = "definitions"
    # 96 held-out tasks: a seed's resolve rate has a sampling error of ~0.05 at 0.5, not 0.07.
    c.tasks.num_heldout = 96
    # Evaluated after iterations 5 and 6 (the fifth: the paper's round count).
    c.eval.update(dict(num_tasks=96, from_iteration=5))
    return c
