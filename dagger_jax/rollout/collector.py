"""A collection job: many mixed episodes at once, written as ArrayRecord shards.

A job names its episodes `<job_id>/<task_id>/<k>`. Before starting, the collector reads the
output directory's manifest and skips every episode already listed there, so a job that is
retried (the same job id), or restarted after its process was killed, completes the iteration
without collecting any episode twice and without losing any: episodes of a shard that was not
finished are simply run again. Concurrency is a pool of sandboxes (a semaphore): each running
episode holds one.

An episode the infrastructure failed (rollout/faults.py) is run again from the start, up to
EPISODE_ATTEMPTS times within the job's patience, and is never written as an outcome. Once the
patience is spent, no further episode starts; everything that finished is stored, and the job
raises CollectionIncomplete so that it is run again once the fleet or the sandbox host is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Any, Callable, Mapping

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.records import EpisodeRecord
from dagger_jax.data.shard_sync import SyncedShardDir
from dagger_jax.data.shards import ShardWriter, existing_episode_ids, labelled_turns
from dagger_jax.envs.sandbox.base import SandboxBackend
from dagger_jax.envs.tasks.task import Task
from dagger_jax.policies.actors import Actor
from dagger_jax.rollout.faults import (FAULT_REASONS, CollectionIncomplete, InfrastructureFault,
                                       Patience)
from dagger_jax.rollout.mixed_episode import (EpisodeSettings, Provenance, episode_seed,
                                              run_mixed_episode)
from dagger_jax.rollout.mixing import RolloutRule
from dagger_jax.rollout.stats import CollectorStats

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Starts of one episode that the infrastructure failed (a lost sandbox, an image that will not
# start): a fault that follows one episode is left for a rerun rather than retried forever.
EPISODE_ATTEMPTS = 3


@dataclasses.dataclass(frozen=True)
class CollectionJob:
    job_id: str
    iteration: int
    rule: RolloutRule
    task_ids: tuple[str, ...]
    out_dir: str
    episodes_per_task: int = 1
    seed: int = 0
    student_version: str = ""
    teacher_id: str = ""
    settings: EpisodeSettings = EpisodeSettings()
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # > 0: stop starting episodes once this many teacher-labelled turns are stored (recipes are
    # compared at equal labels, and a student that errs makes DAgger episodes longer). Episodes
    # already running finish, so the job may end a few episodes over the budget.
    label_budget: int = 0

    def __post_init__(self) -> None:
        if not _JOB_ID.fullmatch(self.job_id):
            raise ValueError(f"job id {self.job_id!r} must match {_JOB_ID.pattern} "
                             "(it names shards and episodes)")
        if self.episodes_per_task < 1:
            raise ValueError(f"job {self.job_id}: episodes_per_task must be >= 1")
        if self.label_budget < 0:
            raise ValueError(f"job {self.job_id}: label_budget must be >= 0, got {self.label_budget}")
        if len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"job {self.job_id}: task_ids has duplicates")

    def episode_ids(self) -> list[tuple[str, str]]:
        """(episode id, task id) for every episode of the job, in a fixed order."""
        return [(f"{self.job_id}/{task_id}/{k}", task_id)
                for task_id in self.task_ids for k in range(self.episodes_per_task)]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["task_ids"] = list(self.task_ids)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CollectionJob":
        data = dict(data)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"collection job: unknown keys {unknown}")
        try:
            data["rule"] = RolloutRule(**data.get("rule", {}))
            data["settings"] = EpisodeSettings(**data.get("settings", {}))
            data["task_ids"] = tuple(data.get("task_ids", ()))
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"collection job: {e}") from None


@dataclasses.dataclass(frozen=True)
class CollectionReport:
    job_id: str
    episodes_total: int
    episodes_written: int
    episodes_skipped: int          # already stored before this run
    resolved: int
    failed: dict[str, int]          # end_reason -> count, for episodes ended by a fault
    stats: dict[str, float]
    endpoints: dict[str, Any] = dataclasses.field(default_factory=dict)  # role -> client / pool stats

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)




async def collect(job: CollectionJob, tasks: Mapping[str, Task], *, student: Actor | None,
                  teacher: Actor | None, chat: ChatTokenizer, backend: SandboxBackend,
                  concurrency: int = 4, records_per_shard: int = 16, progress: bool = False,
                  stats: CollectorStats | None = None,
                  on_record: Callable[[EpisodeRecord], None] | None = None,
                  patience: Patience | None = None) -> CollectionReport:
    """Runs every episode of the job not yet stored in job.out_dir and stores it; raises
    CollectionIncomplete (after storing the rest) when the infrastructure failed some.

    on_record, when given, is called with each record as soon as it is handed to the shard
    writer (the eval tool appends a prediction line per finished episode with it)."""
    missing = [t for t in job.task_ids if t not in tasks]
    if missing:
        raise ValueError(f"job {job.job_id}: task ids not in the task set: {missing[:5]}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    stats = stats if stats is not None else CollectorStats()
    # Shards are written locally; into object storage each is published as soon as it is listed.
    records = SyncedShardDir(job.out_dir)
    out_dir = records.pull()
    done = existing_episode_ids(out_dir) if out_dir.exists() else set()
    todo = [(eid, tid) for eid, tid in job.episode_ids() if eid not in done]
    provenance = Provenance(job.iteration, job.student_version, job.teacher_id,
                            {**job.metadata, "job_id": job.job_id})
    slots = asyncio.Semaphore(concurrency)
    resolved, failed, written = 0, {}, 0
    labelled = [labelled_turns(out_dir) if job.label_budget and done else 0]
    patience = patience if patience is not None else Patience(job.settings.infra_patience_s)
    uncollected: dict[str, str] = {}  # episode id -> the infrastructure fault that stopped it

    async def attempts(episode_id: str, task_id: str) -> EpisodeRecord | None:
        for attempt in range(EPISODE_ATTEMPTS):
            try:
                return await run_mixed_episode(
                    tasks[task_id], episode_id=episode_id, seed=episode_seed(job.seed, episode_id),
                    rule=job.rule, student=student, teacher=teacher, chat=chat, backend=backend,
                    settings=job.settings, provenance=provenance, stats=stats, patience=patience)
            except InfrastructureFault as fault:
                uncollected[episode_id] = str(fault)
                if attempt + 1 == EPISODE_ATTEMPTS or patience.exhausted is not None:
                    break
                try:
                    await patience.wait(f"a new start of episode {episode_id}", fault.cause, attempt)
                except InfrastructureFault:
                    break
                stats.count("episode_restarts")
        log.warning("episode %s left uncollected: %s", episode_id, uncollected[episode_id])
        return None

    async def one(episode_id: str, task_id: str):
        async with slots:  # FIFO: episodes start in the job's order
            if job.label_budget and labelled[0] >= job.label_budget:
                return None
            if patience.exhausted is not None:  # the outage outlasted the patience
                uncollected.setdefault(episode_id, f"not started: {patience.exhausted}")
                return None
            record = await attempts(episode_id, task_id)
            if record is None:
                return None
            uncollected.pop(episode_id, None)
            # Counted before the slot is freed: the episode that takes it sees these labels
            # (counted where the record is written, one episode too many started at concurrency
            # 1, and a restart, which counts the stored labels, could start fewer).
            labelled[0] += sum(1 for turn in record.turns if turn.label_ids)
            return record

    with ShardWriter(out_dir, job.job_id, records_per_shard, on_listed=records.push) as writer, \
            _progress(progress, job.job_id, len(todo)) as (bar, bar_task):
        pending = [asyncio.ensure_future(one(eid, tid)) for eid, tid in todo]
        try:
            for finished in asyncio.as_completed(pending):
                record = await finished
                if record is None:  # not started (the label budget) or uncollected
                    continue
                written += writer.write(record)
                if on_record is not None:
                    on_record(record)
                resolved += record.outcome.resolved
                if record.outcome.end_reason in FAULT_REASONS:
                    failed[record.outcome.end_reason] = failed.get(record.outcome.end_reason, 0) + 1
                    log.warning("episode %s ended by %s: %s", record.episode_id,
                                record.outcome.end_reason, record.outcome.error)
                if bar is not None:
                    snap = stats.snapshot()
                    bar.update(bar_task, advance=1, turns=int(snap.get("turns", 0)),
                               rate=snap["turns_per_s"])
        finally:
            for task in pending:
                task.cancel()
    endpoints = {role: found for role, actor in (("student", student), ("teacher", teacher))
                 if (found := endpoint_stats(actor)) is not None}
    snapshot = stats.snapshot()
    snapshot["retries"] = sum(_retries(e) for e in endpoints.values())
    if uncollected:
        first = next(iter(uncollected.values()))
        raise CollectionIncomplete(
            f"job {job.job_id}: {len(uncollected)} of {len(todo)} episodes were not collected "
            f"because of infrastructure faults (first: {first}); the {written} that finished are "
            f"stored in {job.out_dir}: run the job again to collect the rest", sorted(uncollected))
    return CollectionReport(job.job_id, len(job.episode_ids()), written, len(job.episode_ids()) - len(todo),
                            resolved, failed, snapshot, endpoints)


def endpoint_stats(actor: Actor | None) -> dict[str, Any] | None:
    """The retry / failover counters of an actor's model client (a pool or one client), if any."""
    stats = getattr(getattr(actor, "generator", None), "stats", None)
    if callable(stats):
        return stats()
    return stats.as_dict() if hasattr(stats, "as_dict") else None


def _retries(stats: dict[str, Any]) -> int:
    if "endpoints" in stats:  # a pool: its clients' retries
        return sum(e["client"]["retries"] for e in stats["endpoints"])
    return int(stats.get("retries", 0))


class _progress:
    """A rich progress bar (episodes, turns, turns/s), or nothing."""

    def __init__(self, enabled: bool, job_id: str, total: int):
        self.progress = Progress(
            TextColumn(f"[bold]{job_id}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[turns]} turns, {task.fields[rate]:.2f} turns/s"),
            TimeElapsedColumn()) if enabled else None
        self.total = total

    def __enter__(self):
        if self.progress is None:
            return None, None
        self.progress.start()
        return self.progress, self.progress.add_task("episodes", total=self.total, turns=0, rate=0.0)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
