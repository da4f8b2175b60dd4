"""The trajectory record: one finished episode, as the collector writes it and the trainer reads it.

A record keeps the conversation as executed in student-tokenizer ids (`trunk_ids`), so that
student turns keep the ids the student sampled (no re-tokenisation drift), and per turn: who
executed it, where its prompt and executed tokens sit in the trunk, and its label (the
teacher's action at that state, as student ids). Training examples are cut from these spans
(data/examples.py); nothing else is needed from the tokenizer at training time.

Wire format: msgpack of a plain dict (lists of ints for ids), versioned by `schema_version`.
A reader refuses a record from a newer schema (it cannot know what the new fields mean) and
names where the record came from; a record with a missing, extra or mistyped field is refused
the same way. Bump SCHEMA_VERSION for any change of fields or meaning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

SCHEMA_VERSION = 1

EXECUTORS = ("student", "teacher")
END_REASONS = (
    "finish",
    "turn_limit",
    "context_limit",
    "stuck",  # the same action met the same observation EpisodeSettings.stuck_repeats times
    "policy_error",   # the student's turn could not be used (tokens outside the tokenizer, ...)
    "teacher_error",  # the teacher's, where it had to act
    "internal_error",  # our tools or tokenizer failed on the agent's input (a defect, logged)
    # Written before infrastructure faults were kept out of records (rollout/faults.py); read
    # so that shards of older runs still load.
    "sandbox_error",
)


class RecordError(ValueError):
    """A record that cannot be decoded or is inconsistent; the message says where it came from."""


class SchemaVersionError(RecordError):
    """A record (or shard) written by a newer schema than this code reads."""


def newer_schema_message(version: Any, where: str) -> str:
    return (
        f"{where}: written with record schema_version {version}, newer than the version this "
        f"code reads ({SCHEMA_VERSION}); read it with the dagger_jax that wrote it, or upgrade"
    )


# --- field checking -----------------------------------------------------------------------
# Each field has a kind; decoding checks every field against it so that a bad record fails
# here, naming the field, rather than later as an IndexError deep inside example building.


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def _all_of(values: Sequence[Any], kinds: tuple[type, ...]) -> bool:
    # set(map(type, ...)) runs in C: a 64K-token trunk costs about a millisecond.
    return set(map(type, values)) <= set(kinds)


_KINDS = {
    "int": _is_int,
    "float": _is_float,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "str|None": lambda v: v is None or isinstance(v, str),
    "float|None": lambda v: v is None or _is_float(v),
    "list[int]": lambda v: isinstance(v, list) and _all_of(v, (int,)),
    "list[float]": lambda v: isinstance(v, list) and _all_of(v, (float, int)),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
}


def _check_fields(
    data: Any, fields: Mapping[str, str], what: str, where: str
) -> dict[str, Any]:
    """data as a dict whose keys are exactly `fields`, each value of its kind."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: {what} is a {type(data).__name__}, not a map")
    missing = [name for name in fields if name not in data]
    if missing:
        raise RecordError(f"{where}: {what} lacks field(s) {missing}")
    extra = sorted(str(k) for k in data if k not in fields)
    if extra:
        raise RecordError(
            f"{where}: {what} has unknown field(s) {extra} for schema_version {SCHEMA_VERSION}"
        )
    for name, kind in fields.items():
        if not _KINDS[kind](data[name]):
            value = repr(data[name])
            value = value if len(value) <= 60 else value[:57] + "..."
            raise RecordError(f"{where}: {what} field {name!r} should be {kind}, got {value}")
    return data


# --- the dataclasses ----------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class TurnRecord:
    """One executed assistant turn and its label.

    trunk_ids[:prompt_len] is the turn's generation prompt and trunk_ids[prompt_len:executed_end]
    the executed assistant tokens including end-of-turn. label_ids are the label as student ids
    (content + end-of-turn): what training targets after the prompt. label_text is None when the
    teacher call failed (label_ids then []): such a turn yields no example. The latencies are
    None for a model that was not called at this turn. finish_reason is why the executed
    generation stopped (stop | length | abort); a turn cut at its token limit was closed with an
    end-of-turn the model did not sample, so its sample_logprobs are one shorter than its ids.
    teacher_logprobs (on-policy distillation) are the teacher's log-probs of all the executed
    ids, end-of-turn included: empty, or as many as the executed ids. A teacher turn with a
    student latency is a takeover (loop.takeover_unparseable): the student was asked at that
    state, its reply did not parse, and the teacher's label was executed instead.
    """

    index: int
    executor: str
    prompt_len: int
    executed_end: int
    executed_text: str
    label_text: str | None
    label_ids: list[int]
    sample_logprobs: list[float] = dataclasses.field(default_factory=list)
    teacher_logprobs: list[float] = dataclasses.field(default_factory=list)
    student_latency_s: float | None = None
    teacher_latency_s: float | None = None
    parse_ok: bool = True
    finish_reason: str = "stop"

    FIELDS = {
        "index": "int",
        "executor": "str",
        "prompt_len": "int",
        "executed_end": "int",
        "executed_text": "str",
        "label_text": "str|None",
        "label_ids": "list[int]",
        "sample_logprobs": "list[float]",
        "teacher_logprobs": "list[float]",
        "student_latency_s": "float|None",
        "teacher_latency_s": "float|None",
        "parse_ok": "bool",
        "finish_reason": "str",
    }

    @property
    def labelled(self) -> bool:
        return self.label_text is not None

    @property
    def num_executed(self) -> int:
        return self.executed_end - self.prompt_len

    @property
    def taken_over(self) -> bool:
        """A takeover (class docstring): the teacher's label ran where the student's reply did not."""
        return self.executor == "teacher" and self.student_latency_s is not None


@dataclasses.dataclass(kw_only=True)
class Outcome:
    resolved: bool
    end_reason: str
    fail_to_pass_passed: int = 0
    fail_to_pass_total: int = 0
    pass_to_pass_passed: int = 0
    pass_to_pass_total: int = 0
    patch: str = ""
    error: str | None = None

    FIELDS = {
        "resolved": "bool",
        "end_reason": "str",
        "fail_to_pass_passed": "int",
        "fail_to_pass_total": "int",
        "pass_to_pass_passed": "int",
        "pass_to_pass_total": "int",
        "patch": "str",
        "error": "str|None",
    }


@dataclasses.dataclass(kw_only=True)
class EpisodeRecord:
    """One finished episode. episode_id is unique across a run: the key that deduplicates."""

    episode_id: str
    task_id: str
    iteration: int
    beta: float
    seed: int
    student_version: str
    teacher_id: str
    trunk_ids: list[int]
    messages: list[dict[str, str]]
    turns: list[TurnRecord]
    outcome: Outcome
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    FIELDS = {
        "schema_version": "int",
        "episode_id": "str",
        "task_id": "str",
        "iteration": "int",
        "beta": "float",
        "seed": "int",
        "student_version": "str",
        "teacher_id": "str",
        "trunk_ids": "list[int]",
        "messages": "list",
        "turns": "list",
        "outcome": "dict",
        "timings": "dict",
        "metadata": "dict",
    }

    # --- encoding -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_bytes(self) -> bytes:
        """msgpack of to_dict(); raises RecordError if the record is inconsistent."""
        self.validate()
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> EpisodeRecord:
        """The record in data, checked field by field and for consistency (validate)."""
        if not isinstance(data, dict):
            raise RecordError(f"{where}: a record is a map, got {type(data).__name__}")
        version = data.get("schema_version")
        if not _is_int(version):
            raise RecordError(f"{where}: no integer schema_version (got {version!r})")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(newer_schema_message(version, where))
        if version < 1:
            raise RecordError(f"{where}: schema_version {version} is not a valid version")
        data = _check_fields(data, cls.FIELDS, "the record", where)
        for i, message in enumerate(data["messages"]):
            _check_fields(message, {"role": "str", "content": "str"}, f"message {i}", where)
        turns = [
            TurnRecord(**_check_fields(turn, TurnRecord.FIELDS, f"turn {i}", where))
            for i, turn in enumerate(data["turns"])
        ]
        outcome = Outcome(**_check_fields(data["outcome"], Outcome.FIELDS, "the outcome", where))
        for key, value in data["timings"].items():
            if not (isinstance(key, str) and _is_float(value)):
                raise RecordError(f"{where}: timings[{key!r}] = {value!r} is not a number")
        fields = {**data, "turns": turns, "outcome": outcome}
        fields["messages"] = [dict(m) for m in data["messages"]]
        record = cls(**fields)
        record.validate(where)
        return record

    @classmethod
    def from_bytes(cls, blob: bytes, where: str = "record") -> EpisodeRecord:
        """Decode to_bytes() output; RecordError (SchemaVersionError if newer) names `where`."""
        try:
            data = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
            raise RecordError(
                f"{where}: not a msgpack record ({type(e).__name__}: {e}); {len(blob)} bytes"
            ) from e
        return cls.from_dict(data, where)

    # --- consistency ----------------------------------------------------------------------

    def validate(self, where: str | None = None) -> None:
        """Raise RecordError unless the spans, labels and outcome agree with each other.

        Turn spans lie inside the trunk, in order, without overlap; each turn's prompt ends
        where its executed tokens start; a teacher-executed turn's label is exactly its
        executed tokens (its label is what it executed); a failed label has no ids; there is
        one assistant message per turn.
        """
        where = where or f"episode {self.episode_id!r}"
        problems = self._problems()
        if problems:
            shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
            raise RecordError(f"{where}: inconsistent record: {shown}")

    def _problems(self) -> list[str]:
        out: list[str] = []
        if self.schema_version != SCHEMA_VERSION:
            out.append(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}")
        if not self.episode_id:
            out.append("empty episode_id")
        if not 0.0 <= self.beta <= 1.0:
            out.append(f"beta {self.beta} outside [0, 1]")
        if self.trunk_ids and min(self.trunk_ids) < 0:
            out.append("negative token id in trunk_ids")
        trunk_len = len(self.trunk_ids)
        previous_end = 0
        for position, turn in enumerate(self.turns):
            name = f"turn {position}"
            if turn.index != position:
                out.append(f"{name} has index {turn.index}")
            if turn.executor not in EXECUTORS:
                out.append(f"{name} executor {turn.executor!r} is not one of {EXECUTORS}")
            if not previous_end <= turn.prompt_len < turn.executed_end <= trunk_len:
                out.append(
                    f"{name} span [{turn.prompt_len}, {turn.executed_end}) is not inside the "
                    f"trunk of {trunk_len} ids after the previous turn's end {previous_end}, "
                    "or is empty"
                )
            if turn.prompt_len == 0:
                out.append(f"{name} has an empty prompt")
            previous_end = max(previous_end, turn.executed_end)
            if turn.label_text is None and turn.label_ids:
                out.append(f"{name} has label_ids but no label_text")
            if turn.label_text is not None and not turn.label_ids:
                out.append(f"{name} has label_text but no label_ids")
            if turn.label_ids and min(turn.label_ids) < 0:
                out.append(f"{name} has a negative label id")
            if (
                turn.executor == "teacher"
                and turn.label_text is not None
                and not self.label_executed(position)
            ):
                out.append(
                    f"{name} is teacher-executed but its label_ids differ from its executed ids"
                )
            # At the token limit the collector closes the turn with an end-of-turn the model did
            # not sample, unless the model's last sampled token already was one.
            sampled = ({turn.num_executed, turn.num_executed - 1} if turn.finish_reason == "length"
                       else {turn.num_executed})
            if turn.sample_logprobs and len(turn.sample_logprobs) not in sampled:
                out.append(
                    f"{name} has {len(turn.sample_logprobs)} sample_logprobs for "
                    f"{turn.num_executed} executed ids (finish {turn.finish_reason})"
                )
            # The teacher scores exactly the executed ids (end-of-turn included), so on-policy
            # distillation can line its log-probs up with the student's token by token.
            if turn.teacher_logprobs and len(turn.teacher_logprobs) != turn.num_executed:
                out.append(
                    f"{name} has {len(turn.teacher_logprobs)} teacher_logprobs for "
                    f"{turn.num_executed} executed ids"
                )
        assistant = sum(1 for m in self.messages if m.get("role") == "assistant")
        if assistant != len(self.turns):
            out.append(f"{assistant} assistant messages for {len(self.turns)} turns")
        o = self.outcome
        if o.end_reason not in END_REASONS:
            out.append(f"end_reason {o.end_reason!r} is not one of {END_REASONS}")
        for kind in ("fail_to_pass", "pass_to_pass"):
            passed, total = getattr(o, f"{kind}_passed"), getattr(o, f"{kind}_total")
            if not 0 <= passed <= total:
                out.append(f"{kind}: {passed} passed of {total}")
        return out

    # --- views ----------------------------------------------------------------------------

    def executed_ids(self, turn: int) -> list[int]:
        t = self.turns[turn]
        return self.trunk_ids[t.prompt_len : t.executed_end]

    def prompt_ids(self, turn: int) -> list[int]:
        return self.trunk_ids[: self.turns[turn].prompt_len]

    def label_executed(self, turn: int) -> bool:
        """The turn has a label and executed exactly its ids (its label is in the trunk)."""
        t = self.turns[turn]
        return t.labelled and t.label_ids == self.executed_ids(turn)

    def turn_summaries(self) -> list[list[Any]]:
        """[executor, prompt_len, executed_end, len(label_ids) or None, label_executed] per turn.

        label_executed: the executed ids are the label's (every teacher turn; a student turn
        that said exactly what the teacher would have). All that deciding which examples a
        record yields (and how long they are) needs; the shard manifest stores it, so the
        trainer plans its batches without reading records. (Manifests written before
        label_executed existed hold the first four fields: data/examples.py reads both.)
        """
        return [
            [t.executor, t.prompt_len, t.executed_end, len(t.label_ids) if t.labelled else None,
             self.label_executed(i)]
            for i, t in enumerate(self.turns)
        ]
