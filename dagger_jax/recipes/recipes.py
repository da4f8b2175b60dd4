"""The recipes of the unified lens (PAPER.md), declared as data: who acts, who labels, what weight.

Every recipe maximises E_{s ~ p_s, a ~ p_a}[w(s, a) log pi(a | s)]; they differ in the rollout
rule (p_s), the action trained on (p_a) and the weight w. One loop runs them all.
"""

from __future__ import annotations

import dataclasses

from dagger_jax.rollout.mixing import RolloutRule

EXECUTORS = ("teacher", "mixture", "student_prefix", "student")
LABELS = ("action", "logprobs", "none")
# The weight is also the train objective's name (train/loss.py) and the data pipeline's
# weighting (data/examples.py): one | reverse_kl | group_advantage.
WEIGHTS = ("one", "reverse_kl", "group_advantage")
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
    uses_beta: bool = False    # whether the beta schedule applies

    def __post_init__(self):
        for field, allowed in (("executor", EXECUTORS), ("label", LABELS), ("weight", WEIGHTS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"recipe {self.name}: {field} {getattr(self, field)!r} not in {allowed}")

    def rollout_rule(self, beta: float, student_prefix: int = 0) -> RolloutRule:
        """This iteration's rollout rule (beta from the schedule, k for AggreVaTe)."""
        if self.executor == "teacher":
            return RolloutRule(beta=1.0, label=self.label)
        if self.executor == "student":
            return RolloutRule(beta=0.0, label=self.label)
        if self.executor == "student_prefix":
            return RolloutRule(beta=0.0, student_prefix=student_prefix, label=self.label)
        return RolloutRule(beta=beta, label=self.label)

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


RECIPES = {r.name: r for r in (
    Recipe("sft", executor="teacher", label="action", weight="one"),
    Recipe("rs_sft", executor="teacher", label="action", weight="one", success_filter=True),
    Recipe("dagger", executor="mixture", label="action", weight="one", uses_beta=True),
    Recipe("aggrevate", executor="student_prefix", label="action", weight="one"),
    Recipe("opd", executor="student", label="logprobs", weight="reverse_kl", aggregate=False),
    Recipe("grpo", executor="student", label="none", weight="group_advantage", aggregate=False,
           group_size=4),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} does not exist; choose from {sorted(RECIPES)}")
    return RECIPES[name]
