"""The text the agent sees after an action: capped tool output, bash results and errors."""

from __future__ import annotations

from collections.abc import Sequence

from dagger_jax.agent.tools import DEFAULT_TOOLS, ToolSpec

# Below this a marker plus some head and tail no longer fit; a config asking for less
# is a mistake, not a wish for empty observations.
MIN_OBSERVATION_CHARS = 200

CALL_FORMAT_EXAMPLE = (
    "<function=TOOL_NAME>\n<parameter=PARAMETER_NAME>\nvalue\n</parameter>\n</function>"
)


def _truncation_marker(dropped: int) -> str:
    return f"\n[... {dropped} characters truncated ...]\n"


def format_observation(text: str, max_chars: int) -> str:
    """Cap text at max_chars, keeping its head and tail around a marker that counts what was cut.

    Both ends are kept because a command's first lines (what ran) and its last lines
    (the error, the summary, the exit) are the informative ones. The result, marker
    included, is never longer than max_chars. Raises ValueError if max_chars is below
    MIN_OBSERVATION_CHARS.
    """
    if max_chars < MIN_OBSERVATION_CHARS:
        raise ValueError(
            f"format_observation: max_chars={max_chars} is below the minimum of "
            f"{MIN_OBSERVATION_CHARS} (the truncation marker alone needs room)"
        )
    if len(text) <= max_chars:
        return text
    # The marker's length depends on the count it prints: grow the count until the
    # marker it needs no longer changes (a digit or two more at most).
    keep = max_chars - len(_truncation_marker(len(text) - max_chars))
    while keep + len(_truncation_marker(len(text) - keep)) > max_chars:
        keep -= 1
    dropped = len(text) - keep
    head = keep - keep // 2
    tail = keep // 2
    return text[:head] + _truncation_marker(dropped) + text[len(text) - tail :]


def format_bash_observation(
    output: str, exit_code: int | None, max_chars: int, *, timeout_s: float | None = None
) -> str:
    """The observation for an execute_bash call: its (capped) output and how it ended.

    exit_code None means the command did not finish: pass timeout_s to say it was
    killed after that many seconds. The whole observation fits in max_chars.
    """
    if exit_code is None:
        if timeout_s is None:
            status = "[The command did not finish; it was killed.]"
        else:
            status = f"[The command timed out after {timeout_s:g} seconds and was killed.]"
    else:
        status = f"[The command finished with exit code {exit_code}.]"
    budget = max_chars - len(status) - 1
    if budget < MIN_OBSERVATION_CHARS:
        raise ValueError(
            f"format_bash_observation: max_chars={max_chars} leaves {budget} characters for "
            f"the output after the status line; at least {MIN_OBSERVATION_CHARS} are needed"
        )
    # One trailing newline is how commands end their output, not part of what they said.
    body = output.removesuffix("\n")
    if body:
        return format_observation(body, budget) + "\n" + status
    return status


def format_error_observation(message: str, max_chars: int | None = None) -> str:
    """The observation for an action that failed (bad call, tool error): `ERROR: ` + message."""
    text = f"ERROR: {message.strip()}"
    return text if max_chars is None else format_observation(text, max_chars)


def format_reminder(tools: Sequence[ToolSpec] = DEFAULT_TOOLS) -> str:
    """A short reminder of the call format, appended to every parse error the agent sees."""
    names = ", ".join(tool.name for tool in tools)
    return (
        "Write your reasoning, then exactly one tool call at the very end of your message, "
        f"in this format:\n{CALL_FORMAT_EXAMPLE}\nAvailable tools: {names}."
    )


def describe_parameters(tool: ToolSpec) -> str:
    """One line per parameter of tool (name, type, required or not, allowed values)."""
    lines = []
    for p in tool.parameters:
        notes = [p.type, "required" if p.required else "optional"]
        if p.enum:
            notes.append("one of " + ", ".join(p.enum))
        lines.append(f"- {p.name} ({'; '.join(notes)}): {p.description}")
    for command, names in tool.required_by_command:
        lines.append(f"- with command={command}, also required: {', '.join(names)}")
    return "\n".join(lines) if lines else "(no parameters)"
