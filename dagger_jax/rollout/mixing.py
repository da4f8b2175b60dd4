"""Who executes each turn, and what the teacher gives for it: the recipes' rollout half.

The recipes of the unified lens differ in these two choices only:
- DAgger: an independent coin per turn, teacher with probability beta; the teacher labels
  every visited state with its own action.
- SFT (behaviour cloning): beta = 1, every turn is the teacher's.
- AggreVaTe-style: the student runs the first k turns, the teacher the rest.
- On-policy distillation: the student runs every turn; the teacher scores the student's tokens.
- GRPO: the student runs every turn; no teacher at all (the outcome is the signal).
"""

from __future__ import annotations

import dataclasses
import random

from dagger_jax.names import check_label

STUDENT, TEACHER = "student", "teacher"


@dataclasses.dataclass(frozen=True)
class RolloutRule:
    """beta: the teacher's probability per turn (coin). student_prefix: when set, turns before
    it are the student's and the rest the teacher's (no coin). label: `action` (the teacher's
    action at every state), `logprobs` (the teacher's log-probs of the executed tokens), `none`.
    takeover_unparseable: a student reply with no well-formed tool call is not executed; the
    teacher's label at that state is, so no later state holds the student's malformed text
    (label `action` only; off: the paper's rule, every student reply is executed)."""

    beta: float = 0.0
    student_prefix: int | None = None
    label: str = "action"
    takeover_unparseable: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"RolloutRule.beta must be in [0, 1], got {self.beta!r}")
        if self.student_prefix is not None and self.student_prefix < 0:
            raise ValueError(f"RolloutRule.student_prefix must be >= 0, got {self.student_prefix!r}")
        check_label(self.label, "RolloutRule")
        if self.takeover_unparseable and self.label != "action":
            raise ValueError(f"RolloutRule.takeover_unparseable needs the teacher's action as "
                             f"label (label 'action'), not {self.label!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.label != "none" or self.beta > 0 or self.student_prefix is not None

    def executor(self, turn: int, rng: random.Random) -> str:
        """The executor of turn `turn` (0-based). The coin is drawn every turn, whatever the
        rule, so an episode's seed fixes the same draws under every rule."""
        coin = rng.random()
        if self.student_prefix is not None:
            return STUDENT if turn < self.student_prefix else TEACHER
        return TEACHER if coin < self.beta else STUDENT
