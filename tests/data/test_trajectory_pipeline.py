"""The grain pipeline over all iterations: every example once per epoch, split over processes,
fixed shapes, and an iterator state that resumes exactly."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dagger_jax.data.examples import examples_from_records
from dagger_jax.names import PACKED_KEYS
from dagger_jax.data.shards import EpisodeSource, ShardError, ShardWriter, iter_records
from dagger_jax.storage.layout import all_iteration_dirs, iteration_dir
from dagger_jax.data.trajectory_pipeline import TrajectoryPipeline, pack_rows
from tests.data.episodes import episode_batch, make_episode

SEQ_LEN = 1024


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, chat) -> Path:
    """Two iterations of episodes; iteration 1 holds one episode of iteration 0 again."""
    root = tmp_path_factory.mktemp("workdir")
    first = episode_batch(chat, 12, iteration=0)
    second = episode_batch(chat, 8, iteration=1)
    with ShardWriter(iteration_dir(root, 0), "w0", 5) as writer:
        for record in first:
            writer.write(record)
    with ShardWriter(iteration_dir(root, 1), "w0", 3) as writer:
        for record in [*second, first[4]]:
            writer.write(record)
    return root


def make(workdir: Path, **kwargs) -> TrajectoryPipeline:
    settings = dict(seq_len=SEQ_LEN, batch_size=4, seed=7, process_index=0, process_count=1)
    return TrajectoryPipeline(all_iteration_dirs(workdir), **{**settings, **kwargs})


def segments(batch: dict[str, np.ndarray]) -> list[tuple[tuple[int, ...], tuple[bool, ...]]]:
    """Each packed example back as (ids, loss mask): mask[t + 1] is loss_mask[t]."""
    out = []
    for row in range(batch["input_ids"].shape[0]):
        seg = batch["segment_ids"][row]
        for s in range(1, int(seg.max(initial=0)) + 1):
            where = np.flatnonzero(seg == s)
            ids = batch["input_ids"][row, where]
            mask = np.concatenate([[False], batch["loss_mask"][row, where][:-1] > 0])
            assert batch["positions"][row, where].tolist() == list(range(len(where)))
            out.append((tuple(ids.tolist()), tuple(mask.tolist())))
    return out


def expected_examples(workdir: Path, max_len: int = SEQ_LEN) -> Counter:
    examples, _ = examples_from_records(iter_records(all_iteration_dirs(workdir)), max_len)
    return Counter((tuple(e.ids.tolist()), tuple(e.loss_mask.tolist())) for e in examples)


def test_each_epoch_holds_every_example_once(workdir: Path) -> None:
    pipeline = make(workdir)
    assert len(pipeline.source) == 20  # the duplicate is read once
    assert pipeline.num_examples == pipeline.stats.examples > 20
    bpe = pipeline.batches_per_epoch
    assert bpe == -(-pipeline.num_rows // 4) and pipeline.num_steps(3) == 3 * bpe
    want = expected_examples(workdir)
    epochs = []
    for epoch in range(2):
        got: Counter = Counter()
        for step in range(epoch * bpe, (epoch + 1) * bpe):
            batch = pipeline.batch(step)
            assert set(batch) == set(PACKED_KEYS)
            assert all(v.shape == (4, SEQ_LEN) for v in batch.values())
            assert batch["input_ids"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
            got.update(segments(batch))
        assert got == want
        epochs.append([pipeline.global_rows(s).tolist() for s in range(epoch * bpe, (epoch + 1) * bpe)])
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    # Targets are only label tokens: as many loss tokens as the stats' target tokens.
    total = sum(pipeline.batch(s)["loss_mask"].sum() for s in range(bpe))
    assert total == pipeline.stats.target_tokens


def test_batches_are_a_function_of_seed_and_step(workdir: Path) -> None:
    a, b, c = make(workdir), make(workdir), make(workdir, seed=8)
    for step in (0, 3, a.batches_per_epoch + 1):
        for key in PACKED_KEYS:
            np.testing.assert_array_equal(a.batch(step)[key], b.batch(step)[key])
    assert any(
        not np.array_equal(a.batch(s)["input_ids"], c.batch(s)["input_ids"]) for s in range(3))


def test_processes_read_disjoint_parts_that_make_the_global_batch(workdir: Path) -> None:
    whole = make(workdir)
    parts = [make(workdir, process_index=p, process_count=2) for p in range(2)]
    assert all(p.batches_per_epoch == whole.batches_per_epoch for p in parts)
    seen: list[list[int]] = [[], []]
    for step in range(whole.batches_per_epoch):
        local = [p.batch(step) for p in parts]
        assert all(b["input_ids"].shape == (2, SEQ_LEN) for b in local)
        glued = {k: np.concatenate([b[k] for b in local]) for k in PACKED_KEYS}
        for key in PACKED_KEYS:
            np.testing.assert_array_equal(glued[key], whole.batch(step)[key])
        for p, part in enumerate(parts):
            seen[p] += [e for row in part.local_rows(step) for e in part.row_examples(int(row))]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(whole.num_examples))


def test_a_restored_iterator_continues_exactly(workdir: Path) -> None:
    pipeline = make(workdir)
    total = pipeline.num_steps(2)
    uninterrupted = list(pipeline.iterator(num_epochs=2))
    assert len(uninterrupted) == total

    first = make(workdir).iterator(num_epochs=2)
    k = pipeline.batches_per_epoch - 1  # resume just before an epoch boundary
    consumed = [next(first) for _ in range(k)]
    state = json.loads(json.dumps(first.get_state()))  # JSON-able
    assert state["next_step"] == k

    resumed = make(workdir).iterator(state, num_epochs=2)
    rest = list(resumed)
    assert len(consumed) + len(rest) == total
    for got, want in zip(consumed + rest, uninterrupted, strict=True):
        for key in PACKED_KEYS:
            np.testing.assert_array_equal(got[key], want[key])


def test_a_state_for_other_data_is_refused(workdir: Path, tmp_path: Path, chat) -> None:
    state = make(workdir).iterator().get_state()
    with pytest.raises(ValueError, match="other data or settings"):
        make(workdir, seq_len=2048).iterator(state)
    grown = tmp_path / "grown"
    for i, directory in enumerate(all_iteration_dirs(workdir)):
        with ShardWriter(iteration_dir(grown, i), "w0", 50) as writer:
            for record in iter_records(directory):
                writer.write(record)
    assert make(grown).iterator(state).next_step == 0  # the same episodes: accepted
    with ShardWriter(iteration_dir(grown, 2), "w0", 5) as writer:
        for record in episode_batch(chat, 2, iteration=2):
            writer.write(record)
    with pytest.raises(ValueError, match="other data or settings"):
        make(grown).iterator(state)
    with pytest.raises(ValueError, match="version"):
        make(workdir).iterator({"next_step": 3})


def test_batch_fn_follows_the_trainers_steps(workdir: Path) -> None:
    pipeline = make(workdir)
    fn = pipeline.batch_fn(first_step=100)
    for step in (100, 101, 102, 105, 106, 101):
        np.testing.assert_array_equal(fn(step)["input_ids"], pipeline.batch(step - 100)["input_ids"])


def test_long_examples_are_dropped_counted_and_never_packed(workdir: Path) -> None:
    pipeline = make(workdir, max_len=400)
    assert sum(pipeline.stats.dropped.values()) > 0
    assert pipeline.stats.trained_turns + sum(pipeline.stats.dropped.values()) == \
        pipeline.stats.labelled_turns
    got: Counter = Counter()
    for step in range(pipeline.batches_per_epoch):
        got.update(segments(pipeline.batch(step)))
    assert got == expected_examples(workdir, max_len=400)
    assert max(len(ids) for ids, _ in got) <= 400


def test_padding_and_drop_remainder(workdir: Path) -> None:
    padded = make(workdir, batch_size=6)
    last = padded.batch(padded.batches_per_epoch - 1)
    empty_rows = (padded.global_rows(padded.batches_per_epoch - 1) < 0).sum()
    assert empty_rows == (-padded.num_rows) % 6
    if empty_rows:
        assert not last["segment_ids"][-empty_rows:].any() and not last["loss_mask"][-empty_rows:].any()
    dropped = make(workdir, batch_size=6, drop_remainder=True)
    assert dropped.batches_per_epoch == padded.num_rows // 6


def test_pack_rows_is_first_fit_within_the_open_window() -> None:
    lengths = np.array([6, 5, 4, 3, 2, 10, 1])
    rows = pack_rows(np.arange(7), lengths, 10, open_bins=2)
    assert sorted(e for row in rows for e in row) == list(range(7))
    assert all(lengths[row].sum() <= 10 for row in rows)
    assert rows[0] == [0, 2]  # 6 + 4 fills a row: it closes at once
    with pytest.raises(ValueError, match="more than seq_len"):
        pack_rows(np.arange(1), np.array([11]), 10, 2)


def test_bad_settings_and_empty_data(workdir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of process_count"):
        make(workdir, batch_size=3, process_count=2)
    with pytest.raises(ValueError, match="max_len"):
        make(workdir, max_len=SEQ_LEN + 1)
    (tmp_path / "data" / "iter_000").mkdir(parents=True)
    with pytest.raises(ValueError, match="no training examples"):
        make(tmp_path)


def test_process_defaults_come_from_jax(workdir: Path) -> None:
    pipeline = TrajectoryPipeline(all_iteration_dirs(workdir), seq_len=SEQ_LEN, batch_size=4)
    assert (pipeline.process_index, pipeline.process_count) == (0, 1)


def test_damaged_data_is_named_at_startup_and_at_reading(workdir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    for i, directory in enumerate(all_iteration_dirs(workdir)):
        with ShardWriter(iteration_dir(copy, i), "w0", 4) as writer:
            for record in iter_records(directory):
                writer.write(record)
    shard = iteration_dir(copy, 1) / "w0-00001.arecord"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(ShardError, match=r"iter_001/w0-00001.arecord .*truncated"):
        make(copy)
    # Damage the same-size way (a flipped byte): found when a batch reads that record.
    damaged = bytearray(data)
    damaged[200] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    pipeline = make(copy)
    with pytest.raises(ShardError, match=r"iter_001/w0-00001.arecord record 0"):
        list(pipeline.iterator(num_epochs=1))


def test_batches_do_not_depend_on_the_order_episodes_finished(workdir: Path, tmp_path: Path, chat) -> None:
    """Concurrent collectors list episodes as they finish: the same episodes written in another
    order (and other shard sizes) must give the same batches and the same fingerprint."""
    records = list(EpisodeSource(all_iteration_dirs(workdir)))
    shuffled = [records[i] for i in np.random.default_rng(3).permutation(len(records))]
    with ShardWriter(iteration_dir(tmp_path, 0), "w0", 4) as writer:
        for record in shuffled:
            writer.write(record)
    a = make(workdir)
    b = TrajectoryPipeline([iteration_dir(tmp_path, 0)], seq_len=SEQ_LEN, batch_size=4, seed=7,
                           process_index=0, process_count=1)
    assert a.num_steps(1) == b.num_steps(1) > 1
    for step in range(a.num_steps(2)):
        x, y = a.batch(step), b.batch(step)
        assert all(np.array_equal(x[k], y[k]) for k in x), step
    assert a.iterator().get_state() == b.iterator().get_state()


def test_label_caps_keep_whole_episodes_in_id_order_up_to_each_iterations_cap(workdir: Path) -> None:
    dirs = all_iteration_dirs(workdir)
    uncapped = make(workdir)
    per_dir = {d: sorted((r.episode_id, sum(1 for t in r.turns if t.label_ids))
                         for r in EpisodeSource([d])) for d in dirs}
    cap = sum(n for _, n in per_dir[dirs[0]][:5])  # exactly the first five episodes of iteration 0
    capped = make(workdir, label_caps=[cap, 0])
    kept = set()
    for step in range(capped.num_steps(1)):
        kept |= set(segments(capped.batch(step)))
    first_five = {eid for eid, _ in per_dir[dirs[0]][:5]}
    wanted = Counter((tuple(e.ids.tolist()), tuple(e.loss_mask.tolist())) for e in examples_from_records(
        [r for r in EpisodeSource(dirs) if r.iteration == 1 or r.episode_id in first_five], SEQ_LEN)[0])
    assert kept == set(wanted)
    assert capped.stats.trained_turns == cap + uncapped.stats.trained_turns - sum(n for _, n in per_dir[dirs[0]])
    assert capped.episodes_over_cap == len(per_dir[dirs[0]]) - 5
    assert capped.fingerprint != uncapped.fingerprint
    assert make(workdir, label_caps=[0, 0]).fingerprint == uncapped.fingerprint  # no cap: as before
    one_short = make(workdir, label_caps=[cap - 1, 0])  # the fifth no longer fits, nor any after
    assert one_short.episodes_over_cap == len(per_dir[dirs[0]]) - 4
    with pytest.raises(ValueError, match=r"label_caps=\[5\]: need one cap >= 0 per directory \(2"):
        make(workdir, label_caps=[5])


def test_agreeing_student_turns_train_in_the_trunk_and_older_manifests_are_refused(
        tmp_path: Path, chat) -> None:
    """A student turn that executed its label trains inside the trunk. A manifest written
    before the summaries said so (four fields) is refused by name, not planned some other way."""
    records = [make_episode(chat, f"job0/agree_{k}/0", executors)[0]
               for k, executors in enumerate(["tasat", "aat", "sa", "tt"])]
    with ShardWriter(iteration_dir(tmp_path, 0), "w0", 2) as writer:
        for record in records:
            writer.write(record)
    new = TrajectoryPipeline([iteration_dir(tmp_path, 0)], seq_len=SEQ_LEN, batch_size=2,
                             seed=7, process_index=0, process_count=1)
    assert new.stats.student_turns_in_trunk == 5 and new.stats.examples == 6
    got: Counter = Counter()
    for step in range(new.batches_per_epoch):
        got.update(segments(new.batch(step)))
    targets = sum(sum(mask) for (_, mask), n in got.items() for _ in range(n))
    assert sum(got.values()) == new.stats.examples
    assert targets == new.stats.target_tokens
    manifest = iteration_dir(tmp_path, 0) / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for line in lines:
        line["turn_summaries"] = [[s[:4] for s in episode] for episode in line["turn_summaries"]]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ShardError, match="manifest.jsonl line 1: malformed entry for shard"):
        TrajectoryPipeline([iteration_dir(tmp_path, 0)], seq_len=SEQ_LEN, batch_size=2, seed=7,
                           process_index=0, process_count=1)