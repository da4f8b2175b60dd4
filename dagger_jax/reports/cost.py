"""What one iteration of a recipe costs, worked out from the config and two stated assumptions.

Assumptions (overridable): the mean turns an episode runs (at most loop.max_turns) and the mean
tokens one turn adds to the context (the assistant turn plus its observation). The initial
prompt is counted as one turn's worth of tokens. Then, per episode of T turns with tau tokens
each and the teacher executing a fraction beta of turns:
- teacher calls: one per visited state when the teacher labels (T), else one per teacher-executed
  turn; on-policy distillation scores each student turn (T calls, no sampling); GRPO none;
- training tokens (the packing of data/examples.py): the teacher-executed turns share one
  sequence (at most the whole trunk, (T + 1) tau), and each student-executed turn with a label
  is its own example, prompt + label, (t + 1) tau for turn t; summed over t, about
  (1 - beta) tau (T + 1) (T + 2) / 2. One example per labelled turn instead would cost
  tau (T + 1) (T + 2) / 2 whatever beta is.
The context budget caps T: tau (T + 1) must fit in loop.context_budget.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class IterationCost:
    iteration: int
    beta: float
    episodes: int
    turns: int
    teacher_calls: int
    student_calls: int
    training_tokens: int          # per epoch, with the shared teacher trunk
    training_tokens_per_turn_examples: int   # per epoch, one example per labelled turn
    epochs: int


def iteration_cost(loop: Any, iteration: int, mean_turns: float, tokens_per_turn: float) -> IterationCost:
    """Iteration `iteration` of a run's loop (settings.read_settings(config).loop)."""
    rule = loop.run.rollout_rule(iteration)
    recipe = loop.run.recipe
    fits = int(loop.episode.context_budget // tokens_per_turn) - 1
    turns = max(1.0, min(mean_turns, loop.episode.max_turns, fits))
    episodes = loop.tasks_per_iteration * recipe.group_size
    student_share = 1.0 - rule.beta
    if rule.student_prefix is not None:
        student_share = min(rule.student_prefix, turns) / turns
    all_turns = episodes * turns
    student_turns = all_turns * student_share
    if rule.label == "action":
        teacher_calls = all_turns
    elif rule.label == "logprobs":
        teacher_calls = student_turns
    else:
        teacher_calls = all_turns - student_turns
    triangle = tokens_per_turn * (turns + 1) * (turns + 2) / 2
    if rule.label == "action":
        # The trunk runs to the last teacher-executed turn: near the end whenever beta > 0.
        trunk = (turns + 1) * tokens_per_turn if student_share < 1.0 else 0.0
        per_episode = trunk + student_share * triangle
        per_turn_examples = triangle
    else:  # OPD / GRPO train on the student's own trunk: one sequence per episode
        per_episode = per_turn_examples = (turns + 1) * tokens_per_turn
    return IterationCost(iteration, round(rule.beta, 4), episodes, round(all_turns),
                         round(teacher_calls), round(student_turns), round(episodes * per_episode),
                         round(episodes * per_turn_examples), loop.plan.epochs)
