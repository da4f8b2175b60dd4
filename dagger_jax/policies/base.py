"""What a privileged policy (the scripted expert) looks at: the episode so far and the sandbox."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from dagger_jax.envs.sandbox.base import Sandbox
from dagger_jax.envs.tasks.task import Task


@dataclasses.dataclass(frozen=True)
class AgentState:
    """Only privileged policies (the scripted expert) read the sandbox or the task's gold
    patch; a model sees the conversation alone (policies/actors.TurnState)."""

    task: Task
    messages: Sequence[dict[str, str]]
    sandbox: Sandbox
