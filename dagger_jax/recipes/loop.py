"""The outer loop: per iteration collect -> aggregate -> train -> checkpoint -> export -> reload the
student -> evaluate, for any recipe of recipes.py.

Everything the loop decides is written to `<workdir>/state.json` before it acts on it, and every
phase is idempotent, so a killed run resumes with the same command:
- collect: episodes are named `iterNNN/<task>/<k>` and a rerun skips those already in the
  iteration's manifest (none collected twice, none lost);
- train: the iteration's first and last global steps are recorded before training starts and
  the batch of step s is a pure function of s, so training resumes from the last checkpoint on
  exactly the batches it would have seen;
- export: written to a temp dir and renamed; redone if missing;
- evaluate: its episodes are collected the same resumable way.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax

from dagger_jax import workdir as layout
from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.shards import EpisodeSource, iteration_dir, labelled_turns
from dagger_jax.data.trajectory_pipeline import TrajectoryPipeline
from dagger_jax.envs.sandbox import make_backend
from dagger_jax.envs.tasks.synthetic import Difficulty, generate_tasks
from dagger_jax.envs.tasks.task import BadTaskLine, Task, read_tasks
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.policies.actors import ExpertActor, TokenActor
from dagger_jax.policies.endpoint_pool import EndpointPool
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.local_sampler import LocalSampler
from dagger_jax.policies.scripted_expert import ScriptedExpert
from dagger_jax.recipes.recipes import Recipe, get_recipe
from dagger_jax.recipes.schedules import make_schedule
from dagger_jax.rollout.actor_specs import build_actor
from dagger_jax.rollout.collector import CollectionJob, collect
from dagger_jax.rollout.evaluation import covariate_shift, episode_metrics
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.rollout.mixing import RolloutRule
from dagger_jax.train.metrics import MetricWriter
from dagger_jax.train.trainer import Trainer

log = logging.getLogger(__name__)
PHASES = ("collect", "train", "export", "evaluate")


@dataclasses.dataclass
class LoopState:
    """What the loop has decided so far; rewritten atomically after every decision."""

    iteration: int = 1
    phase: str = "collect"
    train_start: int | None = None
    train_end: int | None = None
    weight_version: str = "iter000"
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, workdir: Path) -> "LoopState":
        path = workdir / "state.json"
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path} is not a loop state this code can read: {e}") from None

    def save(self, workdir: Path) -> None:
        path = workdir / "state.json"
        tmp = path.with_name("state.json.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        os.replace(tmp, path)


def load_tasks(config: Any) -> tuple[list[Task], list[Task]]:
    """(train, held-out) tasks; an overlap between them is an error, not a silent leak."""
    t = config.tasks
    if t.source == "synthetic":
        difficulty = Difficulty(files=t.files, functions_per_file=t.functions_per_file,
                                distractors=t.distractors, name_location=not t.hide_location,
                                templates=t.templates,
                                bug_kinds=tuple(k for k in t.bug_kinds.split(",") if k))
        train = list(generate_tasks(t.num_train, t.train_seed, "train", difficulty))
        heldout = list(generate_tasks(t.num_heldout, t.heldout_seed, "heldout", difficulty))
    elif t.source == "file":
        train, heldout = _read(t.train_path, "tasks.train_path"), _read(t.heldout_path, "tasks.heldout_path")
    else:
        raise ValueError(f"config.tasks.source={t.source!r}: choose synthetic or file")
    overlap = {x.instance_id for x in train} & {x.instance_id for x in heldout}
    bases = {x.gold_patch for x in train if x.gold_patch} & {x.gold_patch for x in heldout if x.gold_patch}
    if overlap or bases:
        raise ValueError(f"the evaluation tasks overlap the training tasks ({len(overlap)} shared ids, "
                         f"{len(bases)} shared gold patches; e.g. {sorted(overlap)[:3]}): use "
                         "different seeds or files")
    return train, heldout


def _read(path: str, key: str) -> list[Task]:
    if not path:
        raise ValueError(f"config.{key} is empty but config.tasks.source is 'file'")
    items = list(read_tasks(path))
    bad = [i.reason for i in items if isinstance(i, BadTaskLine)]
    if bad:
        log.warning("%d bad task lines in %s skipped, e.g. %s", len(bad), path, bad[0])
    return [i for i in items if isinstance(i, Task)]


class Loop:
    def __init__(self, config: Any, workdir: Path, model_config: Qwen3Config, tokenizer_dir: Path):
        # A copy: what the loop fills in below (the recipe's objective) is not the caller's.
        config = copy.deepcopy(config)
        self.config, self.workdir, self.model_config = config, workdir, model_config
        self.tokenizer_dir = tokenizer_dir
        loop = config.loop
        self.recipe: Recipe = get_recipe(loop.recipe)
        self.recipe.check_teacher(loop.teacher, loop.teacher_endpoints)
        # The trainer's objective is the recipe's weight (train/loss.py); set here so the
        # Trainer below builds its step for it.
        if config.train.objective not in ("", self.recipe.weight):
            raise ValueError(f"config.train.objective={config.train.objective!r} contradicts "
                             f"recipe {self.recipe.name!r}, which trains with weight "
                             f"{self.recipe.weight!r}: leave it empty")
        config.train.objective = self.recipe.weight
        if not loop.student_endpoints and not config.train.vocab_limit:
            # The in-process sampler samples (and scores) ids below the tokenizer's size only.
            config.train.vocab_limit = len(ChatTokenizer.from_path(tokenizer_dir).tokenizer)
        self.schedule = make_schedule(loop.schedule, json.loads(loop.schedule_params or "{}"))
        for i in range(1, loop.iterations + 1):  # every beta is checked before anything runs
            self.schedule(i)
        if loop.rollout_service:
            raise NotImplementedError("config.loop.rollout_service: the loop collects in-process "
                                      "only so far (the service runs standalone: "
                                      "python -m dagger_jax.rollout.service)")
        self.train_tasks, self.heldout_tasks = load_tasks(config)
        self.chat = ChatTokenizer.from_path(tokenizer_dir)
        self.backend = make_backend(loop.sandbox)
        self.trainer = Trainer(config, workdir, model_config)
        self.writer = MetricWriter(layout.tensorboard_dir(workdir))
        self.state = LoopState.load(workdir)

    # --- pieces ----------------------------------------------------------------------------

    def _export_path(self, iteration: int) -> Path:
        return self.workdir / "exports" / f"iter_{iteration:03d}"

    def _teacher(self):
        loop = self.config.loop
        if loop.teacher == "expert":
            return ExpertActor(ScriptedExpert())
        spec = {"kind": loop.teacher, "sampling": {"temperature": loop.temperature,
                                                    "top_p": loop.top_p,
                                                    "max_new_tokens": loop.max_new_tokens}}
        if loop.teacher == "sglang":
            spec["endpoints"] = [u for u in loop.teacher_endpoints.split(",") if u]
        else:
            spec.update(base_url=loop.teacher_endpoints, model=loop.teacher_model)
        return build_actor(spec, self.chat, "teacher")

    def _student_generator(self, export: Path):
        urls = [u for u in self.config.loop.student_endpoints.split(",") if u]
        if urls:
            return EndpointPool.from_urls(urls, vocab_size=len(self.chat.tokenizer))
        return LocalSampler.from_hf_dir(export, tokenizer=None, max_batch=self.config.loop.concurrency,
                                        weight_version=self.state.weight_version,
                                        vocab_limit=len(self.chat.tokenizer))

    def _settings(self, max_turns: int) -> EpisodeSettings:
        loop = self.config.loop
        return EpisodeSettings(max_turns=max_turns, max_new_tokens=loop.max_new_tokens,
                               context_budget=loop.context_budget, prompt_style=loop.prompt_style)

    def _sampling(self, greedy: bool) -> SamplingParams:
        loop = self.config.loop
        if greedy:
            return SamplingParams(temperature=0.0, max_new_tokens=loop.max_new_tokens)
        return SamplingParams(temperature=loop.temperature, top_p=loop.top_p,
                              max_new_tokens=loop.max_new_tokens)

    def _tasks_of(self, iteration: int) -> list[Task]:
        """This iteration's training tasks: a window that walks through the task set."""
        n, pool = self.config.loop.tasks_per_iteration, self.train_tasks
        start = ((iteration - 1) * n) % len(pool)
        return [pool[(start + k) % len(pool)] for k in range(min(n, len(pool)))]

    def beta(self, iteration: int) -> float:
        return self.schedule(iteration) if self.recipe.uses_beta else (
            1.0 if self.recipe.executor == "teacher" else 0.0)

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        self._ensure_initial_export()
        while self.state.iteration <= self.config.loop.iterations:
            i = self.state.iteration
            if self.state.phase == "collect":
                self._collect(i)
                self._advance("train")
            if self.state.phase == "train":
                self._train(i)
                self._advance("export")
            if self.state.phase == "export":
                self._export(i)
                self._advance("evaluate")
            if self.state.phase == "evaluate":
                self._evaluate(i)
                self.state.iteration, self.state.phase = i + 1, "collect"
                self.state.train_start = self.state.train_end = None
                self.state.save(self.workdir)
        self.writer.close()
        return self.state.history

    def _advance(self, phase: str) -> None:
        self.state.phase = phase
        self.state.save(self.workdir)

    def _ensure_initial_export(self) -> None:
        """The student before any training (iteration 0), so it can be served from the start."""
        path = self._export_path(0)
        if path.exists():
            return
        state = self.trainer.initial_state()
        if int(state.step) == 0:
            self.trainer.save(state)
        export_hf(state.params, self.model_config, path, tokenizer_dir=self.tokenizer_dir)

    def _collect(self, i: int) -> None:
        loop = self.config.loop
        beta = self.beta(i)
        rule = self.recipe.rollout_rule(beta, loop.prefix_start + loop.prefix_step * (i - 1))
        tasks = self._tasks_of(i)
        job = CollectionJob(
            job_id=f"iter{i:03d}", iteration=i, rule=rule,
            task_ids=tuple(t.instance_id for t in tasks), out_dir=str(iteration_dir(self.workdir, i)),
            episodes_per_task=self.recipe.group_size, seed=self.config.seed + i,
            student_version=self.state.weight_version, teacher_id=loop.teacher,
            settings=self._settings(loop.max_turns), metadata={"recipe": self.recipe.name},
            label_budget=loop.label_budget)
        report = self._run_collection(job, {t.instance_id: t for t in tasks}, greedy=False,
                                      needs_student=rule.beta < 1.0 or rule.student_prefix is not None)
        log.info("iteration %d: collected %s", i, json.dumps(report.to_json()["stats"]))

    def _run_collection(self, job: CollectionJob, tasks: dict[str, Task], greedy: bool,
                        needs_student: bool, teacher: bool = True):
        async def go():
            generator = self._student_generator(self._export_path(self._latest_export())) \
                if needs_student else None
            student = TokenActor("student", generator, self.chat, self._sampling(greedy)) \
                if generator is not None else None
            try:
                return await collect(job, tasks, student=student, teacher=self._teacher() if teacher else None,
                                     chat=self.chat, backend=self.backend,
                                     concurrency=self.config.loop.concurrency,
                                     progress=self.config.progress and jax.process_index() == 0)
            finally:
                if generator is not None:
                    await generator.aclose()
        return asyncio.run(go())

    def _latest_export(self) -> int:
        done = [i for i in range(self.state.iteration, -1, -1) if self._export_path(i).exists()]
        return done[0]

    def _pipeline(self, i: int) -> TrajectoryPipeline:
        first = 1 if self.recipe.aggregate else i
        dirs = [iteration_dir(self.workdir, k) for k in range(first, i + 1)]
        c = self.config.train
        return TrajectoryPipeline(dirs, seq_len=c.seq_len, batch_size=c.batch_size,
                                  seed=self.config.seed + 1000 * i, weighting=self.recipe.weight,
                                  success_filter=self.recipe.success_filter)

    def _train(self, i: int) -> None:
        pipeline = self._pipeline(i)
        if self.state.train_start is None:
            start = self.trainer.checkpointer.latest_step() or 0  # no need to restore the weights
            self.state.train_start = start
            self.state.train_end = start + pipeline.num_steps(self.config.loop.epochs)
            self.state.save(self.workdir)
        start, end = self.state.train_start, self.state.train_end
        log.info("iteration %d: training steps %d..%d on %d examples", i, start, end,
                 pipeline.num_examples)
        self.trainer.fit(lambda step: pipeline.batch(step - start), total_steps=end,
                         local_batches=True)
        log.info("iteration %d: trained with objective %s: %s", i, self.trainer.objective,
                 json.dumps(self.trainer.last_metrics))

    def _export(self, i: int) -> None:
        state = self.trainer.initial_state()
        export_hf(state.params, self.model_config, self._export_path(i), tokenizer_dir=self.tokenizer_dir)
        self.state.weight_version = f"iter{i:03d}-step{int(state.step)}"
        urls = [u for u in self.config.loop.student_endpoints.split(",") if u]
        if urls:  # the fleet loads the new student; a refusal stops the run (resumable here)
            async def reload():
                pool = EndpointPool.from_urls(urls)
                try:
                    await pool.update_weights_from_disk(str(self._export_path(i)), self.state.weight_version)
                finally:
                    await pool.aclose()
            asyncio.run(reload())

    def _evaluate(self, i: int) -> None:
        e = self.config.eval
        if not e.enabled:
            self.state.history.append({"iteration": i, "beta": self.beta(i)})
            return
        tasks = {t.instance_id: t for t in self.heldout_tasks[:e.num_tasks]}
        settings = self._settings(e.max_turns)
        student_job = CollectionJob(
            job_id=f"eval{i:03d}", iteration=i, rule=RolloutRule(beta=0.0, label="action"),
            task_ids=tuple(tasks), out_dir=str(self.workdir / "eval" / f"iter_{i:03d}"),
            seed=self.config.seed, student_version=self.state.weight_version,
            teacher_id=self.config.loop.teacher, settings=settings)
        self._run_collection(student_job, tasks, greedy=True, needs_student=True)
        teacher_job = CollectionJob(
            job_id="evalteacher", iteration=0, rule=RolloutRule(beta=1.0, label="action"),
            task_ids=tuple(tasks), out_dir=str(self.workdir / "eval" / "teacher"),
            seed=self.config.seed, teacher_id=self.config.loop.teacher, settings=settings)
        self._run_collection(teacher_job, tasks, greedy=True, needs_student=False)
        student_records = list(EpisodeSource(student_job.out_dir))
        teacher_records = list(EpisodeSource(teacher_job.out_dir))
        metrics = episode_metrics(student_records)

        async def shift():
            sampler = LocalSampler.from_hf_dir(self._export_path(i), tokenizer=None)
            try:
                return await covariate_shift(sampler.score, student_records, teacher_records,
                                             e.shift_states, seed=i)
            finally:
                await sampler.aclose()
        metrics.update({k: v for k, v in asyncio.run(shift()).items() if v is not None})
        metrics.update(iteration=i, beta=self.beta(i), train_steps=self.state.train_end,
                       labelled_turns=self._labelled_turns(i))
        self.writer.write(i, {f"loop/{k}": float(v) for k, v in metrics.items()
                              if isinstance(v, (int, float))})
        self.state.history.append(metrics)
        log.info("iteration %d: %s", i, json.dumps(metrics))

    def _labelled_turns(self, i: int) -> int:
        """Teacher-labelled turns collected so far (the budget recipes are compared at)."""
        return labelled_turns([iteration_dir(self.workdir, k) for k in range(1, i + 1)])
