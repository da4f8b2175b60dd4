"""Checking a tool call against the tool specs, and reading its typed parameter values."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from dagger_jax.agent.tools import DEFAULT_TOOLS, ToolParameter, ToolSpec, tool_by_name

# Line numbers and counts: 18 digits is beyond any file, and keeps int() far from Python's
# 4300-digit conversion limit (a model can emit a number of any length).
MAX_INT_DIGITS = 18
_INT_RE = re.compile(r"\s*-?[0-9]{1,%d}\s*" % MAX_INT_DIGITS)


def parse_int(value: str) -> int | None:
    """value as a base-10 integer of at most MAX_INT_DIGITS ASCII digits (surrounding
    whitespace allowed), or None."""
    return int(value) if _INT_RE.fullmatch(value) else None


def parse_view_range(value: str) -> tuple[int, int] | None:
    """A view_range value `[start, end]` as two ints (start >= 1, end -1 or >= start), or None."""
    if len(value) > 4 * MAX_INT_DIGITS:  # two bounded integers, brackets and spaces
        return None
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if (
        not isinstance(parsed, list)
        or len(parsed) != 2
        or not all(type(x) is int for x in parsed)  # bool is an int subclass; refuse it
    ):
        return None
    start, end = parsed
    if start < 1 or not (end == -1 or end >= start):
        return None
    return start, end


def _shown(value: str, limit: int = 80) -> str:
    """value quoted for an error message, cut to `limit` characters (a value can be megabytes)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def _check_value(tool: ToolSpec, parameter: ToolParameter, value: str) -> str | None:
    """Why value does not fit parameter, or None when it does."""
    where = f"parameter `{parameter.name}` of `{tool.name}`"
    if parameter.enum and value.strip() not in parameter.enum:
        return f"{where} is {_shown(value)}; it must be one of: {', '.join(parameter.enum)}"
    if parameter.type == "integer":
        number = parse_int(value)
        if number is None:
            return (f"{where} must be an integer of at most {MAX_INT_DIGITS} digits, "
                    f"got {_shown(value)}")
        if number < 0:
            return f"{where} must be >= 0, got {number}"
    if parameter.type == "array" and parse_view_range(value) is None:
        # view_range is the only array parameter; its rules are the format's own.
        return (
            f"{where} must be a list of two integers [start, end] with start >= 1 and "
            f"end >= start or end = -1 (to the end of the file), got {_shown(value)}"
        )
    return None


def validate_call(
    name: str, params: Mapping[str, str], tools: Sequence[ToolSpec] = DEFAULT_TOOLS
) -> str | None:
    """Why a call of tool `name` with params is invalid under tools, or None if it is valid.

    Checks that the tool exists, that every parameter is one it has, that every
    parameter it needs is there (including those its `command` requires), and that
    values have the declared type (integer, [start, end] ranges, allowed values).
    """
    tool = tool_by_name(tools, name)
    if tool is None:
        known = ", ".join(t.name for t in tools)
        return f"unknown tool `{name}`; the tools are: {known}"
    unknown = [key for key in params if tool.parameter(key) is None]
    if unknown:
        allowed = ", ".join(p.name for p in tool.parameters) or "none"
        return (
            f"`{name}` has no parameter {', '.join(f'`{k}`' for k in unknown)}; "
            f"its parameters are: {allowed}"
        )
    for key, value in params.items():
        problem = _check_value(tool, tool.parameter(key), value)  # type: ignore[arg-type]
        if problem:
            return problem
    command = params.get("command")
    missing = [key for key in tool.required_for(command and command.strip()) if key not in params]
    if missing:
        context = f" with command={command.strip()}" if command and tool.required_by_command else ""
        return (
            f"`{name}`{context} needs the parameter(s) {', '.join(f'`{k}`' for k in missing)}, "
            "which the call does not give"
        )
    return None


def typed_arguments(
    name: str, params: Mapping[str, str], tools: Sequence[ToolSpec] = DEFAULT_TOOLS
) -> dict[str, str | int | tuple[int, int]]:
    """params of a valid call with integer and range values converted (strings stay as given).

    Enum values (e.g. the editor's `command`) are returned stripped. Raises ValueError,
    naming the tool and the problem, for a call that validate_call rejects.
    """
    problem = validate_call(name, params, tools)
    if problem:
        raise ValueError(f"typed_arguments: invalid call of `{name}`: {problem}")
    tool = tool_by_name(tools, name)
    assert tool is not None  # validate_call checked it
    typed: dict[str, str | int | tuple[int, int]] = {}
    for key, value in params.items():
        parameter = tool.parameter(key)
        assert parameter is not None
        if parameter.type == "integer":
            typed[key] = int(value)
        elif parameter.type == "array" and key == "view_range":
            typed[key] = parse_view_range(value)  # type: ignore[assignment]
        elif parameter.enum:
            typed[key] = value.strip()
        else:
            typed[key] = value
    return typed
