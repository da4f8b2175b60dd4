"""Episode -> training examples: exactly the label tokens are targets, context as executed."""

from __future__ import annotations

import numpy as np
import pytest

from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.examples import (
    DROP_STUDENT_TOO_LONG,
    DROP_TRUNK_PAST_MAX_LEN,
    LABEL_TRUNK,
    STUDENT_TURN,
    ExampleStats,
    build_example,
    build_examples,
    examples_from_records,
    plan_examples,
)
from dagger_jax.data.packing import pack_examples
from tests.data.episodes import make_episode

BIG = 1 << 20


@pytest.fixture(scope="module")
def episode(chat: ChatTokenizer):
    return make_episode(chat, "job0/task_a/0", "tsstst", failed=[2], full_prompt=True)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def test_kinds_and_order(episode) -> None:
    record, _ = episode
    examples, stats = build_examples(record, BIG)
    assert [(e.kind, e.turns) for e in examples] == [
        (LABEL_TRUNK, (0, 3, 5)),
        (STUDENT_TURN, (1,)),
        (STUDENT_TURN, (4,)),
    ]
    assert all(e.ids.dtype == np.int32 and e.loss_mask.dtype == bool for e in examples)
    assert all(e.episode_id == record.episode_id for e in examples)
    assert (stats.turns, stats.labelled_turns, stats.label_failures) == (6, 5, 1)
    assert (stats.examples, stats.trained_turns) == (3, 5)
    assert stats.tokens == sum(len(e) for e in examples)
    assert stats.target_tokens == sum(int(e.loss_mask.sum()) for e in examples)
    assert stats.tokens_per_labelled_turn == pytest.approx(stats.tokens / 5)
    assert not stats.dropped


def test_student_turn_example_is_the_generation_prompt_then_the_label(episode) -> None:
    record, prompts = episode
    examples, _ = build_examples(record, BIG)
    for example in examples[1:]:
        (index,) = example.turns
        turn = record.turns[index]
        # The context is exactly what the student was prompted with at that turn ...
        assert example.ids[: turn.prompt_len].tolist() == prompts[index]
        assert not example.loss_mask[: turn.prompt_len].any()
        # ... and the targets exactly the teacher's label, as student ids.
        assert example.ids[turn.prompt_len :].tolist() == turn.label_ids
        assert example.loss_mask[turn.prompt_len :].all()
        assert example.ids[example.loss_mask].tolist() == turn.label_ids
        # The label is not what the student executed (else there is nothing to learn).
        assert turn.label_ids != record.executed_ids(index)


def test_teacher_trunk_masks_exactly_the_teacher_turns(episode, chat: ChatTokenizer) -> None:
    record, prompts = episode
    trunk = build_examples(record, BIG)[0][0]
    teacher = [record.turns[i] for i in (0, 3, 5)]
    assert trunk.ids.tolist() == record.trunk_ids[: teacher[-1].executed_end]
    assert _runs(trunk.loss_mask) == [(t.prompt_len, t.executed_end) for t in teacher]
    masked = trunk.ids[trunk.loss_mask].tolist()
    assert masked == [i for t in teacher for i in t.label_ids]
    # Each teacher turn's context is its generation prompt, student turns included as executed.
    for t in teacher:
        assert trunk.ids[: t.prompt_len].tolist() == prompts[t.index]
    assert trunk.ids[trunk.loss_mask][-1] == chat.end_of_turn_id


def test_student_turns_keep_the_ids_the_student_generated(episode, chat: ChatTokenizer) -> None:
    record, _ = episode
    retokenised = 0
    for index, turn in enumerate(record.turns):
        if turn.executor == "student":
            executed = record.executed_ids(index)
            assert chat.decode(executed[:-1]) == turn.executed_text
            retokenised += executed != chat.assistant_turn_ids(turn.executed_text)
    assert retokenised, "the fixture's student ids should differ from re-tokenised text"


def test_packed_targets_are_the_label_tokens(episode) -> None:
    record, _ = episode
    examples, _ = build_examples(record, BIG)
    packed = pack_examples([(e.ids, e.loss_mask) for e in examples], 1 << 14)
    targets = packed["target_ids"][packed["loss_mask"] > 0].tolist()
    labels = [record.turns[i].label_ids for i in (0, 3, 5, 1, 4)]
    assert targets == [i for label in labels for i in label]


def test_failed_labels_yield_nothing(chat: ChatTokenizer) -> None:
    record, _ = make_episode(chat, "job0/task_b/0", "sss", failed=[0, 1, 2])
    examples, stats = build_examples(record, BIG)
    assert examples == [] and stats.label_failures == 3 and stats.labelled_turns == 0
    assert stats.tokens_per_labelled_turn == 0.0


def test_all_teacher_episode_is_one_example(chat: ChatTokenizer) -> None:
    record, _ = make_episode(chat, "job0/task_c/0", "ttt")
    (example,), stats = build_examples(record, BIG)
    assert example.kind == LABEL_TRUNK and example.turns == (0, 1, 2)
    assert stats.tokens_per_labelled_turn == pytest.approx(len(example) / 3)


def test_student_turns_that_said_their_label_train_in_the_trunk(chat: ChatTokenizer) -> None:
    record, prompts = make_episode(chat, "job0/task_e/0", "tasat", full_prompt=True)
    examples, stats = build_examples(record, BIG)
    # Turns 1 and 3 executed their label: no example of their own, targets inside the trunk.
    assert [(e.kind, e.turns) for e in examples] == [(LABEL_TRUNK, (0, 1, 3, 4)),
                                                     (STUDENT_TURN, (2,))]
    trunk = examples[0]
    in_trunk = [record.turns[i] for i in (0, 1, 3, 4)]
    assert _runs(trunk.loss_mask) == [(t.prompt_len, t.executed_end) for t in in_trunk]
    assert trunk.ids[trunk.loss_mask].tolist() == [i for t in in_trunk for i in t.label_ids]
    for t in in_trunk:  # each target after exactly the prompt that turn was generated from
        assert trunk.ids[: t.prompt_len].tolist() == prompts[t.index]
    assert (stats.trained_turns, stats.student_turns_in_trunk, stats.examples) == (5, 2, 2)


def test_a_record_whose_trunk_turn_is_not_its_label_is_refused(chat: ChatTokenizer) -> None:
    record, _ = make_episode(chat, "job0/task_f/0", "ta")
    specs, _ = plan_examples(record.turn_summaries(), BIG)
    record.turns[1].label_ids = list(reversed(record.turns[1].label_ids))
    with pytest.raises(ValueError, match="turn 1 of the label trunk did not execute its label"):
        build_example(record, specs[0])


def test_too_long_examples_are_dropped_and_counted_never_cut(episode) -> None:
    record, _ = episode
    turns = record.turns
    # Room for teacher turns 0 and 3 and the student example of turn 1, not turns 4 / 5.
    max_len = max(turns[3].executed_end, turns[1].prompt_len + len(turns[1].label_ids))
    assert max_len < turns[4].prompt_len + len(turns[4].label_ids) and max_len < turns[5].executed_end
    examples, stats = build_examples(record, max_len)
    assert [(e.kind, e.turns) for e in examples] == [(LABEL_TRUNK, (0, 3)), (STUDENT_TURN, (1,))]
    assert all(len(e) <= max_len for e in examples)
    assert examples[0].ids.tolist() == record.trunk_ids[: turns[3].executed_end]
    assert stats.dropped == {DROP_STUDENT_TOO_LONG: 1, DROP_TRUNK_PAST_MAX_LEN: 1}
    assert stats.trained_turns == 3 and stats.labelled_turns == 5
    # Every trained example still ends with a whole label.
    for e in examples:
        assert e.loss_mask[-1]


def test_plan_matches_built_examples_and_summaries_suffice(episode) -> None:
    record, _ = episode
    for max_len in (BIG, 600, 300):
        specs, stats = plan_examples(record.turn_summaries(), max_len)
        examples, built_stats = build_examples(record, max_len)
        assert [s.length for s in specs] == [len(e) for e in examples]
        assert [s.target_tokens for s in specs] == [int(e.loss_mask.sum()) for e in examples]
        assert stats == built_stats


def test_stats_add_up(chat: ChatTokenizer, episode) -> None:
    other, _ = make_episode(chat, "job0/task_d/0", "stt")
    _, all_stats = examples_from_records([episode[0], other], BIG)
    one = build_examples(episode[0], BIG)[1]
    two = build_examples(other, BIG)[1]
    assert all_stats == one + two
    assert all_stats.episodes == 2 and all_stats.examples == 5
    assert (ExampleStats() + one) == one
    assert all_stats.to_dict()["tokens_per_labelled_turn"] == all_stats.tokens_per_labelled_turn
