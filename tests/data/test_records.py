"""The episode record schema: round trip, decode-time checks, consistency checks."""

from __future__ import annotations

import copy
from pathlib import Path

import msgpack
import pytest

from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.records import (
    SCHEMA_VERSION,
    EpisodeRecord,
    RecordError,
    SchemaVersionError,
)
from tests.data.episodes import make_episode


@pytest.fixture(scope="module")
def record(chat: ChatTokenizer) -> EpisodeRecord:
    return make_episode(chat, "job0/task_a/0", "tsstst", failed=[2])[0]


def _raw(record: EpisodeRecord) -> dict:
    return msgpack.unpackb(record.to_bytes(), raw=False)


def _pack(data: dict) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


def test_round_trip_keeps_every_field(record: EpisodeRecord) -> None:
    blob = record.to_bytes()
    back = EpisodeRecord.from_bytes(blob)
    assert back == record
    assert back.schema_version == SCHEMA_VERSION
    assert back.turns[2].label_text is None and back.turns[2].label_ids == []
    assert back.turns[0].student_latency_s is None  # teacher-executed: no student call
    assert isinstance(back.trunk_ids, list) and back.trunk_ids[:5] == record.trunk_ids[:5]


def test_the_wire_format_is_a_plain_msgpack_map(record: EpisodeRecord) -> None:
    raw = _raw(record)
    assert raw["schema_version"] == 1
    assert set(raw) == set(EpisodeRecord.FIELDS)
    assert raw["turns"][1]["executor"] == "student"
    assert raw["outcome"]["end_reason"] == "finish"


def test_a_newer_schema_is_refused_naming_version_and_place(record: EpisodeRecord) -> None:
    raw = _raw(record)
    raw["schema_version"] = SCHEMA_VERSION + 1
    raw["a_field_from_the_future"] = 1
    with pytest.raises(SchemaVersionError, match=r"shard-00003\.arecord record 7.*schema_version 2"):
        EpisodeRecord.from_bytes(_pack(raw), "shard-00003.arecord record 7")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.pop("trunk_ids"), r"lacks field\(s\) \['trunk_ids'\]"),
        (lambda r: r["turns"][1].pop("label_ids"), r"turn 1 lacks field\(s\) \['label_ids'\]"),
        (lambda r: r["outcome"].pop("end_reason"), r"outcome lacks field"),
        (lambda r: r.update(extra=1), r"unknown field\(s\) \['extra'\]"),
        (lambda r: r.update(beta="high"), r"field 'beta' should be float"),
        (lambda r: r["trunk_ids"].append("x"), r"field 'trunk_ids' should be list\[int\]"),
        (lambda r: r.pop("schema_version"), r"no integer schema_version"),
        (lambda r: r["messages"][0].pop("content"), r"message 0 lacks field"),
    ],
)
def test_missing_extra_or_mistyped_fields_are_named(record, edit, message) -> None:
    raw = _raw(record)
    edit(raw)
    with pytest.raises(RecordError, match=message) as info:
        EpisodeRecord.from_bytes(_pack(raw), "somewhere.arecord record 0")
    assert "somewhere.arecord record 0" in str(info.value)


def test_bytes_that_are_not_a_record(record: EpisodeRecord) -> None:
    with pytest.raises(RecordError, match="here: not a msgpack record"):
        EpisodeRecord.from_bytes(record.to_bytes()[:-7], "here")
    with pytest.raises(RecordError, match="a record is a map"):
        EpisodeRecord.from_bytes(_pack([1, 2, 3]), "here")


def _broken(record: EpisodeRecord, change) -> EpisodeRecord:
    copied = copy.deepcopy(record)
    change(copied)
    return copied


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: setattr(r.turns[1], "executed_end", len(r.trunk_ids) + 1), "not inside the trunk"),
        (lambda r: setattr(r.turns[2], "prompt_len", r.turns[1].prompt_len), "after the previous"),
        (lambda r: setattr(r.turns[1], "index", 5), "turn 1 has index 5"),
        (lambda r: setattr(r.turns[1], "executor", "oracle"), "executor 'oracle'"),
        (lambda r: r.turns[0].label_ids.append(7), "teacher-executed but its label_ids differ"),
        (lambda r: setattr(r.turns[2], "label_ids", [5]), "label_ids but no label_text"),
        (lambda r: setattr(r.turns[1], "label_ids", []), "label_text but no label_ids"),
        (lambda r: r.turns[1].sample_logprobs.append(-1.0), "sample_logprobs for"),
        (lambda r: r.messages.pop(), None),  # the last message is a tool message: fine
        (lambda r: r.messages.pop(2), "5 assistant messages for 6 turns"),
        (lambda r: setattr(r.outcome, "end_reason", "bored"), "end_reason 'bored'"),
        (lambda r: setattr(r.outcome, "fail_to_pass_passed", 3), "fail_to_pass: 3 passed of 1"),
        (lambda r: setattr(r, "beta", 1.5), "beta 1.5"),
    ],
)
def test_validate_checks_spans_labels_and_outcome(record, change, message) -> None:
    broken = _broken(record, change)
    if message is None:
        broken.validate()
        return
    with pytest.raises(RecordError, match=message):
        broken.validate()
    with pytest.raises(RecordError, match=message):
        broken.to_bytes()  # an inconsistent record is never written


def test_decode_validates_consistency_too(record: EpisodeRecord) -> None:
    raw = _raw(record)
    raw["turns"][0]["label_ids"] = raw["turns"][0]["label_ids"][:-1]
    with pytest.raises(RecordError, match="f.arecord record 2: inconsistent record: turn 0"):
        EpisodeRecord.from_bytes(_pack(raw), "f.arecord record 2")


def test_views_and_summaries(record: EpisodeRecord, chat: ChatTokenizer) -> None:
    turn = record.turns[1]
    assert record.executed_ids(1) == record.trunk_ids[turn.prompt_len : turn.executed_end]
    assert record.executed_ids(1)[-1] == chat.end_of_turn_id
    assert chat.decode(record.executed_ids(1)[:-1]) == turn.executed_text
    assert record.prompt_ids(1) == record.trunk_ids[: turn.prompt_len]
    summaries = record.turn_summaries()
    assert [s[0] for s in summaries] == ["teacher", "student", "student", "teacher", "student", "teacher"]
    assert summaries[2][3] is None and summaries[1][3] == len(turn.label_ids)
    assert summaries[1][1:3] == [turn.prompt_len, turn.executed_end]


def test_bytes_on_disk_decode_to_the_same_record(tmp_path: Path, record) -> None:
    path = tmp_path / "r.msgpack"
    path.write_bytes(record.to_bytes())
    assert EpisodeRecord.from_bytes(path.read_bytes(), str(path)).to_bytes() == record.to_bytes()
