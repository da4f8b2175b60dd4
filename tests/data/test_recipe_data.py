"""The recipes' side of the data path: default weights (SFT / DAgger unchanged), the student trunk
of the on-policy recipes (OPD's teacher-minus-sampler weights, GRPO's group advantages and old
log-probs), and rejection-sampling SFT's success filter, planned from the manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dagger_jax.data.examples import (STUDENT_TRUNK, TEACHER_LOGPROB_FLOOR, build_example,
                                      build_examples, plan_examples)
from dagger_jax.data.packing import pack_examples
from dagger_jax.data.shards import MANIFEST, EpisodeSource, ShardError, ShardWriter
from dagger_jax.storage.layout import iteration_dir
from dagger_jax.data.trajectory_pipeline import TrajectoryPipeline, group_advantages
from tests.data.episodes import episode_batch, make_episode


def write(directory: Path, records) -> Path:
    with ShardWriter(directory, "w0", 3) as writer:
        for record in records:
            writer.write(record)
    return directory


def pipeline(dirs, **kwargs) -> TrajectoryPipeline:
    settings = dict(seq_len=2048, batch_size=2, seed=3, process_index=0, process_count=1)
    return TrajectoryPipeline(dirs, **{**settings, **kwargs})


def all_rows(p: TrajectoryPipeline) -> dict[str, np.ndarray]:
    batches = [p.batch(step) for step in range(p.batches_per_epoch)]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_weight_one_batches_carry_weights_that_are_exactly_the_mask(tmp_path, chat):
    directory = write(iteration_dir(tmp_path, 1), episode_batch(chat, 6))
    rows = all_rows(pipeline([directory]))
    assert rows["loss_mask"].sum() > 0
    np.testing.assert_array_equal(rows["loss_weights"], rows["loss_mask"])
    assert rows["loss_weights"].dtype == np.float32 and not rows["old_logprobs"].any()
    # pack_examples with and without explicit default weights: the same rows.
    examples, _ = build_examples(episode_batch(chat, 1)[0], 4096)
    bare = pack_examples([(e.ids, e.loss_mask) for e in examples], 4096)
    full = pack_examples([e.arrays() for e in examples], 4096)
    for key in bare:
        np.testing.assert_array_equal(bare[key], full[key])


def opd_episode(chat, episode_id="iter001/task/0"):
    """Three student turns: scored; scored and cut at its token limit; unscored (teacher call
    failed). Teacher log-probs are chosen so the weights are easy to name."""
    record, _ = make_episode(chat, episode_id, "sts", failed=(0, 2))
    for turn in record.turns:
        turn.label_text, turn.label_ids = (None, []) if turn.executor == "student" else (
            turn.label_text, turn.label_ids)
    first, _, third = record.turns
    first.sample_logprobs = [-1.0] * first.num_executed
    first.teacher_logprobs = [-0.25] * first.num_executed
    first.teacher_logprobs[0] = float("-inf")  # the teacher gives the token no mass at all
    third.finish_reason = "length"  # closed with an end-of-turn the student did not sample
    third.sample_logprobs = [-2.0] * (third.num_executed - 1)
    third.teacher_logprobs = [-0.5] * third.num_executed
    record.validate()
    return record


def test_opd_student_trunk_weights_are_teacher_minus_sampler_on_sampled_student_tokens(chat):
    record = opd_episode(chat)
    first, teacher_turn, third = record.turns
    specs, stats = plan_examples(record.turn_summaries(), 4096, target="executed")
    assert [s.kind for s in specs] == [STUDENT_TRUNK] and specs[0].turns == (0, 2)
    assert stats.trained_turns == 2 and specs[0].length == third.executed_end
    example = build_example(record, specs[0], "reverse_kl")
    ids, mask, weights, old = example.arrays()
    assert list(ids) == record.trunk_ids[: third.executed_end]
    want_mask = np.zeros(len(ids), bool)
    want_mask[first.prompt_len : first.executed_end] = True
    want_mask[third.prompt_len : third.executed_end - 1] = True  # not the closing end-of-turn
    np.testing.assert_array_equal(mask, want_mask)
    assert not mask[teacher_turn.prompt_len : teacher_turn.executed_end].any()
    np.testing.assert_allclose(weights[first.prompt_len], TEACHER_LOGPROB_FLOOR + 1.0)
    np.testing.assert_allclose(weights[first.prompt_len + 1 : first.executed_end], 0.75)
    np.testing.assert_allclose(weights[third.prompt_len : third.executed_end - 1], 1.5)
    assert not weights[~mask].any()
    np.testing.assert_allclose(old[mask], [-1.0] * first.num_executed + [-2.0] * (third.num_executed - 1))
    # A student turn the teacher did not score carries no signal.
    third.teacher_logprobs = []
    _, mask, _, _ = build_example(record, specs[0], "reverse_kl").arrays()
    assert mask.sum() == first.num_executed
    # Label examples refuse on-policy weights, and teacher log-probs must match the ids.
    with pytest.raises(ValueError, match="weight one only"):
        build_example(record, plan_examples(record.turn_summaries(), 4096)[0][0], "reverse_kl")
    third.teacher_logprobs = [-0.5] * 3
    with pytest.raises(ValueError, match="teacher_logprobs for"):
        record.validate()


def test_group_advantages():
    np.testing.assert_allclose(group_advantages([1, 0, 0, 1]), [1, -1, -1, 1], atol=1e-5)
    assert group_advantages([1, 0, 0, 1]).std() == pytest.approx(1.0, abs=1e-5)  # population std
    assert not group_advantages([0, 0, 0, 0]).any() and not group_advantages([1, 1]).any()
    assert not group_advantages([1]).any()
    a = group_advantages([1, 0, 0, 0])
    np.testing.assert_allclose(a, np.array([0.75, -0.25, -0.25, -0.25]) / np.sqrt(0.1875), rtol=1e-5)


def grpo_workdir(root: Path, chat) -> Path:
    """Iteration 1: task a's four episodes resolve [1, 0, 0, 1], task b's all fail."""
    records = []
    for task, outcomes in (("a", (1, 0, 0, 1)), ("b", (0, 0, 0, 0))):
        for k, resolved in enumerate(outcomes):
            record, _ = make_episode(chat, f"iter001/{task}/{k}", "ss", failed=(0, 1),
                                     resolved=bool(resolved), seed=k)
            record.turns[-1].finish_reason = "length"
            record.turns[-1].sample_logprobs = record.turns[-1].sample_logprobs[:-1]
            records.append(record)
    return write(iteration_dir(root, 1), records)


def test_grpo_pipeline_puts_the_group_advantage_and_old_logprobs_on_student_tokens(tmp_path, chat):
    directory = grpo_workdir(tmp_path, chat)
    p = pipeline([directory], weighting="group_advantage")
    rows = all_rows(p)
    records = list(EpisodeSource(directory))
    sampled = sum(len(t.sample_logprobs) for r in records for t in r.turns)
    assert rows["loss_mask"].sum() == sampled == p.stats.target_tokens - len(records)
    on = rows["loss_mask"] > 0
    values = sorted(set(np.round(rows["loss_weights"][on], 4)))
    assert values == [-1.0, 0.0, 1.0]  # task a's +-1; task b's group is uniform: 0
    of_b = sum(len(t.sample_logprobs) for r in records if r.task_id.endswith("/b") for t in r.turns)
    assert (np.round(rows["loss_weights"][on], 4) == 0).sum() == of_b
    np.testing.assert_array_equal(rows["old_logprobs"][on], -0.5)  # the episodes' sample log-probs
    assert not rows["loss_weights"][~on].any() and not rows["old_logprobs"][~on].any()
    # The advantages take part in the fingerprint: a resumed iterator checks them.
    assert p.fingerprint != pipeline([directory], weighting="reverse_kl").fingerprint


def test_rs_sft_trains_on_resolved_episodes_only_planned_from_the_manifest(tmp_path, chat,
                                                                           monkeypatch):
    records = episode_batch(chat, 10, seed=5)
    resolved = {r.episode_id for r in records if r.outcome.resolved}
    assert 0 < len(resolved) < len(records)
    directory = write(iteration_dir(tmp_path, 1), records)
    manifest_lines = (directory / MANIFEST).read_text().splitlines()
    assert all("outcomes" in json.loads(line) for line in manifest_lines)

    decode = EpisodeSource.__getitem__

    def refuse(self, key):
        raise AssertionError("planning decoded a record")

    monkeypatch.setattr(EpisodeSource, "__getitem__", refuse)
    p = pipeline([directory], success_filter=True)  # planning reads manifests only
    monkeypatch.setattr(EpisodeSource, "__getitem__", decode)
    assert p.episodes_filtered == len(records) - len(resolved)
    trained = {p.source.locations[int(k)].episode_id for k in p._index.episode}
    assert trained == resolved
    rows = all_rows(p)
    assert rows["loss_mask"].sum() == p.stats.target_tokens
    everything = pipeline([directory])
    assert everything.episodes_filtered == 0 and everything.stats.episodes == len(records)

    # A manifest from before outcomes were listed is refused by name (collect it again).
    lines = [json.loads(line) for line in manifest_lines]
    for line in lines:
        del line["outcomes"]
    (directory / MANIFEST).write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ShardError, match="lists no outcomes: a manifest written by an older"):
        pipeline([directory], success_filter=True)


def test_rs_sft_with_no_resolved_episode_is_a_clear_error(tmp_path, chat):
    failed = [make_episode(chat, f"iter001/t{k}/0", "tst", resolved=False)[0] for k in range(3)]
    dirs = [write(iteration_dir(tmp_path, 1), failed[:2]), write(iteration_dir(tmp_path, 2), failed[2:])]
    with pytest.raises(ValueError, match="none of the 3 episodes in .*iter_001.*iter_002.* is resolved"):
        pipeline(dirs, success_filter=True)
