"""The outer loop's phases: per iteration collect -> aggregate and train -> export (and reload the
served student) -> evaluate, for any recipe. Everything it works with arrives built (main.py
wires a run); this module holds the phases and their state only.

Every decision is written to `<workdir>/state.json` before it is acted on, and every phase is
idempotent, so a killed run resumes with the same command:
- collect: episodes are named `iterNNN/<task>/<k>` and a rerun skips those already in the
  iteration's manifest (none collected twice, none lost);
- train: the round's first and last global steps are recorded before training starts and the
  batch of step s is a pure function of s, so training resumes from the last checkpoint on
  exactly the batches it would have seen;
- export: written to a temp dir and renamed; redone if missing;
- evaluate: its episodes are collected the same resumable way.

Training collection runs in this process, or as a job of the rollout service when
`settings.rollout_service` is set (the same job: id, episodes and out_dir). Evaluation always
runs in this process.

Several processes (a multi-host pod) run the same loop on one workdir. The leader (process 0)
collects, evaluates, tells the fleet to load exports and writes state.json; the others wait for
it at a barrier after each of those phases (train/processes.py: with a timeout), then read the
iteration's shards. Training and exporting are collective: every process feeds its own rows of
each global batch, and the export is gathered and written once. Every process keeps the same
phase state in memory (each decision is a function of the workdir), and all read state.json
when they start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from dagger_jax.data.shard_sync import pulled
from dagger_jax.data.shards import EpisodeSource, labelled_turns
from dagger_jax.data.trajectory_pipeline import TrajectoryPipeline
from dagger_jax.recipes.loop_settings import LoopSettings
from dagger_jax.recipes.state import LoopState
from dagger_jax.rollout.actor_specs import ActorSource, close_actor
from dagger_jax.rollout.collector import CollectionJob, collect
from dagger_jax.rollout.evaluation import episode_metrics, export_covariate_shift
from dagger_jax.rollout.fleet import load_export, sync_student_fleet
from dagger_jax.rollout.mixing import RolloutRule
from dagger_jax.rollout.service import ServiceJob
from dagger_jax.rollout.service_client import RolloutServiceClient
from dagger_jax.storage import layout
from dagger_jax.storage.store import (StorePath, is_published, is_remote, local_dir,
                                      store_path)
from dagger_jax.train.metrics import MetricWriter
from dagger_jax.train.optimizer import round_learning_rate
from dagger_jax.train.processes import barrier
from dagger_jax.train.trainer import Trainer

log = logging.getLogger(__name__)
# (params, out_dir) -> the Hugging Face export of those params (main binds model and tokenizer).
Exporter = Callable[[Any, StorePath], Any]


@dataclasses.dataclass(frozen=True)
class LoopParts:
    """What the loop works with, built by the entry point."""

    trainer: Trainer
    export: Exporter
    tasks: Any                 # envs.tasks.sets.TaskSets
    actors: ActorSource
    chat: Any                  # agent.ChatTokenizer: the student's tokenizer and chat template
    backend: Any               # envs.sandbox backend
    train_tasks_file: Callable[[], StorePath] | None = None  # for the rollout service


def absolute(path: Any) -> str:
    """A run path as another machine can name it: gs://... as it is, a local path absolute."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


class Loop:
    def __init__(self, settings: LoopSettings, workdir: Path, parts: LoopParts):
        self.settings, self.workdir, self.parts = settings, store_path(workdir), parts
        self.trainer = parts.trainer
        self.recipe = settings.run.recipe
        self.state = LoopState.load(self.workdir)
        self.writer = MetricWriter(layout.tensorboard_dir(self.workdir))
        self.leader = jax.process_index() == 0

    def run(self) -> list[dict[str, Any]]:
        self._ensure_initial_export()
        while self.state.iteration <= self.settings.iterations:
            i = self.state.iteration
            if self.state.phase == "collect":
                if self.leader:
                    self._collect(i)
                self._wait_for_leader(f"iteration {i} collected")
                self._advance("train")
            if self.state.phase == "train":
                self._train(i)
                self._advance("export")
            if self.state.phase == "export":
                self._export(i)
                self._advance("evaluate")
            if self.state.phase == "evaluate":
                if self.leader:
                    self._evaluate(i)
                self._wait_for_leader(f"iteration {i} evaluated")
                self.state.iteration, self.state.phase = i + 1, "collect"
                self.state.train_start = self.state.train_end = None
                self._save_state()
        self.writer.close()
        return self.state.history

    def _advance(self, phase: str) -> None:
        self.state.phase = phase
        self._save_state()

    def _save_state(self) -> None:
        if self.leader:
            self.state.save(self.workdir)

    def _wait_for_leader(self, name: str) -> None:
        """Every process here before any goes on: what the leader wrote is there to read."""
        barrier(name, self.settings.barrier_timeout_s)

    # --- export --------------------------------------------------------------------------

    def _ensure_initial_export(self) -> None:
        """The student before any training (iteration 0), so it can be served from the start."""
        path = layout.iteration_export_dir(self.workdir, 0)
        if is_published(path):
            return
        state = self.trainer.initial_state()
        if self.trainer.checkpointer.latest_step() is None:
            # Fresh random params: keep them, so the export and a resumed run agree. (Params
            # imported with tools/import_hf.py are already checkpoint 0.)
            self.trainer.save(state)
        self.parts.export(state.params, path)

    def _latest_export(self) -> StorePath:
        """The newest student export (in the workdir: for a workdir in a bucket, a gs:// path,
        which the fleet's sidecars fetch and local_dir copies for this process)."""
        for i in range(self.state.iteration, -1, -1):
            if is_published(path := layout.iteration_export_dir(self.workdir, i)):
                return path
        raise FileNotFoundError(f"{self.workdir} holds no student export (exports/iter_000 missing)")

    def _export(self, i: int) -> None:
        state = self.trainer.initial_state()
        path = layout.iteration_export_dir(self.workdir, i)
        self.parts.export(state.params, path)
        self.state.weight_version = f"iter{i:03d}-step{int(state.step)}"
        urls = self.parts.actors.weight_loaders
        if urls and self.leader:  # the fleet loads the new student; a refusal stops the run
            asyncio.run(load_export(urls, path, self.state.weight_version))

    # --- collect -------------------------------------------------------------------------

    def _collect(self, i: int) -> None:
        s = self.settings
        rule = s.run.rollout_rule(i)
        tasks = self.parts.tasks.window(i, s.tasks_per_iteration)
        job = CollectionJob(
            job_id=f"iter{i:03d}", iteration=i, rule=rule,
            task_ids=tuple(t.instance_id for t in tasks),
            out_dir=str(layout.iteration_dir(self.workdir, i)),
            episodes_per_task=self.recipe.group_size, seed=s.seed + i,
            student_version=self.state.weight_version, teacher_id=s.teacher_id,
            settings=s.episode, metadata={"recipe": self.recipe.name},
            label_budget=s.label_budgets[i - 1])
        if s.rollout_service:  # training collection only: evaluation stays in-process
            report = self._service_collection(job, s.run.student_acts(i))
        else:
            report = self._collection(job, {t.instance_id: t for t in tasks}, greedy=False,
                                      student_acts=s.run.student_acts(i)).to_json()
        log.info("iteration %d: collected %s", i, json.dumps(report["stats"]))

    def _collection(self, job: CollectionJob, tasks: dict, greedy: bool, student_acts: bool,
                    teacher: bool = True):
        """Collects the job in this process."""
        actors, chat = self.parts.actors, self.parts.chat

        async def go():
            student = teacher_actor = None
            try:
                if student_acts:
                    await sync_student_fleet(actors.weight_loaders, self._latest_export(),
                                             self.state.weight_version)
                    student = actors.student(chat, greedy, self._latest_export(),
                                             self.state.weight_version)
                teacher_actor = actors.teacher(chat) if teacher else None
                return await collect(job, tasks, student=student, teacher=teacher_actor,
                                     chat=chat, backend=self.parts.backend,
                                     concurrency=self.settings.concurrency,
                                     progress=self.settings.progress and jax.process_index() == 0)
            finally:
                await close_actor(student)
                await close_actor(teacher_actor)
        return asyncio.run(go())

    def _service_collection(self, job: CollectionJob, student_acts: bool) -> dict[str, Any]:
        """Collects the job as a rollout-service job; returns its report (JSON).

        The service reads the task file and the tokenizer and writes the shards to job.out_dir:
        in the run's bucket for a gs:// workdir (the service shares no filesystem with this
        process), else at the same paths on its machine (shared storage), hence absolute.
        The job is a function of the iteration and state.json, so a restarted loop submits an
        equal job, which the service answers with its status (same id) or resumes from the
        shards already listed (a restarted service).
        """
        s, actors = self.settings, self.parts.actors
        spec = ServiceJob(job=dataclasses.replace(job, out_dir=absolute(job.out_dir)),
                          tasks_path=absolute(self.parts.train_tasks_file()),
                          tokenizer_path=absolute(layout.tokenizer_dir(self.workdir)),
                          sandbox=s.sandbox,
                          student=actors.student_spec(greedy=False) if student_acts else None,
                          teacher=dict(actors.teacher_spec), concurrency=s.concurrency)
        client = RolloutServiceClient(s.rollout_service)
        last_log = [0.0]

        def on_status(status: dict[str, Any]) -> None:
            now = time.monotonic()
            if now - last_log[0] >= 30.0:
                last_log[0] = now
                log.info("rollout job %s: %s %s", job.job_id, status["state"],
                         json.dumps(status.get("stats", {})))

        async def go():
            if student_acts:
                await sync_student_fleet(actors.weight_loaders, self._latest_export(),
                                         self.state.weight_version)
            log.info("submitting rollout job %s to the rollout service %s", job.job_id,
                     s.rollout_service)
            return await client.run(spec, on_status=on_status)
        report = asyncio.run(go())
        log.info("rollout job %s done at %s: %d episodes written, %d already stored",
                 job.job_id, s.rollout_service, report["episodes_written"],
                 report["episodes_skipped"])
        return report

    # --- train ---------------------------------------------------------------------------

    def _pipeline(self, i: int, new_only: bool = False) -> TrajectoryPipeline:
        first = 1 if self.recipe.aggregate and not new_only else i
        dirs = pulled([layout.iteration_dir(self.workdir, k) for k in range(first, i + 1)])
        t = self.trainer.settings
        caps = list(self.settings.label_budgets[first - 1:i]) if self.settings.cap_trained_labels \
            else None
        return TrajectoryPipeline(dirs, seq_len=t.seq_len, batch_size=t.batch_size,
                                  seed=self.settings.seed + 1000 * i, weighting=self.recipe.weight,
                                  success_filter=self.recipe.success_filter, label_caps=caps,
                                  process_index=self.trainer.row_block.index,
                                  process_count=self.trainer.row_block.count)

    def _train(self, i: int) -> None:
        passes = [(self._pipeline(i, new_only=new_only), epochs)
                  for new_only, epochs in self.settings.plan.passes(i)]
        if self.state.train_start is None:
            start = self.trainer.checkpointer.latest_step() or 0  # no need to restore the weights
            self.state.train_start = start
            self.state.train_end = start + sum(p.num_steps(e) for p, e in passes)
            self._save_state()
        start, end = self.state.train_start, self.state.train_end
        # Step -> (pass, its step): a pure function of the step, so a resumed run's batches are
        # the ones it would have had. Each pass reads through its grain iterator, which loads
        # the next batches while a step trains.
        bounds = np.cumsum([start] + [p.num_steps(e) for p, e in passes])
        reads = [p.batch_fn(first_step=int(first)) for (p, _), first in zip(passes, bounds)]

        def batch(step: int) -> dict[str, np.ndarray]:
            k = int(np.searchsorted(bounds, step, side="right")) - 1
            return reads[min(k, len(reads) - 1)](step)

        log.info("iteration %d: training steps %d..%d on %s", i, start, end, " then ".join(
            f"{p.num_examples} examples x {e} epochs" for p, e in passes))
        t = self.trainer.settings
        rate = round_learning_rate(t, start, end) if t.round_schedule else None
        self.trainer.fit(batch, total_steps=end, local_batches=True, rate_fn=rate)
        log.info("iteration %d: trained with objective %s: %s", i, self.trainer.objective,
                 json.dumps(self.trainer.last_metrics))

    # --- evaluate ------------------------------------------------------------------------

    def _evaluate(self, i: int) -> None:
        e = self.settings.eval
        if not e.evaluates(i, self.settings.iterations):
            self.state.history.append(self._training_row(i))
            return
        tasks = {t.instance_id: t for t in self.parts.tasks.heldout[:e.num_tasks]}
        common = dict(task_ids=tuple(tasks), seed=self.settings.seed,
                      teacher_id=self.settings.teacher_id, settings=e.episode)
        student_job = CollectionJob(job_id=f"eval{i:03d}", iteration=i,
                                    rule=RolloutRule(beta=0.0, label="action"),
                                    out_dir=str(layout.eval_dir(self.workdir, i)),
                                    student_version=self.state.weight_version, **common)
        self._collection(student_job, tasks, greedy=True, student_acts=True)
        teacher_job = CollectionJob(job_id="evalteacher", iteration=0,
                                    rule=RolloutRule(beta=1.0, label="action"),
                                    out_dir=str(layout.teacher_eval_dir(self.workdir)), **common)
        self._collection(teacher_job, tasks, greedy=True, student_acts=False)
        student_records = list(EpisodeSource(pulled(student_job.out_dir)))
        teacher_records = list(EpisodeSource(pulled(teacher_job.out_dir)))
        metrics: dict[str, Any] = episode_metrics(student_records)
        metrics.update(asyncio.run(export_covariate_shift(
            local_dir(layout.iteration_export_dir(self.workdir, i)), student_records, teacher_records,
            e.shift_states, seed=i)))
        metrics.update(self._training_row(i))
        self.writer.write(i, {f"loop/{k}": float(v) for k, v in metrics.items()
                              if isinstance(v, (int, float))})
        self.state.history.append(metrics)
        log.info("iteration %d: %s", i, json.dumps(metrics))

    def _training_row(self, i: int) -> dict[str, Any]:
        """What iteration i collected and trained on: every history row has it."""
        labelled = labelled_turns(pulled([layout.iteration_dir(self.workdir, k)
                                          for k in range(1, i + 1)]))
        return {"iteration": i, "beta": self.settings.run.beta(i),
                "train_steps": self.state.train_end, "labelled_turns": labelled,
                "trained_labels": self._pipeline(i).stats.trained_turns}

