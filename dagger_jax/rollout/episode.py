"""One episode: a policy acts in a task's sandbox until `finish` or the turn limit; then grading.

This is the plain single-policy loop (the tools and the tests use it). The DAgger runner with
turn-level mixing and teacher labels builds on the same steps.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable

from dagger_jax.agent import initial_messages, parse_action
from dagger_jax.envs.base_image import DEFAULT_RECIPE
from dagger_jax.envs.editor import StrReplaceEditor
from dagger_jax.envs.grading import GradeResult, grade
from dagger_jax.envs.sandbox.base import Sandbox, SandboxBackend, SandboxError, SandboxSpec
from dagger_jax.envs.tasks.repo import materialize_repo
from dagger_jax.envs.tasks.task import Task
from dagger_jax.policies.base import AgentState, Policy
from dagger_jax.rollout.tool_execution import execute_call

# Called with the open sandbox before the first turn: tests use it to start from a damaged state.
Setup = Callable[[Sandbox], None]


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    instance_id: str
    policy: str
    resolved: bool
    turns: int
    end_reason: str               # finish | turn_limit | sandbox_error | policy_error
    patch: str
    seconds: float
    messages: tuple[dict[str, str], ...]
    grade: GradeResult | None
    error: str | None = None

    def summary(self) -> dict:
        return {"instance_id": self.instance_id, "policy": self.policy, "resolved": self.resolved,
                "turns": self.turns, "end_reason": self.end_reason,
                "patch_lines": len(self.patch.splitlines()), "seconds": round(self.seconds, 2),
                "error": self.error}


def sandbox_spec(task: Task, backend: SandboxBackend, work_dir: Path) -> SandboxSpec:
    """The task's own image where the backend runs images and the task has one (the repo is
    already in it); else its repo files, copied in, on the base image."""
    if task.image is not None and (backend.runs_images or task.repo_files is None):
        return SandboxSpec(image=task.image)
    return SandboxSpec(image=DEFAULT_RECIPE.image,
                       repo_dir=materialize_repo(task, work_dir / "repo"))


def run_episode(task: Task, policy: Policy, backend: SandboxBackend, max_turns: int = 30,
                max_observation_chars: int = 8000, setup: Setup | None = None,
                edit_miss_hint: bool = False) -> EpisodeResult:
    """Runs and grades one episode; a fault ends this episode with a reason, never raises."""
    start = time.perf_counter()
    messages = initial_messages(task.problem_statement)
    turns, end_reason, error, result = 0, "turn_limit", None, None
    with tempfile.TemporaryDirectory(prefix="dagger_jax-episode-") as tmp:
        try:
            with backend.open(sandbox_spec(task, backend, Path(tmp))) as sandbox:
                if setup is not None:
                    setup(sandbox)
                editor = StrReplaceEditor(sandbox, miss_hint=edit_miss_hint)
                while turns < max_turns:
                    try:
                        text = policy.act(AgentState(task, tuple(messages), sandbox))
                    except SandboxError:
                        raise
                    except Exception as e:  # noqa: BLE001 - a broken policy ends its episode only
                        end_reason, error = "policy_error", f"{type(e).__name__}: {e}"
                        break
                    turns += 1
                    messages.append({"role": "assistant", "content": text})
                    parsed = parse_action(text)
                    if not parsed.ok:
                        messages.append({"role": "tool",
                                     "content": parsed.error_observation(max_observation_chars)})
                        continue
                    outcome = execute_call(parsed.call, sandbox, editor, max_observation_chars)
                    if outcome.finished:
                        end_reason = "finish"
                        break
                    messages.append({"role": "tool", "content": outcome.observation})
                result = grade(sandbox, task)
        except SandboxError as e:
            end_reason, error = "sandbox_error", e.reason
    return EpisodeResult(
        instance_id=task.instance_id, policy=policy.name,
        resolved=bool(result and result.resolved), turns=turns, end_reason=end_reason,
        patch=result.patch if result else "", seconds=time.perf_counter() - start,
        messages=tuple(messages), grade=result,
        error=error or (result.error if result else None))
