"""The policy interface: given the episode so far, the next assistant turn as text."""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

from dagger_jax.envs.sandbox.base import Sandbox
from dagger_jax.envs.tasks.task import Task


@dataclasses.dataclass(frozen=True)
class AgentState:
    """What a policy may look at. Only privileged policies (the scripted expert) read the
    sandbox or the task's gold patch; a model policy sees `messages` alone."""

    task: Task
    messages: Sequence[dict[str, str]]
    sandbox: Sandbox


class Policy(Protocol):
    name: str

    def act(self, state: AgentState) -> str:
        """The next assistant turn: reasoning text and one tool call."""
        ...


class NoopPolicy:
    """Finishes at once without changing anything: the floor every task must fail at."""

    name = "noop"

    def act(self, state: AgentState) -> str:
        from dagger_jax.agent import ToolCall, render_action
        return render_action(ToolCall("finish", {}), "Nothing to change.")
