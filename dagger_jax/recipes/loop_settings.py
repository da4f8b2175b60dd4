"""What the outer loop is told, frozen: the recipe run (rollout rules), the label budgets, the
training plan of each round, collection and evaluation. Built once by the entry point's
settings reader (dagger_jax/settings.py), which also checks the fields against each other."""

from __future__ import annotations

import dataclasses

from dagger_jax.recipes.recipes import RecipeRun
from dagger_jax.rollout.mixed_episode import EpisodeSettings


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """Each round's passes over the data: `epochs` per round; of them `earlier_epochs` (-1: all)
    also cover earlier iterations' data when the recipe aggregates; round 1 trains
    `first_round_epochs` (-1: `epochs`) on iteration 1's data."""

    epochs: int = 3
    earlier_epochs: int = -1
    first_round_epochs: int = -1
    aggregate: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"config.loop.epochs={self.epochs} must be >= 1")
        if not (self.earlier_epochs == -1 or 0 <= self.earlier_epochs <= self.epochs):
            raise ValueError(f"config.loop.earlier_epochs={self.earlier_epochs} must be -1 (all "
                             f"epochs) or between 0 and config.loop.epochs={self.epochs}")
        if not (self.first_round_epochs == -1 or self.first_round_epochs >= 1):
            raise ValueError(f"config.loop.first_round_epochs={self.first_round_epochs} must be "
                             "-1 (config.loop.epochs) or >= 1")

    def passes(self, i: int) -> list[tuple[bool, int]]:
        """Round i's passes as (new iteration's data only, epochs), in the order they train."""
        if i == 1:
            return [(False, self.epochs if self.first_round_epochs == -1 else self.first_round_epochs)]
        earlier = self.epochs if self.earlier_epochs == -1 else self.earlier_epochs
        if not self.aggregate or earlier == self.epochs:
            return [(False, self.epochs)]
        return ([(False, earlier)] if earlier else []) + [(True, self.epochs - earlier)]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    enabled: bool = True
    num_tasks: int = 16
    from_iteration: int = 1        # the first iteration evaluated (the last always is)
    shift_states: int = 32         # states sampled for the covariate-shift measure
    episode: EpisodeSettings = EpisodeSettings()

    def __post_init__(self) -> None:
        if self.from_iteration < 1:
            raise ValueError(f"config.eval.from_iteration={self.from_iteration} must be >= 1; "
                             "to skip evaluation set config.eval.enabled=False")
        if self.enabled and self.num_tasks < 1:
            raise ValueError(f"config.eval.num_tasks={self.num_tasks} must be >= 1 (or set "
                             "config.eval.enabled=False)")

    def evaluates(self, i: int, iterations: int) -> bool:
        return self.enabled and i >= min(self.from_iteration, iterations)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    run: RecipeRun
    iterations: int
    label_budgets: tuple[int, ...]     # one per iteration; 0: unbounded
    plan: TrainingPlan
    episode: EpisodeSettings
    eval: EvalSettings
    tasks_per_iteration: int = 16
    concurrency: int = 4
    seed: int = 0
    teacher_id: str = "expert"
    cap_trained_labels: bool = True    # train on whole episodes up to each iteration's budget
    rollout_service: str = ""          # URL; empty: collect in this process
    sandbox: str = "bwrap"
    progress: bool = True
    barrier_timeout_s: float = 86400.0  # how long the other processes wait for the leader

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"config.loop.iterations={self.iterations} must be >= 1")
        if len(self.label_budgets) != self.iterations or min(self.label_budgets) < 0:
            raise ValueError(f"label budgets {self.label_budgets}: need {self.iterations} "
                             "budgets >= 0, one per iteration")
        for key in ("tasks_per_iteration", "concurrency"):
            if getattr(self, key) < 1:
                raise ValueError(f"config.loop.{key}={getattr(self, key)} must be >= 1")
        for i in range(1, self.iterations + 1):  # every rule is checked before anything runs
            self.run.rollout_rule(i)
