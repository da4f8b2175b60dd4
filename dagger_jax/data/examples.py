"""Training examples cut from an episode record: context as executed, loss only on targets.

What a recipe trains on (PAPER.md's p_a) decides the target. Recipes that train on the
teacher's action (weight "one": SFT, rejection-sampling SFT, DAgger, AggreVaTe) target labels;
those that train on the student's own sampled tokens (on-policy distillation, GRPO) target the
executed student turns. Label targets come in two kinds, following how a label relates to the
executed trunk:

- label_trunk: a turn whose executed ids are its label already has its label in the trunk:
  every teacher-executed turn (what the teacher said is what was executed) and every student
  turn that said exactly what the teacher would have. All of them share ONE sequence: the trunk
  up to the end of the last such turn, the mask true exactly on those turns' executed tokens.
  (A student turn that agrees with its label trains exactly as a teacher turn at that state
  would: the same context, the same targets. Given its own example it would cost a second copy
  of the prompt, and a batch of such short examples holds fewer labels than a batch of trunks.)
- student_turn: a student-executed turn whose label differs from what was executed gets its
  own sequence: the turn's prompt (trunk_ids[:prompt_len]) followed by its label_ids, the mask
  true exactly on the label.

Executed targets (weights "reverse_kl", "group_advantage") use one kind:

- student_trunk: every student-executed turn is its own target in place, so all of them share
  ONE sequence: the trunk up to the end of the last student turn, the mask true on the tokens
  the student sampled (a turn closed at its token limit ends with an end-of-turn the model did
  not sample: not a target). Per target token the example also carries the sampling log-prob
  (`old_logprobs`) and the recipe's weight (`loss_weights`): reverse_kl, the teacher's minus the
  sampler's log-prob of that token (a turn the teacher did not score has no target);
  group_advantage, the episode's group-normalised advantage.

Every example carries loss_weights; for label targets it is 1.0 exactly where the mask is on,
so the weighted loss of SFT and DAgger is their cross-entropy to the bit.

An example longer than max_len is never truncated (that would silently cut its targets away):
a student_turn example is dropped; the label trunk ends at the last of its turns that fits
and the turns past it are dropped. Either way the dropped labelled turns are counted by reason.

Which examples a record yields, and their lengths, depend only on the record's turn summaries
([executor, prompt_len, executed_end, label length, label executed]); plan_examples works from
those, so the trainer can plan batches from the shard manifests before reading any record.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dagger_jax.data.records import EpisodeRecord
from dagger_jax.names import check_weight

LABEL_TRUNK = "label_trunk"
STUDENT_TURN = "student_turn"
STUDENT_TRUNK = "student_trunk"

# The target each weight (names.WEIGHTS) trains on.
TARGETS = ("label", "executed")
# A teacher log-prob of -inf (the teacher gives the student's token no mass at all) would make
# the loss infinite; it is floored here (e^-20: "the teacher never says this").
TEACHER_LOGPROB_FLOOR = -20.0

# Reasons a labelled turn yields no trained tokens (keys of ExampleStats.dropped).
DROP_STUDENT_TOO_LONG = "student_example_longer_than_max_len"
DROP_TRUNK_PAST_MAX_LEN = "trunk_turn_past_max_len"
DROP_STUDENT_PAST_MAX_LEN = "student_turn_past_max_len"


def target_of(weighting: str) -> str:
    """"label" for weight one (the teacher's action), "executed" for the on-policy weights."""
    check_weight(weighting, "example weighting")
    return "label" if weighting == "one" else "executed"


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """Where one example comes from: its kind, the turns it trains on, its length."""

    kind: str
    turns: tuple[int, ...]
    length: int
    target_tokens: int


@dataclasses.dataclass(frozen=True)
class Example:
    """ids, and per token (the token as a target): mask, weight, sampling log-prob."""

    ids: np.ndarray  # int32 [length]
    loss_mask: np.ndarray  # bool [length]
    kind: str
    turns: tuple[int, ...]
    episode_id: str = ""
    loss_weights: np.ndarray | None = None  # float32 [length]; None: 1.0 where the mask is on
    old_logprobs: np.ndarray | None = None  # float32 [length]; None: 0

    def __len__(self) -> int:
        return len(self.ids)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, mask, weights, old log-probs), the form packing.pack_examples takes."""
        weights = (self.loss_mask.astype(np.float32) if self.loss_weights is None
                   else self.loss_weights)
        old = (np.zeros(len(self.ids), np.float32) if self.old_logprobs is None
               else self.old_logprobs)
        return self.ids, self.loss_mask, weights, old


@dataclasses.dataclass
class ExampleStats:
    """Counts over episodes turned into examples; add them up with `+`."""

    episodes: int = 0
    turns: int = 0
    labelled_turns: int = 0
    label_failures: int = 0  # turns whose teacher call failed: no label, no example
    trained_turns: int = 0  # labelled turns whose label is a target of a kept example
    student_turns_in_trunk: int = 0  # of those, student turns that said their label exactly
    examples: int = 0
    tokens: int = 0  # total length of the kept examples: what training processes
    target_tokens: int = 0  # tokens with the loss mask on
    dropped: Counter = dataclasses.field(default_factory=Counter)  # reason -> labelled turns

    @property
    def tokens_per_labelled_turn(self) -> float:
        """Example tokens per trained label: O(T) for a shared trunk, O(T) each for per-turn
        examples (so O(T^2) per episode); the number the packing benchmark compares."""
        return self.tokens / self.trained_turns if self.trained_turns else 0.0

    def __add__(self, other: ExampleStats) -> ExampleStats:
        fields = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
        }
        return ExampleStats(**fields)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dropped"] = dict(self.dropped)
        out["tokens_per_labelled_turn"] = self.tokens_per_labelled_turn
        return out


def plan_examples(
    summaries: Sequence[Sequence[Any]], max_len: int, target: str = "label"
) -> tuple[list[ExampleSpec], ExampleStats]:
    """The examples that turns with these summaries yield within max_len, and the counts.

    summaries: per turn [executor, prompt_len, executed_end, label length or None], as
    EpisodeRecord.turn_summaries() gives (and the shard manifest stores). target: "label"
    (the teacher's action) or "executed" (the student's own turns; there, labelled_turns
    counts the student-executed turns, the ones that carry a training signal).
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    if target not in TARGETS:
        raise ValueError(f"target {target!r} not in {TARGETS}")
    if target == "executed":
        return _plan_student_trunk(summaries, max_len)
    stats = ExampleStats(episodes=1, turns=len(summaries))
    specs: list[ExampleSpec] = []
    trunk_turns: list[int] = []
    trunk_end = trunk_targets = 0
    for index, summary in enumerate(summaries):
        executor, prompt_len, executed_end, label_len = summary[:4]
        if label_len is None:
            stats.label_failures += 1
            continue
        stats.labelled_turns += 1
        if executor == "teacher" or summary[4]:
            if executed_end <= max_len:
                trunk_turns.append(index)
                trunk_end = executed_end
                trunk_targets += executed_end - prompt_len
                stats.student_turns_in_trunk += executor != "teacher"
            else:
                stats.dropped[DROP_TRUNK_PAST_MAX_LEN] += 1
        elif prompt_len + label_len <= max_len:
            specs.append(ExampleSpec(STUDENT_TURN, (index,), prompt_len + label_len, label_len))
        else:
            stats.dropped[DROP_STUDENT_TOO_LONG] += 1
    if trunk_turns:
        specs.insert(0, ExampleSpec(LABEL_TRUNK, tuple(trunk_turns), trunk_end, trunk_targets))
    for spec in specs:
        stats.examples += 1
        stats.trained_turns += len(spec.turns)
        stats.tokens += spec.length
        stats.target_tokens += spec.target_tokens
    return specs, stats


def _plan_student_trunk(
    summaries: Sequence[Sequence[Any]], max_len: int
) -> tuple[list[ExampleSpec], ExampleStats]:
    """One student_trunk example over the student-executed turns that end within max_len."""
    stats = ExampleStats(episodes=1, turns=len(summaries))
    turns: list[int] = []
    end = targets = 0
    for index, summary in enumerate(summaries):
        executor, prompt_len, executed_end = summary[:3]
        if executor != "student":  # not the student's action: nothing to reinforce
            continue
        stats.labelled_turns += 1
        if executed_end <= max_len:
            turns.append(index)
            end = executed_end
            targets += executed_end - prompt_len
        else:
            stats.dropped[DROP_STUDENT_PAST_MAX_LEN] += 1
    if not turns:
        return [], stats
    stats.examples, stats.trained_turns = 1, len(turns)
    stats.tokens, stats.target_tokens = end, targets
    return [ExampleSpec(STUDENT_TRUNK, tuple(turns), end, targets)], stats


def build_example(record: EpisodeRecord, spec: ExampleSpec, weighting: str = "one",
                  advantage: float = 0.0) -> Example:
    """The ids, loss mask and per-token weights of one planned example of record.

    weighting is the recipe's weight (names.WEIGHTS); advantage is the episode's group-normalised
    advantage (group_advantage only). Label examples take weight one only.
    """
    check_weight(weighting, "example weighting")
    trunk = record.trunk_ids
    if spec.kind == STUDENT_TRUNK:
        return _build_student_trunk(record, spec, weighting, advantage)
    if weighting != "one":
        raise ValueError(f"a {spec.kind} example trains on the teacher's label: weight one only, "
                         f"not {weighting!r}")
    if spec.kind == LABEL_TRUNK:
        ids = np.asarray(trunk[: spec.length], dtype=np.int32)
        mask = np.zeros(spec.length, dtype=bool)
        for index in spec.turns:
            turn = record.turns[index]
            if not record.label_executed(index):
                raise ValueError(
                    f"episode {record.episode_id!r}: turn {index} of the label trunk did not "
                    "execute its label (record and plan disagree)")
            mask[turn.prompt_len : turn.executed_end] = True
    elif spec.kind == STUDENT_TURN:
        (index,) = spec.turns
        turn = record.turns[index]
        ids = np.asarray([*trunk[: turn.prompt_len], *turn.label_ids], dtype=np.int32)
        mask = np.zeros(len(ids), dtype=bool)
        mask[turn.prompt_len :] = True
    else:
        raise ValueError(f"unknown example kind {spec.kind!r}")
    _check_length(record, spec, ids)
    return Example(ids, mask, spec.kind, spec.turns, record.episode_id)


def _check_length(record: EpisodeRecord, spec: ExampleSpec, ids: np.ndarray) -> None:
    if len(ids) != spec.length:
        raise ValueError(
            f"episode {record.episode_id!r}: the {spec.kind} example for turns {spec.turns} has "
            f"{len(ids)} tokens, its plan says {spec.length} (record and plan disagree)"
        )


def _build_student_trunk(record: EpisodeRecord, spec: ExampleSpec, weighting: str,
                         advantage: float) -> Example:
    ids = np.asarray(record.trunk_ids[: spec.length], dtype=np.int32)
    _check_length(record, spec, ids)
    mask = np.zeros(spec.length, dtype=bool)
    weights = np.zeros(spec.length, dtype=np.float32)
    old = np.zeros(spec.length, dtype=np.float32)
    for index in spec.turns:
        turn = record.turns[index]
        if turn.executor != "student":
            raise ValueError(f"episode {record.episode_id!r}: turn {index} of a student_trunk "
                             "example was not executed by the student (record and plan disagree)")
        sampled = np.asarray(turn.sample_logprobs, dtype=np.float32)
        if weighting == "one":  # the student's own tokens at weight 1 (no log-probs needed)
            mask[turn.prompt_len : turn.executed_end] = True
            weights[turn.prompt_len : turn.executed_end] = 1.0
            continue
        # Only the sampled tokens are targets: their log-probs are sample_logprobs[:n] in order
        # (a turn cut at its token limit has one id more, the end-of-turn that closed it).
        n = len(sampled)
        if weighting == "reverse_kl":
            if not turn.teacher_logprobs:  # the teacher's scoring call failed: no signal here
                continue
            teacher = np.maximum(np.asarray(turn.teacher_logprobs[:n], dtype=np.float32),
                                 TEACHER_LOGPROB_FLOOR)
            n = len(teacher)
            value: Any = teacher - sampled[:n]
        else:
            value = np.float32(advantage)
        span = slice(turn.prompt_len, turn.prompt_len + n)
        mask[span] = True
        weights[span] = value
        old[span] = sampled[:n]
    return Example(ids, mask, spec.kind, spec.turns, record.episode_id, weights, old)


def build_examples(record: EpisodeRecord, max_len: int, weighting: str = "one",
                   advantage: float = 0.0) -> tuple[list[Example], ExampleStats]:
    """All examples of record within max_len (label trunk first, then student turns in order;
    for the on-policy weightings, the one student trunk)."""
    specs, stats = plan_examples(record.turn_summaries(), max_len, target_of(weighting))
    return [build_example(record, spec, weighting, advantage) for spec in specs], stats


def examples_from_records(
    records: Iterable[EpisodeRecord], max_len: int
) -> tuple[list[Example], ExampleStats]:
    """build_examples over many records (weight one), counts summed."""
    examples: list[Example] = []
    total = ExampleStats()
    for record in records:
        more, stats = build_examples(record, max_len)
        examples.extend(more)
        total = total + stats
    return examples, total
