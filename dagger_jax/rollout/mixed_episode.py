"""One episode in which student and teacher take turns, every visited state labelled.

Per turn the rule picks the executor (the coin uses the episode's own seeded generator, so
the flips replay). When the student executes and the rule wants the teacher's action as label,
both calls go out at once on the same state: the teacher labels the state the student reached
without adding its latency to the turn. A teacher-executed turn is its own label (one call).
The conversation is kept in the student's tokens: a student turn exactly as sampled, a teacher
turn re-tokenised once. The sandbox API blocks, so its calls run in worker threads and many
episodes share one event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from dagger_jax.agent import ChatTokenizer, initial_messages, parse_action
from dagger_jax.agent.prompts import PROMPT_STYLES
from dagger_jax.agent.text import well_formed
from dagger_jax.data.records import EpisodeRecord, Outcome, TurnRecord
from dagger_jax.envs.editor import StrReplaceEditor
from dagger_jax.envs.grading import grade
from dagger_jax.envs.base_image import DEFAULT_RECIPE
from dagger_jax.envs.sandbox.base import Sandbox, SandboxBackend, SandboxError, SandboxSpec
from dagger_jax.envs.tasks.repo import materialize_repo
from dagger_jax.envs.tasks.task import Task
from dagger_jax.policies.actors import Action, Actor, TurnState
from dagger_jax.rollout.faults import InfrastructureFault, Patience, is_infrastructure
from dagger_jax.rollout.mixing import STUDENT, TEACHER, RolloutRule
from dagger_jax.rollout.stats import CollectorStats
from dagger_jax.rollout.tool_execution import execute_call

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class EpisodeSettings:
    max_turns: int = 30
    context_budget: int = 8192     # tokens: a turn starts only if its prompt + a full reply fit
    max_new_tokens: int = 512      # the reply's share of the budget
    max_observation_chars: int = 8000
    grading_timeout_s: float = 600.0
    prompt_style: str = "full"     # agent/prompts.py: full | compact
    # > 0: end the episode ("stuck") once the same action has met the same observation this
    # many turns in a row, as OpenHands' stuck detector does; such an agent repeats itself to
    # the turn limit, at full generation cost. 0: off.
    stuck_repeats: int = 0
    # A refused str_replace also shows the file's closest lines (envs/editor.py, `miss_hint`).
    edit_miss_hint: bool = False
    # How long the job waits out an infrastructure outage (no endpoint answers, sandboxes
    # cannot be started) before it gives up and leaves the episodes it could not run
    # uncollected, for a rerun (rollout/faults.py).
    infra_patience_s: float = 600.0

    def __post_init__(self) -> None:
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"EpisodeSettings.prompt_style {self.prompt_style!r}: choose from "
                             f"{PROMPT_STYLES}")
        for name in ("max_turns", "context_budget", "max_new_tokens", "max_observation_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"EpisodeSettings.{name} must be positive, got {getattr(self, name)}")
        if not self.infra_patience_s >= 0:
            raise ValueError(f"EpisodeSettings.infra_patience_s must be >= 0, got "
                             f"{self.infra_patience_s}")
        if self.stuck_repeats < 0 or self.stuck_repeats == 1:
            raise ValueError(f"EpisodeSettings.stuck_repeats must be 0 (off) or >= 2, got "
                             f"{self.stuck_repeats}")


# Called with the open sandbox before the first turn (tools/run_episode.py --corrupt, tests):
# the episode starts from a damaged state.
Setup = Callable[[Sandbox], None]


@dataclasses.dataclass(frozen=True)
class Provenance:
    iteration: int
    student_version: str
    teacher_id: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def sandbox_spec(task: Task, backend: SandboxBackend, work_dir: Path) -> SandboxSpec:
    """The task's own image where the backend runs images and the task has one (the repo is
    already in it); else its repo files, copied in, on the base image."""
    if task.image is not None and (backend.runs_images or task.repo_files is None):
        return SandboxSpec(image=task.image)
    return SandboxSpec(image=DEFAULT_RECIPE.image,
                       repo_dir=materialize_repo(task, work_dir / "repo"))


def turn_seed(episode_seed_: int, turn: int) -> int:
    """The sampling seed of one turn: derived, not drawn from the episode's generator, so the
    executor coins stay what they were."""
    digest = hashlib.sha256(f"{episode_seed_}:turn:{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def episode_seed(job_seed: int, episode_id: str) -> int:
    """A per-episode seed from the job's seed and the episode's id: stable across restarts."""
    digest = hashlib.sha256(f"{job_seed}:{episode_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def label_ids(chat: ChatTokenizer, text: str) -> list[int]:
    """A text turn as the student's tokens (content + end-of-turn). A literal end-of-turn inside
    the text would end the turn early in the student's tokens, so the text is cut there."""
    marker = chat.end_of_turn
    if marker in text:
        text = text[:text.index(marker)]
    return chat.assistant_turn_ids(text)


def executed_ids(chat: ChatTokenizer, action: Action) -> list[int]:
    return list(action.token_ids) if action.token_ids is not None else label_ids(chat, action.text)


class _Episode:
    """The mutable state of one running episode (a class so each step stays small)."""

    def __init__(self, task: Task, episode_id: str, seed: int, rule: RolloutRule,
                 student: Actor | None, teacher: Actor | None, chat: ChatTokenizer,
                 settings: EpisodeSettings, stats: CollectorStats, patience: Patience):
        self.task, self.episode_id, self.rule = task, episode_id, rule
        self.patience = patience
        self.student, self.teacher, self.chat = student, teacher, chat
        self.settings, self.stats = settings, stats
        self.rng, self.seed = random.Random(seed), seed
        self.encoder = chat.conversation(
            initial_messages(task.problem_statement, style=settings.prompt_style))
        self.turns: list[TurnRecord] = []
        self.timings = {"student_s": 0.0, "teacher_s": 0.0, "sandbox_s": 0.0, "grading_s": 0.0}
        self.end_reason, self.error = "turn_limit", None
        self._exchanges: list[tuple[str, str]] = []  # (action text, observation) per turn

    async def _call(self, actor: Actor, role: str, state: TurnState) -> Action:
        start = time.perf_counter()
        try:
            action = await self._patiently(f"{role} endpoints", lambda: actor.act(state))
            # A text-only actor (an HTTP chat API) can hand over lone surrogates.
            return dataclasses.replace(action, text=well_formed(action.text))
        finally:
            self.timings[f"{role}_s"] += time.perf_counter() - start
            self.stats.count(f"{role}_calls")

    async def _patiently(self, what: str, call):
        """call(), made again while it fails for the infrastructure's sake and the job's patience
        lasts (then InfrastructureFault). A lost sandbox is not waited for here: the episode
        has to start again in a new one."""
        attempt = 0
        while True:
            try:
                result = await call()
            except SandboxError:
                raise
            except Exception as e:  # noqa: BLE001 - sorted into infrastructure or not below
                if not is_infrastructure(e):
                    raise
                await self.patience.wait(what, e, attempt)
                attempt += 1
                self.stats.count("infrastructure_waits")
                continue
            self.patience.succeeded()
            return result

    async def _turns_and_grade(self, sandbox):
        """The turns and the grading; whatever else one of them raises (a defect the agent's
        input found in our tools or tokenizer) ends this episode as `internal_error`, never the
        collection."""
        try:
            for index in range(self.settings.max_turns):
                if not await self.turn(index, sandbox):
                    break
            start = time.perf_counter()
            result = await asyncio.to_thread(grade, sandbox, self.task,
                                             self.settings.grading_timeout_s)
            self.timings["grading_s"] = time.perf_counter() - start
            return result
        except (SandboxError, InfrastructureFault):
            raise
        except Exception as e:  # noqa: BLE001 - the episode boundary (module doc)
            log.exception("episode %s: internal error after %d turns", self.episode_id,
                          len(self.turns))
            self.end_reason, self.error = "internal_error", f"{type(e).__name__}: {e}"[:2000]
            self.stats.count("internal_errors")
            return None

    async def turn(self, index: int, sandbox) -> bool:
        """Runs one turn; returns False when the episode ends."""
        prompt = self.encoder.generation_prompt_ids()
        if len(prompt) + self.settings.max_new_tokens > self.settings.context_budget:
            self.end_reason = "context_limit"
            return False
        executor = self.rule.executor(index, self.rng)
        state = TurnState(self.task, self.encoder.messages, tuple(prompt), sandbox, self.episode_id,
                          seed=turn_seed(self.seed, index))
        label: Action | None = None
        student_latency_s: float | None = None
        if executor == TEACHER:
            try:
                executed = label = await self._call(self.teacher, TEACHER, state)
            except (SandboxError, InfrastructureFault):
                raise  # the machinery's fault, not the teacher's
            except Exception as e:  # noqa: BLE001 - the teacher had to act: the episode ends
                self.end_reason, self.error = "teacher_error", f"{type(e).__name__}: {e}"
                self.stats.count("teacher_failures")
                return False
        else:
            calls = [self._call(self.student, STUDENT, state)]
            if self.rule.label == "action":
                calls.append(self._call(self.teacher, TEACHER, state))
            results = await asyncio.gather(*calls, return_exceptions=True)
            for result in results:
                if isinstance(result, (SandboxError, InfrastructureFault)):
                    raise result
            if isinstance(results[0], BaseException):
                self.end_reason = "policy_error"
                self.error = f"student: {type(results[0]).__name__}: {results[0]}"
                self.stats.count("student_failures")
                return False
            executed = results[0]
            if len(results) > 1:
                if isinstance(results[1], BaseException):
                    # The state stays unlabelled (no example); the episode goes on.
                    self.stats.count("teacher_failures")
                else:
                    label = results[1]
            if (self.rule.takeover_unparseable and label is not None
                    and not parse_action(executed.text).ok):
                # The teacher takes the turn: its label is executed (a teacher turn whose record
                # keeps the student's latency, the sign that the student was asked first).
                student_latency_s, executor, executed = executed.latency_s, TEACHER, label
                self.stats.count("student_takeovers")
        try:
            ids = executed_ids(self.chat, executed)
            text = self.encoder.append_generated(ids)
        except Exception as e:  # noqa: BLE001 - text the tokenizer cannot take (lone surrogates),
            # ids outside it (a padded vocabulary), a stray end-of-turn: the actor's turn is unusable
            self.end_reason = "policy_error" if executor == STUDENT else "teacher_error"
            self.error = f"{executor} turn {index} cannot join the conversation: {e}"
            self.stats.count(f"{executor}_failures")
            return False
        start, end = self.encoder.assistant_spans[-1]
        if start != len(prompt) or self.encoder.ids[:start] != prompt:
            raise RuntimeError(f"episode {self.episode_id}: the conversation's tokens no longer "
                               f"start with turn {index}'s prompt (chat template not prefix-stable)")
        teacher_logprobs: list[float] = []
        if self.rule.label == "logprobs" and executor == STUDENT:
            target = self.encoder.ids[start:end]
            try:
                teacher_logprobs = list(await self._patiently(
                    "teacher endpoints", lambda: self.teacher.score(state, target)))
                self.stats.count("teacher_calls")
            except (SandboxError, InfrastructureFault):
                raise
            except Exception:  # noqa: BLE001 - an unscored turn is just unlabelled
                self.stats.count("teacher_failures")
        self.turns.append(TurnRecord(
            index=index, executor=executor, prompt_len=start, executed_end=end, executed_text=text,
            label_text=(text if executor == TEACHER else label.text if label else None),
            label_ids=(self.encoder.ids[start:end] if executor == TEACHER
                       else self._label_ids(label) if label else []),
            sample_logprobs=list(executed.logprobs), teacher_logprobs=teacher_logprobs,
            student_latency_s=executed.latency_s if executor == STUDENT else student_latency_s,
            teacher_latency_s=label.latency_s if label else None,
            parse_ok=True, finish_reason=executed.finish_reason))
        self.stats.count("turns")
        self.stats.count(f"{executor}_turns")
        return await self._execute(text, sandbox)

    def _label_ids(self, label: Action) -> list[int]:
        """The teacher's label in the student's tokens; a label the tokenizer cannot take
        leaves the state unlabelled, as a failed labelling call does."""
        try:
            return label_ids(self.chat, label.text)
        except Exception:  # noqa: BLE001
            self.stats.count("teacher_failures")
            return []

    async def _execute(self, text: str, sandbox) -> bool:
        parsed = parse_action(text)
        cap = self.settings.max_observation_chars
        if not parsed.ok:
            self.turns[-1].parse_ok = False
            observation = parsed.error_observation(cap)
        else:
            start = time.perf_counter()
            outcome = await asyncio.to_thread(execute_call, parsed.call, sandbox, self.editor, cap)
            self.timings["sandbox_s"] += time.perf_counter() - start
            if outcome.finished:
                self.end_reason = "finish"
                return False
            observation = outcome.observation
        self.encoder.append({"role": "tool", "content": observation})
        self._exchanges.append((text, observation))
        repeats = self.settings.stuck_repeats
        if repeats and len(self._exchanges) >= repeats and len(set(self._exchanges[-repeats:])) == 1:
            self.end_reason = "stuck"
            return False
        return True

    async def run(self, backend: SandboxBackend, setup: Setup | None = None) -> Outcome:
        result = None
        with tempfile.TemporaryDirectory(prefix="dagger_jax-episode-") as tmp:
            try:
                spec = sandbox_spec(self.task, backend, Path(tmp))
                sandbox = await asyncio.to_thread(backend.open, spec)
                try:
                    if setup is not None:
                        await asyncio.to_thread(setup, sandbox)
                    self.editor = StrReplaceEditor(sandbox, miss_hint=self.settings.edit_miss_hint)
                    result = await self._turns_and_grade(sandbox)
                finally:
                    await asyncio.to_thread(sandbox.close)
            except SandboxError as e:
                # Started again in a new sandbox by the collector, never recorded as an outcome.
                self.stats.count("sandbox_failures")
                raise InfrastructureFault("sandbox", e) from e
        error = None if self.error is None else well_formed(self.error)
        if result is None:
            return Outcome(resolved=False, end_reason=self.end_reason, error=error,
                           fail_to_pass_total=len(self.task.fail_to_pass),
                           pass_to_pass_total=len(self.task.pass_to_pass))
        return Outcome(resolved=result.resolved, end_reason=self.end_reason,
                       fail_to_pass_passed=result.fail_to_pass_passed,
                       fail_to_pass_total=result.fail_to_pass_total,
                       pass_to_pass_passed=result.pass_to_pass_passed,
                       pass_to_pass_total=result.pass_to_pass_total,
                       patch=well_formed(result.patch),
                       error=error or (result.error and well_formed(result.error)))


async def run_mixed_episode(task: Task, *, episode_id: str, seed: int, rule: RolloutRule,
                            student: Actor | None, teacher: Actor | None, chat: ChatTokenizer,
                            backend: SandboxBackend, settings: EpisodeSettings,
                            provenance: Provenance, stats: CollectorStats | None = None,
                            setup: Setup | None = None,
                            patience: Patience | None = None) -> EpisodeRecord:
    """Runs and grades one episode and returns its record; the agent's faults end it with a
    reason. Raises InfrastructureFault when the machinery failed it (rollout/faults.py)."""
    if rule.needs_teacher and teacher is None:
        raise ValueError(f"episode {episode_id}: rule {rule} needs a teacher")
    if (rule.beta < 1.0 or rule.student_prefix) and student is None:
        raise ValueError(f"episode {episode_id}: rule {rule} lets the student act but there is none")
    stats = stats if stats is not None else CollectorStats()
    patience = patience if patience is not None else Patience(settings.infra_patience_s)
    episode = _Episode(task, episode_id, seed, rule, student, teacher, chat, settings, stats,
                       patience)
    start = time.perf_counter()
    outcome = await episode.run(backend, setup)
    stats.count("episodes")
    stats.count("resolved", int(outcome.resolved))
    return EpisodeRecord(
        episode_id=episode_id, task_id=task.instance_id, iteration=provenance.iteration,
        beta=rule.beta, seed=seed, student_version=provenance.student_version,
        teacher_id=provenance.teacher_id, trunk_ids=episode.encoder.ids,
        messages=[{"role": m["role"], "content": m["content"]} for m in episode.encoder.messages],
        turns=episode.turns, outcome=outcome,
        timings={**episode.timings, "seconds": time.perf_counter() - start},
        metadata={**provenance.metadata, "split": task.split, "source": task.source,
                  "rule": dataclasses.asdict(rule)})


def run_actor_episode(task: Task, actor: Actor, *, backend: SandboxBackend, chat: ChatTokenizer,
                      settings: EpisodeSettings = EpisodeSettings(), setup: Setup | None = None,
                      seed: int = 0) -> EpisodeRecord:
    """One episode acted by `actor` alone (the teacher's seat, beta 1, nothing else labelled),
    on the same episode loop as collection: tools/run_episode.py and the sandbox tests."""
    rule = RolloutRule(beta=1.0, label="none")
    return asyncio.run(run_mixed_episode(
        task, episode_id=f"single/{task.instance_id}/0", seed=seed, rule=rule, student=None,
        teacher=actor, chat=chat, backend=backend, settings=settings,
        provenance=Provenance(iteration=0, student_version="", teacher_id=actor.name),
        setup=setup))


def episode_summary(record: EpisodeRecord) -> dict[str, Any]:
    """One line per episode, as tools print them."""
    o = record.outcome
    return {"instance_id": record.task_id, "policy": record.teacher_id, "resolved": o.resolved,
            "turns": len(record.turns), "end_reason": o.end_reason,
            "patch_lines": len(o.patch.splitlines()),
            "seconds": round(record.timings.get("seconds", 0.0), 2), "error": o.error}
