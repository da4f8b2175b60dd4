"""Carries out one parsed tool call in the episode's sandbox and words the observation."""

from __future__ import annotations

import dataclasses
import logging

from dagger_jax.agent import (ToolCall, format_bash_observation, format_error_observation,
                              format_observation, typed_arguments)
from dagger_jax.envs.editor import StrReplaceEditor
from dagger_jax.envs.sandbox.base import CommandRefused, Sandbox, SandboxError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    observation: str
    finished: bool = False


def execute_call(call: ToolCall, sandbox: Sandbox, editor: StrReplaceEditor,
                 max_observation_chars: int) -> StepOutcome:
    """Runs a call that parse_action accepted. `finish` ends the episode without running anything.

    Arguments the tools cannot take (a NUL byte in a command or path, a lone surrogate in a
    file's text) come back to the agent as an error observation; the sandbox is still whole,
    so the episode goes on. A lost sandbox (SandboxError) is raised: that is not the agent's."""
    try:
        return _execute(call, sandbox, editor, max_observation_chars)
    except SandboxError:
        raise
    except CommandRefused as e:  # the sandbox's own refusal: an ordinary observation
        return StepOutcome(format_error_observation(f"`{call.name}`: {e}", max_observation_chars))
    except Exception as e:  # noqa: BLE001 - the agent's arguments reached a tool's limits
        log.warning("tool %s failed on the agent's arguments: %s: %s", call.name,
                    type(e).__name__, str(e)[:200])
        return StepOutcome(format_error_observation(
            f"`{call.name}` could not run with these arguments: {type(e).__name__}: {e}",
            max_observation_chars))


def _execute(call: ToolCall, sandbox: Sandbox, editor: StrReplaceEditor,
             max_observation_chars: int) -> StepOutcome:
    if call.name == "finish":
        return StepOutcome("", finished=True)
    args = typed_arguments(call.name, call.params)
    if call.name == "execute_bash":
        result = sandbox.run(str(args["command"]))
        exit_code = None if result.timed_out else result.exit_code
        timeout = sandbox.limits.command_timeout_s if result.timed_out else None
        return StepOutcome(format_bash_observation(result.output, exit_code, max_observation_chars,
                                                   timeout_s=timeout))
    if call.name == "str_replace_editor":
        result = editor(**args)
        if result.error:
            return StepOutcome(format_error_observation(result.output, max_observation_chars))
        return StepOutcome(format_observation(result.output, max_observation_chars))
    return StepOutcome(format_error_observation(f"tool `{call.name}` has no executor",
                                                max_observation_chars))
