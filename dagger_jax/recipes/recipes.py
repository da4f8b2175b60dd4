"""The recipes of the unified lens (PAPER.md), declared as data: who acts, who labels, what weight.

Every recipe maximises E_{s ~ p_s, a ~ p_a}[w(s, a) log pi(a | s)]; they differ in the rollout
rule (p_s), the action trained on (p_a) and the weight w. One loop runs them all.
"""

from __future__ import annotations

import dataclasses

from dagger_jax.names import LABELS, WEIGHTS
from dagger_jax.recipes.schedules import Schedule
from dagger_jax.rollout.mixing import RolloutRule

EXECUTORS = ("teacher", "mixture", "student_prefix", "student")
# Teachers that can score the student's tokens (label="logprobs"): a model behind token ids in
# the student's tokenizer. The scripted expert and chat APIs give text only.
TEACHERS_WITH_LOGPROBS = ("sglang",)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    executor: str              # who acts: teacher | mixture (coin, beta) | student_prefix (k) | student
    label: str                 # what the teacher gives: its action | its log-probs | nothing
    weight: str                # one (cross-entropy on labels) | reverse_kl | group_advantage
    success_filter: bool = False   # rejection-sampling SFT: train only on resolved episodes
    aggregate: bool = True     # train on all iterations' data (DAgger) or this iteration's only
    group_size: int = 1        # episodes per task (GRPO's G)

    def __post_init__(self):
        for field, allowed in (("executor", EXECUTORS), ("label", LABELS), ("weight", WEIGHTS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"recipe {self.name}: {field} {getattr(self, field)!r} not in {allowed}")

    @property
    def teacher_gives(self) -> str:
        """What the teacher gives this recipe, as error messages name it."""
        return {"action": "action labels", "logprobs": "log-probs", "none": "no labels"}[self.label]

    def check_teacher(self, teacher: str, endpoints: str = "") -> None:
        """Refuse, at config time, a teacher that cannot give what this recipe asks of it."""
        if self.label != "logprobs":
            return
        if teacher not in TEACHERS_WITH_LOGPROBS:
            raise ValueError(
                f"recipe {self.name!r} needs the teacher's log-probs of the student's sampled "
                f"tokens, and config.loop.teacher={teacher!r} gives none (the scripted expert "
                "and chat APIs return text only): serve an LM teacher and set "
                "config.loop.teacher='sglang' with config.loop.teacher_endpoints=URL[,URL...]")
        if not [u for u in endpoints.split(",") if u]:
            raise ValueError(f"recipe {self.name!r}: config.loop.teacher={teacher!r} needs "
                             "config.loop.teacher_endpoints (comma-separated SGLang URLs)")



@dataclasses.dataclass(frozen=True)
class RecipeRun:
    """A recipe with this run's rollout knobs: the one place an iteration's rollout rule (who
    executes each turn, what the teacher gives) is decided. Nothing amends the rule later.

    beta_i comes from `schedule` for the mixture recipe (DAgger); the teacher recipes act with
    beta 1 and the student recipes with beta 0. AggreVaTe's student prefix is
    k_i = prefix_start + prefix_step (i - 1).
    """

    recipe: Recipe
    schedule: Schedule
    prefix_start: int = 2
    prefix_step: int = 2
    takeover_unparseable: bool = False

    def __post_init__(self) -> None:
        if self.takeover_unparseable and self.recipe.label != "action":
            raise ValueError(
                f"config.loop.takeover_unparseable=True but recipe {self.recipe.name!r} gets "
                f"{self.recipe.teacher_gives} from the teacher: a takeover executes the teacher's "
                "action label, which only the action-label recipes (sft, rs_sft, dagger, aggrevate) "
                "ask for")
        if self.prefix_start < 0 or self.prefix_step < 0:
            raise ValueError(f"config.loop.prefix_start={self.prefix_start} and prefix_step="
                             f"{self.prefix_step} must be >= 0")

    def beta(self, iteration: int) -> float:
        """The teacher's probability per turn at iteration `iteration` (1-based)."""
        if self.recipe.executor == "mixture":
            return self.schedule(iteration)
        return 1.0 if self.recipe.executor == "teacher" else 0.0

    def rollout_rule(self, iteration: int) -> RolloutRule:
        """Iteration `iteration`'s rule, complete."""
        prefix = (self.prefix_start + self.prefix_step * (iteration - 1)
                  if self.recipe.executor == "student_prefix" else None)
        return RolloutRule(beta=self.beta(iteration), student_prefix=prefix, label=self.recipe.label,
                           takeover_unparseable=self.takeover_unparseable)

    def student_acts(self, iteration: int) -> bool:
        """Whether the student executes any turn of iteration `iteration`'s episodes."""
        rule = self.rollout_rule(iteration)
        return rule.beta < 1.0 or rule.student_prefix is not None


RECIPES = {r.name: r for r in (
    Recipe("sft", executor="teacher", label="action", weight="one"),
    Recipe("rs_sft", executor="teacher", label="action", weight="one", success_filter=True),
    Recipe("dagger", executor="mixture", label="action", weight="one"),
    Recipe("aggrevate", executor="student_prefix", label="action", weight="one"),
    Recipe("opd", executor="student", label="logprobs", weight="reverse_kl", aggregate=False),
    Recipe("grpo", executor="student", label="none", weight="group_advantage", aggregate=False,
           group_size=4),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} does not exist; choose from {sorted(RECIPES)}")
    return RECIPES[name]
