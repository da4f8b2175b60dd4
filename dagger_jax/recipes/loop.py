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

Training collection runs in this process, or, with `config.loop.rollout_service` set, as a job
of the rollout service (rollout/service.py; same job id, episodes and out_dir, so resuming works
the same). Evaluation always runs in this process.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dagger_jax import workdir as layout
from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.shards import EpisodeSource, iteration_dir, labelled_turns
from dagger_jax.data.trajectory_pipeline import TrajectoryPipeline
from dagger_jax.envs.sandbox import make_backend
from dagger_jax.envs.tasks.synthetic import Difficulty, generate_task, generate_tasks
from dagger_jax.envs.tasks.task import BadTaskLine, Task, read_tasks, write_tasks
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.policies.actors import TokenActor
from dagger_jax.policies.endpoint_pool import EndpointPool
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.local_sampler import LocalSampler
from dagger_jax.policies.scripted_expert import SEARCHES
from dagger_jax.policies.sglang_client import SGLangClient
from dagger_jax.recipes.recipes import Recipe, get_recipe
from dagger_jax.recipes.schedules import make_schedule
from dagger_jax.rollout.actor_specs import build_actor
from dagger_jax.rollout.collector import CollectionJob, collect
from dagger_jax.rollout.evaluation import covariate_shift, episode_metrics
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.rollout.mixing import RolloutRule
from dagger_jax.rollout.service import ServiceJob
from dagger_jax.rollout.service_client import RolloutServiceClient
from dagger_jax.train.metrics import MetricWriter
from dagger_jax.train.optimizer import round_learning_rate
from dagger_jax.train.trainer import Trainer

log = logging.getLogger(__name__)
PHASES = ("collect", "train", "export", "evaluate")
# How opd/grpo sample the acting student (config.loop.on_policy_sampling; config_base.py).
ON_POLICY_SAMPLING = ("policy", "rollout")


def training_plan(loop: Any, aggregate: bool, i: int) -> list[tuple[bool, int]]:
    """Round i's passes as (new iteration's data only, epochs), in the order they are trained:
    round 1 trains loop.first_round_epochs (if set); later rounds the aggregate, then with
    loop.earlier_epochs the new iteration's data alone for the remaining epochs."""
    if i == 1:
        epochs = loop.epochs if loop.first_round_epochs == -1 else loop.first_round_epochs
        return [(False, epochs)]
    earlier = loop.epochs if loop.earlier_epochs == -1 else loop.earlier_epochs
    if not aggregate or earlier == loop.epochs:
        return [(False, loop.epochs)]
    passes = [(False, earlier)] if earlier else []
    return passes + [(True, loop.epochs - earlier)]


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
        difficulty = Difficulty.from_settings(
            files=t.files, functions_per_file=t.functions_per_file, distractors=t.distractors,
            hide_location=t.hide_location, templates=t.templates, bug_kinds=t.bug_kinds,
            packages=t.packages, numbered_packages=t.numbered_packages, modules=t.modules,
            decoys=t.decoys)
        train = list(generate_tasks(t.num_train, t.train_seed, "train", difficulty))
        heldout = _unseen_heldout(train, t.num_heldout, t.heldout_seed, difficulty)
    elif t.source == "file":
        train, heldout = _read(t.train_path, "tasks.train_path"), _read(t.heldout_path, "tasks.heldout_path")
    else:
        raise ValueError(f"config.tasks.source={t.source!r}: choose synthetic or file")
    overlap = {x.instance_id for x in train} & {x.instance_id for x in heldout}
    shared = {same_task_key(x) for x in train} & {same_task_key(x) for x in heldout} - {""}
    if overlap or shared:
        raise ValueError(f"the evaluation tasks overlap the training tasks ({len(overlap)} shared ids, "
                         f"{len(shared)} shared repos or gold patches; e.g. {sorted(overlap)[:3]}): "
                         "use different seeds or files")
    if config.eval.enabled and config.eval.num_tasks > len(heldout):
        raise ValueError(f"config.eval.num_tasks={config.eval.num_tasks} but there are only "
                         f"{len(heldout)} held-out tasks (config.tasks.num_heldout / "
                         "tasks.heldout_path): evaluate on fewer or make more")
    return train, heldout


def parse_label_budgets(spec: str, default: int, iterations: int) -> list[int]:
    """Each iteration's label budget: config.loop.label_budgets ("240,60,60": one per iteration,
    e.g. a large warm-start first iteration) or else config.loop.label_budget for all."""
    if not spec.strip():
        if default < 0:
            raise ValueError(f"config.loop.label_budget must be >= 0, got {default}")
        return [default] * iterations
    try:
        budgets = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"config.loop.label_budgets={spec!r}: expected comma-separated "
                         "integers, one per iteration") from None
    if len(budgets) != iterations or any(b < 0 for b in budgets):
        raise ValueError(f"config.loop.label_budgets={spec!r}: need {iterations} budgets >= 0 "
                         f"(config.loop.iterations={iterations}), got {budgets}")
    return budgets


def same_task_key(task: Task) -> str:
    """What two tasks must not share across train and held-out: the repo's contents where the
    task carries them (generated tasks; a narrow family repeats a fix in a different repo, which
    is a new instance), else the fix itself (image tasks: one fix, one instance)."""
    if task.repo_files is not None:
        return json.dumps(task.repo_files, sort_keys=True)
    return task.gold_patch or ""


def _unseen_heldout(train: list[Task], count: int, seed: int, difficulty: Difficulty) -> list[Task]:
    """The first `count` held-out tasks whose repo no training task has (skipped by index, so
    the held-out set stays the same for a given config)."""
    seen = {same_task_key(task) for task in train}
    out: list[Task] = []
    for index in range(count * 50):
        task = generate_task(seed, index, "heldout", difficulty)
        if same_task_key(task) not in seen:
            out.append(task)
            if len(out) == count:
                return out
    raise ValueError(f"only {len(out)} of {count * 50} held-out synthetic tasks differ from every "
                     f"training task ({difficulty}): widen config.tasks or lower num_train")


def _read(path: str, key: str) -> list[Task]:
    if not path:
        raise ValueError(f"config.{key} is empty but config.tasks.source is 'file'")
    items = list(read_tasks(path))
    bad = [i.reason for i in items if isinstance(i, BadTaskLine)]
    if bad:
        log.warning("%d bad task lines in %s skipped, e.g. %s", len(bad), path, bad[0])
    return [i for i in items if isinstance(i, Task)]


def endpoint_urls(value: str) -> list[str]:
    """A comma-separated URL list of the config (empty items dropped)."""
    return [u.strip() for u in value.split(",") if u.strip()]


def needs_student(rule: RolloutRule) -> bool:
    """Whether the student acts in episodes collected under `rule`."""
    return rule.beta < 1.0 or rule.student_prefix is not None


def student_sampling(loop: Any, recipe: Recipe, greedy: bool) -> SamplingParams:
    """How the acting student samples: greedy (evaluation), or the rollout temperature/top-p,
    except that on-policy gradient recipes sample the policy itself by default."""
    if greedy:
        return SamplingParams(temperature=0.0, max_new_tokens=loop.max_new_tokens)
    if recipe.weight != "one" and loop.on_policy_sampling == "policy":
        # The reverse-KL and clipped-ratio estimators take the sampled tokens as draws from the
        # policy whose (untempered) log-probs they use; at 0.7 / 0.9 they are not.
        return SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=loop.max_new_tokens)
    return SamplingParams(temperature=loop.temperature, top_p=loop.top_p,
                          max_new_tokens=loop.max_new_tokens)


def teacher_spec(loop: Any) -> dict[str, Any]:
    """The teacher as an actor spec (rollout/actor_specs.py), for in-process and service
    collection alike."""
    if loop.teacher == "expert":
        return {"kind": "expert", "search": loop.expert_search}
    spec: dict[str, Any] = {"kind": loop.teacher,
                            "sampling": {"temperature": loop.temperature, "top_p": loop.top_p,
                                         "max_new_tokens": loop.max_new_tokens}}
    if loop.teacher == "sglang":
        spec["endpoints"] = endpoint_urls(loop.teacher_endpoints)
    else:
        spec.update(base_url=loop.teacher_endpoints, model=loop.teacher_model)
    return spec


def student_spec(loop: Any, sampling: SamplingParams) -> dict[str, Any] | None:
    """The served student (config.loop.student_endpoints) as an actor spec; None when the
    student is the in-process JAX sampler, which has no spec (it lives in this process)."""
    urls = endpoint_urls(loop.student_endpoints)
    if not urls:
        return None
    return {"kind": "sglang", "endpoints": urls, "sampling": sampling.to_sglang()}


async def _close_actor(actor: Any) -> None:
    if actor is None:
        return
    close = getattr(actor, "aclose", None) or \
        getattr(getattr(actor, "generator", None), "aclose", None)
    if close is not None:
        await close()


class Loop:
    def __init__(self, config: Any, workdir: Path, model_config: Qwen3Config, tokenizer_dir: Path):
        # A copy: what the loop fills in below (the recipe's objective) is not the caller's.
        config = copy.deepcopy(config)
        self.config, self.workdir, self.model_config = config, workdir, model_config
        self.tokenizer_dir = tokenizer_dir
        loop = config.loop
        self.recipe: Recipe = get_recipe(loop.recipe)
        self.recipe.check_teacher(loop.teacher, loop.teacher_endpoints)
        if loop.on_policy_sampling not in ON_POLICY_SAMPLING:
            raise ValueError(f"config.loop.on_policy_sampling={loop.on_policy_sampling!r}: "
                             f"choose from {ON_POLICY_SAMPLING}")
        self._label_budgets = parse_label_budgets(loop.label_budgets, loop.label_budget,
                                                  loop.iterations)
        if any(self._label_budgets) and self.recipe.label != "action":
            # The budget counts turns with a teacher *action* label (the shard manifests' turn
            # summaries); OPD's scored turns and GRPO's unlabelled ones never reach it.
            raise ValueError(
                f"config.loop.label_budget(s) > 0 but recipe {self.recipe.name!r} gets "
                f"{'log-probs' if self.recipe.label == 'logprobs' else 'no labels'} from the "
                "teacher, not action labels, and the budget counts action labels only: set "
                "config.loop.label_budget=0 (and label_budgets='') and bound collection with "
                "config.loop.tasks_per_iteration")
        self._settings(loop.max_turns)  # the episode settings are checked before anything runs
        if loop.takeover_unparseable and self.recipe.label != "action":
            raise ValueError(
                f"config.loop.takeover_unparseable=True but recipe {self.recipe.name!r} gets "
                f"{'log-probs' if self.recipe.label == 'logprobs' else 'no labels'} from the "
                "teacher: a takeover executes the teacher's action label, which only the "
                "action-label recipes (sft, rs_sft, dagger, aggrevate) ask for")
        if not (loop.earlier_epochs == -1 or 0 <= loop.earlier_epochs <= loop.epochs):
            raise ValueError(f"config.loop.earlier_epochs={loop.earlier_epochs} must be -1 (all "
                             f"epochs) or between 0 and config.loop.epochs={loop.epochs}")
        if not (loop.first_round_epochs == -1 or loop.first_round_epochs >= 1):
            raise ValueError(f"config.loop.first_round_epochs={loop.first_round_epochs} must be "
                             "-1 (config.loop.epochs) or >= 1")
        if loop.expert_search not in SEARCHES:
            raise ValueError(f"config.loop.expert_search={loop.expert_search!r}: choose from {SEARCHES}")
        if config.eval.from_iteration < 1:
            raise ValueError(f"config.eval.from_iteration={config.eval.from_iteration} must be "
                             ">= 1; to skip evaluation set config.eval.enabled=False")
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
        if loop.rollout_service and not endpoint_urls(loop.student_endpoints):
            # The service runs in its own process: it cannot use this process's JAX sampler, so
            # a student that acts in collection must be served (SGLang / tools/serve_local.py).
            acting = [i for i in range(1, loop.iterations + 1) if needs_student(self._rule(i))]
            if acting:
                rule = self._rule(acting[0])
                raise ValueError(
                    f"config.loop.rollout_service={loop.rollout_service!r} is set but "
                    f"config.loop.student_endpoints is empty, and recipe {self.recipe.name!r} has "
                    f"the student act in collection (iteration {acting[0]}: beta={rule.beta}, "
                    f"student_prefix={rule.student_prefix}): the rollout service cannot use the "
                    "loop's in-process JAX sampler. Serve the student (launch/sglang_fleet.sh, or "
                    "tools/serve_local.py --model <workdir>/exports/iter_000) and set "
                    "config.loop.student_endpoints=URL[,URL...], or leave "
                    "config.loop.rollout_service empty to collect in-process")
        self._tasks_path: Path | None = None
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
        return build_actor(teacher_spec(self.config.loop), self.chat, "teacher")

    def _student(self, greedy: bool) -> TokenActor:
        """The student actor: the served student (the same spec a service job carries), else
        the in-process JAX sampler on the latest export. Built inside the event loop."""
        sampling = self._sampling(greedy)
        spec = student_spec(self.config.loop, sampling)
        if spec is not None:
            return build_actor(spec, self.chat, "student")
        sampler = LocalSampler.from_hf_dir(self._export_path(self._latest_export()), tokenizer=None,
                                           max_batch=self.config.loop.concurrency,
                                           weight_version=self.state.weight_version,
                                           vocab_limit=len(self.chat.tokenizer))
        return TokenActor("student", sampler, self.chat, sampling)

    def _settings(self, max_turns: int) -> EpisodeSettings:
        loop = self.config.loop
        return EpisodeSettings(max_turns=max_turns, max_new_tokens=loop.max_new_tokens,
                               context_budget=loop.context_budget, prompt_style=loop.prompt_style,
                               stuck_repeats=loop.stuck_repeats,
                               edit_miss_hint=loop.edit_miss_hint)

    def _sampling(self, greedy: bool) -> SamplingParams:
        return student_sampling(self.config.loop, self.recipe, greedy)

    def _rule(self, iteration: int) -> RolloutRule:
        loop = self.config.loop
        rule = self.recipe.rollout_rule(self.beta(iteration),
                                        loop.prefix_start + loop.prefix_step * (iteration - 1))
        return dataclasses.replace(rule, takeover_unparseable=bool(loop.takeover_unparseable))

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
        if self.trainer.checkpointer.latest_step() is None:
            # Fresh random params: keep them, so the export and a resumed run agree. (Params
            # imported with tools/import_hf.py are already checkpoint 0.)
            self.trainer.save(state)
        export_hf(state.params, self.model_config, path, tokenizer_dir=self.tokenizer_dir)

    def _collect(self, i: int) -> None:
        loop = self.config.loop
        rule = self._rule(i)
        tasks = self._tasks_of(i)
        job = CollectionJob(
            job_id=f"iter{i:03d}", iteration=i, rule=rule,
            task_ids=tuple(t.instance_id for t in tasks), out_dir=str(iteration_dir(self.workdir, i)),
            episodes_per_task=self.recipe.group_size, seed=self.config.seed + i,
            student_version=self.state.weight_version, teacher_id=loop.teacher,
            settings=self._settings(loop.max_turns), metadata={"recipe": self.recipe.name},
            label_budget=self._label_budgets[i - 1])
        if loop.rollout_service:  # training collection only: evaluation stays in-process
            report = self._run_service_collection(job, needs_student(rule))
        else:
            report = self._run_collection(job, {t.instance_id: t for t in tasks}, greedy=False,
                                          needs_student=needs_student(rule)).to_json()
        log.info("iteration %d: collected %s", i, json.dumps(report["stats"]))

    def _run_collection(self, job: CollectionJob, tasks: dict[str, Task], greedy: bool,
                        needs_student: bool, teacher: bool = True):
        """Collects the job in this process."""
        async def go():
            if needs_student:
                await self._sync_fleet()
            student = self._student(greedy) if needs_student else None
            teacher_actor = self._teacher() if teacher else None
            try:
                return await collect(job, tasks, student=student, teacher=teacher_actor,
                                     chat=self.chat, backend=self.backend,
                                     concurrency=self.config.loop.concurrency,
                                     progress=self.config.progress and jax.process_index() == 0)
            finally:
                await _close_actor(student)
                await _close_actor(teacher_actor)
        return asyncio.run(go())

    def _run_service_collection(self, job: CollectionJob, student_acts: bool) -> dict[str, Any]:
        """Collects the job as a rollout-service job; returns its report (JSON).

        The service reads the task file and the tokenizer and writes the shards to job.out_dir:
        all three must be at the same paths on its machine (shared storage), hence absolute.
        The job is a function of the iteration and state.json, so a restarted loop submits an
        equal job, which the service answers with its status (same id) or resumes from the
        shards already listed (a restarted service).
        """
        loop = self.config.loop
        student = student_spec(loop, self._sampling(False)) if student_acts else None
        if student_acts and student is None:  # refused in __init__; kept as a guard
            raise ValueError("service collection needs config.loop.student_endpoints")
        spec = ServiceJob(job=dataclasses.replace(job, out_dir=str(Path(job.out_dir).resolve())),
                          tasks_path=str(self._task_file()),
                          tokenizer_path=str(Path(self.tokenizer_dir).resolve()),
                          sandbox=loop.sandbox, student=student, teacher=teacher_spec(loop),
                          concurrency=loop.concurrency)
        client = RolloutServiceClient(loop.rollout_service)
        last_log = [0.0]

        def on_status(status: dict[str, Any]) -> None:
            now = time.monotonic()
            if now - last_log[0] >= 30.0:
                last_log[0] = now
                log.info("rollout job %s: %s %s", job.job_id, status["state"],
                         json.dumps(status.get("stats", {})))

        async def go():
            if student_acts:
                await self._sync_fleet()
            log.info("submitting rollout job %s to the rollout service %s", job.job_id,
                     loop.rollout_service)
            return await client.run(spec, on_status=on_status)
        report = asyncio.run(go())
        log.info("rollout job %s done at %s: %d episodes written, %d already stored",
                 job.job_id, loop.rollout_service, report["episodes_written"],
                 report["episodes_skipped"])
        return report

    def _task_file(self) -> Path:
        """The training tasks as a task file in the workdir (for the rollout service), written
        once: an existing file with the same content is reused, a different one replaced."""
        if self._tasks_path is not None:
            return self._tasks_path
        path = (self.workdir / "tasks" / "train.jsonl").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of this process's own (write_tasks writes it atomically), then compared with
        # and renamed over the file: every process of a multi-host run may do this at once.
        tmp = path.with_name(f"{path.name}.{jax.process_index()}.{os.getpid()}")
        write_tasks(self.train_tasks, tmp)
        if path.exists() and path.read_bytes() == tmp.read_bytes():
            tmp.unlink()
        else:
            if path.exists():
                log.warning("%s holds other tasks than this run's training tasks: replaced", path)
            os.replace(tmp, path)
        self._tasks_path = path
        return path

    async def _sync_fleet(self) -> None:
        """Makes every student endpoint serve the latest export before it is sampled from.

        _export loads each new export on the fleet, but nothing loads the initial one: a fleet
        started on another model (or restarted since) would act for iteration 1 (or later)
        with the wrong weights. So, before any collection that samples the served student,
        each endpoint's /get_model_info weight_version is compared with state.weight_version;
        those that differ (or do not answer) are told to load the latest export
        (update_weights_from_disk: idempotent, and a refusal stops the run, resumable here).
        """
        urls = endpoint_urls(self.config.loop.student_endpoints)
        if not urls:
            return
        version = self.state.weight_version
        path = str(self._export_path(self._latest_export()).resolve())
        clients = [SGLangClient(u) for u in urls]
        try:
            infos = await asyncio.gather(*(c.model_info() for c in clients), return_exceptions=True)
        finally:
            for c in clients:
                await c.aclose()
        stale = [u for u, info in zip(urls, infos)
                 if isinstance(info, BaseException) or str(info.get("weight_version")) != version]
        if not stale:
            return
        log.info("student endpoints %s do not serve version %s: loading %s", stale, version, path)
        pool = EndpointPool.from_urls(stale)
        try:
            await pool.update_weights_from_disk(path, version)
        finally:
            await pool.aclose()

    def _latest_export(self) -> int:
        done = [i for i in range(self.state.iteration, -1, -1) if self._export_path(i).exists()]
        return done[0]

    def _pipeline(self, i: int, new_only: bool = False) -> TrajectoryPipeline:
        first = 1 if self.recipe.aggregate and not new_only else i
        dirs = [iteration_dir(self.workdir, k) for k in range(first, i + 1)]
        c = self.config.train
        caps = (self._label_budgets[first - 1:i] if self.config.loop.cap_trained_labels
                else None)
        return TrajectoryPipeline(dirs, seq_len=c.seq_len, batch_size=c.batch_size,
                                  seed=self.config.seed + 1000 * i, weighting=self.recipe.weight,
                                  success_filter=self.recipe.success_filter, label_caps=caps)

    def _training_passes(self, i: int) -> list[tuple[TrajectoryPipeline, int]]:
        """(pipeline, epochs) in the order they are trained (training_plan)."""
        return [(self._pipeline(i, new_only=new_only), epochs)
                for new_only, epochs in training_plan(self.config.loop, self.recipe.aggregate, i)]

    def _train(self, i: int) -> None:
        passes = self._training_passes(i)
        if self.state.train_start is None:
            start = self.trainer.checkpointer.latest_step() or 0  # no need to restore the weights
            self.state.train_start = start
            self.state.train_end = start + sum(p.num_steps(e) for p, e in passes)
            self.state.save(self.workdir)
        start, end = self.state.train_start, self.state.train_end
        # Step -> (pipeline, its step): a pure function of the step, so a resumed run's batches
        # are the ones it would have had.
        bounds = np.cumsum([start] + [p.num_steps(e) for p, e in passes])

        def batch(step: int) -> dict[str, np.ndarray]:
            k = int(np.searchsorted(bounds, step, side="right")) - 1
            return passes[min(k, len(passes) - 1)][0].batch(step - int(bounds[k]))

        log.info("iteration %d: training steps %d..%d on %s", i, start, end, " then ".join(
            f"{p.num_examples} examples x {e} epochs" for p, e in passes))
        rate = (round_learning_rate(self.config.train, start, end)
                if self.config.train.round_schedule else None)
        self.trainer.fit(batch, total_steps=end, local_batches=True, rate_fn=rate)
        log.info("iteration %d: trained with objective %s: %s", i, self.trainer.objective,
                 json.dumps(self.trainer.last_metrics))

    def _export(self, i: int) -> None:
        state = self.trainer.initial_state()
        export_hf(state.params, self.model_config, self._export_path(i), tokenizer_dir=self.tokenizer_dir)
        self.state.weight_version = f"iter{i:03d}-step{int(state.step)}"
        urls = endpoint_urls(self.config.loop.student_endpoints)
        if urls:  # the fleet loads the new student; a refusal stops the run (resumable here)
            async def reload():
                pool = EndpointPool.from_urls(urls)
                try:
                    # Absolute: the servers resolve the path in their own working directory.
                    await pool.update_weights_from_disk(str(self._export_path(i).resolve()),
                                                        self.state.weight_version)
                finally:
                    await pool.aclose()
            asyncio.run(reload())

    def _evaluate(self, i: int) -> None:
        e = self.config.eval
        if not e.enabled or i < min(e.from_iteration, self.config.loop.iterations):
            self.state.history.append(self._training_row(i))
            return
        # In this process even with config.loop.rollout_service set: only training collection
        # goes through the service (the student still acts through student_endpoints if set).
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
        metrics.update(self._training_row(i))
        self.writer.write(i, {f"loop/{k}": float(v) for k, v in metrics.items()
                              if isinstance(v, (int, float))})
        self.state.history.append(metrics)
        log.info("iteration %d: %s", i, json.dumps(metrics))

    def _training_row(self, i: int) -> dict[str, Any]:
        """What iteration i collected and trained on: every history row has it."""
        return {"iteration": i, "beta": self.beta(i), "train_steps": self.state.train_end,
                "labelled_turns": self._labelled_turns(i),
                "trained_labels": self._pipeline(i).stats.trained_turns}

    def _labelled_turns(self, i: int) -> int:
        """Teacher-labelled turns collected so far (the budget recipes are compared at)."""
        return labelled_turns([iteration_dir(self.workdir, k) for k in range(1, i + 1)])
