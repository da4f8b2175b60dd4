"""Training examples cut from an episode record: context as executed, loss only on labels.

Two kinds, following how a label relates to the executed trunk:

- teacher_trunk: teacher-executed turns already have their label in the trunk (what the
  teacher said is what was executed), so all of them share ONE sequence: the trunk up to the
  end of the last labelled teacher turn, the mask true exactly on those turns' executed tokens.
- student_turn: a student-executed turn's label differs from what was executed, so it gets its
  own sequence: the turn's prompt (trunk_ids[:prompt_len]) followed by its label_ids, the mask
  true exactly on the label.

An example longer than max_len is never truncated (that would silently cut its targets away):
a student_turn example is dropped; the teacher trunk ends at the last teacher turn that fits
and the turns past it are dropped. Either way the dropped labelled turns are counted by reason.

Which examples a record yields, and their lengths, depend only on the record's turn summaries
([executor, prompt_len, executed_end, label length]); plan_examples works from those, so the
trainer can plan batches from the shard manifests before reading any record.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dagger_jax.data.records import EpisodeRecord

TEACHER_TRUNK = "teacher_trunk"
STUDENT_TURN = "student_turn"

# Reasons a labelled turn yields no trained tokens (keys of ExampleStats.dropped).
DROP_STUDENT_TOO_LONG = "student_example_longer_than_max_len"
DROP_TEACHER_PAST_MAX_LEN = "teacher_turn_past_max_len"


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """Where one example comes from: its kind, the turns it trains on, its length."""

    kind: str
    turns: tuple[int, ...]
    length: int
    target_tokens: int


@dataclasses.dataclass(frozen=True)
class Example:
    ids: np.ndarray  # int32 [length]
    loss_mask: np.ndarray  # bool [length]
    kind: str
    turns: tuple[int, ...]
    episode_id: str = ""

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class ExampleStats:
    """Counts over episodes turned into examples; add them up with `+`."""

    episodes: int = 0
    turns: int = 0
    labelled_turns: int = 0
    label_failures: int = 0  # turns whose teacher call failed: no label, no example
    trained_turns: int = 0  # labelled turns whose label is a target of a kept example
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
    summaries: Sequence[Sequence[Any]], max_len: int
) -> tuple[list[ExampleSpec], ExampleStats]:
    """The examples that turns with these summaries yield within max_len, and the counts.

    summaries: per turn [executor, prompt_len, executed_end, label length or None], as
    EpisodeRecord.turn_summaries() gives (and the shard manifest stores).
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    stats = ExampleStats(episodes=1, turns=len(summaries))
    specs: list[ExampleSpec] = []
    teacher_turns: list[int] = []
    teacher_end = teacher_targets = 0
    for index, (executor, prompt_len, executed_end, label_len) in enumerate(summaries):
        if label_len is None:
            stats.label_failures += 1
            continue
        stats.labelled_turns += 1
        if executor == "teacher":
            if executed_end <= max_len:
                teacher_turns.append(index)
                teacher_end = executed_end
                teacher_targets += executed_end - prompt_len
            else:
                stats.dropped[DROP_TEACHER_PAST_MAX_LEN] += 1
        elif prompt_len + label_len <= max_len:
            specs.append(ExampleSpec(STUDENT_TURN, (index,), prompt_len + label_len, label_len))
        else:
            stats.dropped[DROP_STUDENT_TOO_LONG] += 1
    if teacher_turns:
        trunk = ExampleSpec(TEACHER_TRUNK, tuple(teacher_turns), teacher_end, teacher_targets)
        specs.insert(0, trunk)
    for spec in specs:
        stats.examples += 1
        stats.trained_turns += len(spec.turns)
        stats.tokens += spec.length
        stats.target_tokens += spec.target_tokens
    return specs, stats


def build_example(record: EpisodeRecord, spec: ExampleSpec) -> Example:
    """The ids and loss mask of one planned example of record."""
    trunk = record.trunk_ids
    if spec.kind == TEACHER_TRUNK:
        ids = np.asarray(trunk[: spec.length], dtype=np.int32)
        mask = np.zeros(spec.length, dtype=bool)
        for index in spec.turns:
            turn = record.turns[index]
            mask[turn.prompt_len : turn.executed_end] = True
    elif spec.kind == STUDENT_TURN:
        (index,) = spec.turns
        turn = record.turns[index]
        ids = np.asarray([*trunk[: turn.prompt_len], *turn.label_ids], dtype=np.int32)
        mask = np.zeros(len(ids), dtype=bool)
        mask[turn.prompt_len :] = True
    else:
        raise ValueError(f"unknown example kind {spec.kind!r}")
    if len(ids) != spec.length:
        raise ValueError(
            f"episode {record.episode_id!r}: the {spec.kind} example for turns {spec.turns} has "
            f"{len(ids)} tokens, its plan says {spec.length} (record and plan disagree)"
        )
    return Example(ids, mask, spec.kind, spec.turns, record.episode_id)


def build_examples(record: EpisodeRecord, max_len: int) -> tuple[list[Example], ExampleStats]:
    """All examples of record within max_len (teacher trunk first, then student turns in order)."""
    specs, stats = plan_examples(record.turn_summaries(), max_len)
    return [build_example(record, spec) for spec in specs], stats


def examples_from_records(
    records: Iterable[EpisodeRecord], max_len: int
) -> tuple[list[Example], ExampleStats]:
    """build_examples over many records, counts summed."""
    examples: list[Example] = []
    total = ExampleStats()
    for record in records:
        more, stats = build_examples(record, max_len)
        examples.extend(more)
        total = total + stats
    return examples, total
