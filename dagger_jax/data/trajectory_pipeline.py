"""The trainer's input: every iteration's episodes -> examples -> packed, shuffled batches.

Plan first, read later. Which examples an episode yields and how long each is follow from
the turn summaries in the shard manifests (data/examples.py), so the whole epoch structure
is computed up front from the manifests alone, identically on every host:

1. index: one entry per example (episode key, example number, length) over all episodes
   of all directories given (aggregation), duplicates read once (data/shards.py);
2. rows: the examples in a seeded random order, packed first-fit into rows of seq_len
   tokens (a window of `open_bins` rows open at a time, so planning is O(examples));
3. batches: each epoch is a seeded permutation of all rows (a different one per epoch),
   cut into global batches of batch_size rows; the last, partial batch is padded with
   empty rows (loss mask 0), or dropped with drop_remainder;
4. per process: process p of P loads only rows [p * B/P, (p + 1) * B/P) of each global
   batch: hosts read disjoint parts, together exactly the global batch, and agree on the
   number of steps (no host runs out of data before another).

A batch is thus a pure function of (data, settings, step): a step's rows are read
(grain's MapDataset with prefetch threads) only when it is needed, the number of batches
per epoch is known before training, and an iterator's state is just the next step
(JSON-able): a resumed run neither repeats nor skips an example. Packing once (rather than
per epoch) keeps each row's examples together across epochs; it is what makes the number of
batches per epoch a constant.

Row layout (see data/packing.pack_examples): input_ids, target_ids (next token within the
example), loss_mask (float32; on where the target is a trained token), segment_ids, positions,
loss_weights (float32; the recipe's per-token weight, 1.0 on every target for weight one),
old_logprobs (float32; the sampling log-prob of each target, on-policy recipes).

The recipe's side (recipes/recipes.py), decided from the manifests before anything is read:
- weighting: "one" trains on the teacher's labels (SFT, DAgger, AggreVaTe); "reverse_kl" (OPD)
  and "group_advantage" (GRPO) train on the student's own sampled tokens (data/examples.py);
- success_filter (rejection-sampling SFT): unresolved episodes yield no examples;
- group_advantage: an episode's reward is 1.0 if resolved, else 0.0; its advantage is
  (r - mean) / (std + GROUP_STD_EPS) over its group: the episodes of the same task in the same
  directory (iteration), population std. A group whose rewards are all equal (one episode
  alone, say) has advantage 0 everywhere: its tokens add nothing to the gradient, though they
  still count in the per-token normaliser (GRPO's token mean). Advantages are fixed at build
  time (they need every episode of the iteration), so batches stay a pure function of step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from dagger_jax.data.examples import (ExampleStats, build_example, plan_examples,
                                      target_of)
from dagger_jax.data.packing import pack_examples
from dagger_jax.data.records import EpisodeRecord, RecordError
from dagger_jax.data.shards import EpisodeSource
from dagger_jax.names import FLOAT_KEYS, PACKED_KEYS, check_weight

log = logging.getLogger(__name__)

STATE_VERSION = 1
PathLike = str | os.PathLike
# GRPO: A = (r - mean) / (std + eps); eps keeps a group of rewards [1, 0, 0, 0] finite and a
# group with one dissenter from blowing up, while leaving a [1, 0, 0, 1] group at about +-1.
GROUP_STD_EPS = 1e-6


def group_advantages(rewards: Sequence[float], eps: float = GROUP_STD_EPS) -> np.ndarray:
    """GRPO's advantages of one group: (r - mean) / (population std + eps); all-equal -> 0."""
    r = np.asarray(rewards, dtype=np.float64)
    if not len(r):
        return r
    centred = r - r.mean()
    if not np.any(centred):  # all equal: exactly zero, however eps is chosen
        return np.zeros_like(r)
    return centred / (r.std() + eps)


@dataclasses.dataclass(frozen=True)
class _Index:
    """One entry per planned example, as parallel arrays."""

    episode: np.ndarray  # int64: key into the EpisodeSource
    number: np.ndarray  # int32: which of that episode's planned examples
    length: np.ndarray  # int64: tokens


def _seed_rng(*words: int) -> np.random.Generator:
    # SeedSequence mixes the words, so (seed, epoch) and (seed + 1, epoch - 1) are unrelated.
    sequence = np.random.SeedSequence([w & 0xFFFFFFFF for w in words])
    return np.random.Generator(np.random.PCG64(sequence))


def pack_rows(
    order: np.ndarray, lengths: np.ndarray, seq_len: int, open_bins: int
) -> list[list[int]]:
    """First-fit packing of examples (in `order`) into rows of seq_len tokens.

    Up to open_bins rows are open; an example goes into the first open row with room, else
    into a new row, closing the fullest open row if open_bins are open. Rows are returned in
    the order they close (a full row closes at once). Every example must fit in a row.
    """
    rows: list[list[int]] = []
    bins: list[list[Any]] = []  # [free tokens, example indices]
    for example in order.tolist():
        length = int(lengths[example])
        if length > seq_len:
            raise ValueError(f"example {example} has {length} tokens, more than seq_len={seq_len}")
        target = next((b for b in bins if b[0] >= length), None)
        if target is None:
            if len(bins) == open_bins:
                fullest = min(range(len(bins)), key=lambda i: bins[i][0])
                rows.append(bins.pop(fullest)[1])
            target = [seq_len, []]
            bins.append(target)
        target[0] -= length
        target[1].append(example)
        if target[0] == 0:
            bins.remove(target)
            rows.append(target[1])
    rows.extend(b[1] for b in bins)
    return rows


class TrajectoryPipeline:
    """Fixed-shape training batches from the episodes in dirs (all iterations so far).

    batch_size is the global number of rows per step; this process gets batch_size /
    process_count of them, block process_index (the trainer's row_block: processes that share
    rows load the same block; default jax's process index and count). max_len (default
    seq_len) bounds an example's length: longer ones are dropped and counted (stats.dropped).
    weighting / success_filter are the recipe's (module doc); episodes_filtered counts the
    unresolved episodes the success filter left out.
    """

    def __init__(
        self,
        dirs: PathLike | Sequence[PathLike],
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        max_len: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        open_bins: int = 16,
        drop_remainder: bool = False,
        num_threads: int = 2,
        prefetch: int = 2,
        weighting: str = "one",
        success_filter: bool = False,
        label_caps: Sequence[int] | None = None,
    ) -> None:
        if process_index is None or process_count is None:
            import jax  # only here: the data layer does not need jax otherwise

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        max_len = seq_len if max_len is None else max_len
        if not 2 <= max_len <= seq_len:
            raise ValueError(f"max_len={max_len} must be in [2, seq_len={seq_len}]")
        if batch_size <= 0 or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of "
                f"process_count={process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if open_bins < 1:
            raise ValueError(f"open_bins must be >= 1, got {open_bins}")
        check_weight(weighting, "TrajectoryPipeline weighting")
        self.weighting, self.success_filter = weighting, success_filter
        dir_count = 1 if isinstance(dirs, (str, os.PathLike)) else len(dirs)
        if label_caps is not None and (len(label_caps) != dir_count or min(label_caps) < 0):
            raise ValueError(f"label_caps={list(label_caps)}: need one cap >= 0 per directory "
                             f"({dir_count}; 0: no cap)")
        self.label_caps = list(label_caps) if label_caps is not None and any(label_caps) else None
        self.target = target_of(weighting)
        self.seq_len, self.batch_size, self.seed, self.max_len = seq_len, batch_size, seed, max_len
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = batch_size // process_count
        self.open_bins, self.drop_remainder = open_bins, drop_remainder
        self.num_threads, self.prefetch = num_threads, prefetch

        self.source = EpisodeSource(dirs)
        self.source.check_files()  # a truncated shard fails here, not steps into training
        self._advantages = self._episode_advantages()
        self._index, self.stats = self._build_index()
        if not len(self._index.length):
            raise ValueError(
                f"no training examples in {[str(d) for d in self.source.dirs]} "
                f"({len(self.source)} episodes; {self.stats.to_dict()})")
        order = _seed_rng(seed, 0).permutation(len(self._index.length))
        rows = pack_rows(order, self._index.length, seq_len, open_bins)
        self._row_offsets = np.cumsum([0, *map(len, rows)])
        self._row_examples = np.asarray([e for row in rows for e in row], dtype=np.int64)
        self.num_rows = len(rows)
        full, partial = divmod(self.num_rows, batch_size)
        self.batches_per_epoch = full if drop_remainder else full + (partial > 0)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{self.num_rows} packed rows make no full batch of {batch_size} rows "
                "(drop_remainder=True): collect more episodes or use a smaller batch")
        self.fingerprint = self._fingerprint()
        self._epoch_orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # grain loads batches from several threads
        log.info(
            "trajectory pipeline: %d episodes (%d duplicates skipped, %d unresolved filtered "
            "out, %d past the label caps), %d examples, %d rows of %d (fill %.3f), %d "
            "batches/epoch of %d rows, weighting %s; %s",
            len(self.source), self.source.num_duplicates, self.episodes_filtered,
            self.episodes_over_cap,
            self.num_examples, self.num_rows, seq_len, self.fill, self.batches_per_epoch,
            batch_size, weighting, self.stats.to_dict())

    # --- planning -----------------------------------------------------------------------

    def _episode_advantages(self) -> np.ndarray | None:
        """Per episode key, its GRPO advantage (group_advantage only), from the manifests."""
        if self.weighting != "group_advantage":
            return None
        groups: dict[tuple[str, str], list[int]] = {}
        rewards = np.zeros(len(self.source), np.float64)
        for key in range(len(self.source)):
            task_id, resolved = self.source.outcome(key)
            rewards[key] = 1.0 if resolved else 0.0
            groups.setdefault((str(self.source.directory(key)), task_id), []).append(key)
        advantages = np.zeros(len(self.source), np.float64)
        for keys in groups.values():
            advantages[keys] = group_advantages(rewards[keys])
        informative = sum(1 for keys in groups.values() if np.any(advantages[keys]))
        log.info("GRPO: %d groups (%d with differing rewards, the rest train at advantage 0), "
                 "mean reward %.3f", len(groups), informative,
                 rewards.mean() if len(rewards) else 0.0)
        return advantages

    def _build_index(self) -> tuple[_Index, ExampleStats]:
        episodes, numbers, lengths = [], [], []
        stats = ExampleStats()
        self.episodes_filtered = self.episodes_over_cap = 0
        caps = dict(zip(self.source.dirs, self.label_caps)) if self.label_caps else {}
        labels: dict[Any, int] = {}  # per directory, the labelled turns of the episodes taken
        # By episode id, not manifest order: concurrent collectors list episodes in the order
        # they finish, and two runs of the same job must still train on the same batches.
        ids = self.source.episode_ids()
        for key in sorted(range(len(self.source)), key=ids.__getitem__):
            if self.success_filter and not self.source.outcome(key)[1]:
                self.episodes_filtered += 1
                continue
            summaries = self.source.turn_summaries(key)
            directory = self.source.directory(key)
            cap = caps.get(directory, 0)
            if cap:
                # Whole episodes in id order up to the cap: the collector stops *starting*
                # episodes at its budget, and those already running add a few labels more
                # (longer episodes, more of them); the cap makes recipes train on at most the
                # same number of labels. After the first episode that does not fit, none does.
                mine = sum(1 for summary in summaries if summary[3])
                if labels.get(directory, 0) + mine > cap:
                    labels[directory] = cap
                    self.episodes_over_cap += 1
                    continue
                labels[directory] = labels.get(directory, 0) + mine
            specs, counts = plan_examples(summaries, self.max_len, self.target)
            stats = stats + counts
            for number, spec in enumerate(specs):
                episodes.append(key)
                numbers.append(number)
                lengths.append(spec.length)
        if self.success_filter and self.episodes_filtered == len(self.source):
            raise ValueError(
                f"rejection-sampling SFT trains on resolved episodes only, and none of the "
                f"{len(self.source)} episodes in {[str(d) for d in self.source.dirs]} is "
                "resolved: nothing to train on (more tasks per iteration, or easier tasks)")
        if self.success_filter:
            log.info("success filter: %d of %d episodes unresolved, filtered out",
                     self.episodes_filtered, len(self.source))
        index = _Index(np.asarray(episodes, np.int64), np.asarray(numbers, np.int32),
                       np.asarray(lengths, np.int64))
        return index, stats

    def _fingerprint(self) -> str:
        """Identifies the data and the settings that decide every batch's contents.

        The episodes (by id) and their examples' lengths, not file paths: a workdir that
        is moved or re-sharded with the same episodes keeps its batches, and its state.
        """
        h = hashlib.sha256()
        h.update("\n".join(sorted(self.source.episode_ids())).encode())
        h.update(self._index.length.tobytes() + self._index.number.tobytes())
        h.update(
            f"{self.seq_len}|{self.batch_size}|{self.seed}|{self.max_len}|{self.open_bins}|"
            f"{self.drop_remainder}".encode())
        # Only when not the defaults, so the states saved by weight-one runs stay valid.
        if self.weighting != "one" or self.success_filter:
            h.update(f"|{self.weighting}|{self.success_filter}".encode())
        if self._advantages is not None:
            h.update(self._advantages.tobytes())
        if self.label_caps:
            h.update(f"|caps {self.label_caps}".encode())
        return h.hexdigest()[:16]

    @property
    def num_examples(self) -> int:
        return len(self._index.length)

    @property
    def fill(self) -> float:
        """Fraction of row tokens that are example tokens."""
        return float(self._index.length.sum()) / (self.num_rows * self.seq_len)

    def num_steps(self, num_epochs: int) -> int:
        return num_epochs * self.batches_per_epoch

    def _epoch_order(self, epoch: int) -> np.ndarray:
        with self._lock:
            order = self._epoch_orders.get(epoch)
            if order is None:
                order = _seed_rng(self.seed, 1, epoch).permutation(self.num_rows)
                if len(self._epoch_orders) >= 2:  # steps run forward: keep this and the last
                    self._epoch_orders.pop(min(self._epoch_orders))
                self._epoch_orders[epoch] = order
            return order

    def global_rows(self, step: int) -> np.ndarray:
        """Packed-row numbers of step's global batch; -1 for padding rows."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, batch = divmod(step, self.batches_per_epoch)
        rows = self._epoch_order(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size]
        return np.concatenate([rows, np.full(self.batch_size - len(rows), -1, np.int64)])

    def local_rows(self, step: int) -> np.ndarray:
        """The rows of step's global batch that this process loads."""
        start = self.process_index * self.local_batch_size
        return self.global_rows(step)[start : start + self.local_batch_size]

    def row_examples(self, row: int) -> list[int]:
        """Example numbers packed into a row (none for a padding row, -1)."""
        if row < 0:
            return []
        return self._row_examples[self._row_offsets[row] : self._row_offsets[row + 1]].tolist()

    # --- loading ------------------------------------------------------------------------

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of training step `step` (any step >= 0; epochs follow on)."""
        records: dict[int, EpisodeRecord] = {}  # an episode's examples often share a row
        shape = (self.local_batch_size, self.seq_len)
        out = {key: np.zeros(shape, np.float32 if key in FLOAT_KEYS else np.int32)
               for key in PACKED_KEYS}
        for slot, row in enumerate(self.local_rows(step).tolist()):
            examples = [self._load_example(e, records) for e in self.row_examples(row)]
            if not examples:
                continue
            packed = pack_examples(examples, self.seq_len)
            assert len(packed["input_ids"]) == 1, "a planned row holds at most seq_len tokens"
            for key in PACKED_KEYS:
                out[key][slot] = packed[key][0]
        return out

    def _load_example(
        self, example: int, records: dict[int, EpisodeRecord]
    ) -> tuple[np.ndarray, ...]:
        key = int(self._index.episode[example])
        record = records.get(key)
        if record is None:
            record = records[key] = self.source[key]
        # Planned again from the record itself: it must give what the manifest planned.
        specs, _ = plan_examples(record.turn_summaries(), self.max_len, self.target)
        number = int(self._index.number[example])
        if number >= len(specs) or specs[number].length != self._index.length[example]:
            location = self.source.locations[key]
            raise RecordError(
                f"{self.source.shards[location.shard].path} record {location.position}: episode "
                f"{record.episode_id!r} does not match its manifest's turn summaries")
        advantage = 0.0 if self._advantages is None else float(self._advantages[key])
        return build_example(record, specs[number], self.weighting, advantage).arrays()

    # --- iteration ----------------------------------------------------------------------

    def iterator(self, state: dict[str, Any] | None = None, *, start_step: int = 0,
                 num_epochs: int | None = None) -> TrajectoryIterator:
        """Batches from start_step (or from a saved state), for num_epochs (None: endless)."""
        stop = None if num_epochs is None else self.num_steps(num_epochs)
        iterator = TrajectoryIterator(self, start_step, stop)
        if state is not None:
            iterator.set_state(state)
        return iterator

    def batch_fn(self, first_step: int = 0) -> Callable[[int], dict[str, np.ndarray]]:
        """For Trainer.fit: step -> batch (step - first_step of this pipeline), prefetched
        while steps come in order, restarted wherever a step out of order is asked for."""
        current: list[TrajectoryIterator] = []

        def fn(step: int) -> dict[str, np.ndarray]:
            local = step - first_step
            if not current or current[0].next_step != local:
                current[:] = [self.iterator(start_step=local)]
            return next(current[0])

        return fn


class TrajectoryIterator:
    """Batches of a TrajectoryPipeline in step order, loaded ahead by grain threads.

    get_state() is {"version", "next_step", "fingerprint"} (JSON-able); set_state() on an
    iterator of a pipeline over the same data and settings continues at exactly that step.
    """

    def __init__(self, pipeline: TrajectoryPipeline, start_step: int, stop_step: int | None):
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self._pipeline = pipeline
        self._stop = stop_step
        self.next_step = start_step
        self._batches: Any = None

    def _open(self) -> Any:
        stop = self._stop if self._stop is not None else 2**62
        dataset = grain.MapDataset.range(self.next_step, max(stop, self.next_step))
        dataset = dataset.map(self._pipeline.batch)
        options = grain.ReadOptions(num_threads=self._pipeline.num_threads,
                                    prefetch_buffer_size=self._pipeline.prefetch)
        return iter(dataset.to_iter_dataset(options))

    def __iter__(self) -> TrajectoryIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._stop is not None and self.next_step >= self._stop:
            raise StopIteration
        if self._batches is None:
            self._batches = self._open()
        batch = next(self._batches)
        self.next_step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "next_step": self.next_step,
                "fingerprint": self._pipeline.fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a trajectory pipeline state of version {STATE_VERSION}: {state!r}")
        if state.get("fingerprint") != self._pipeline.fingerprint:
            raise ValueError(
                f"the saved pipeline state is for other data or settings (fingerprint "
                f"{state.get('fingerprint')}, this pipeline {self._pipeline.fingerprint}): "
                "resuming it here would repeat or skip examples")
        step = state.get("next_step")
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"bad next_step in pipeline state: {step!r}")
        self.next_step = step
        self._batches = None  # reopened lazily at the restored step

