"""The action text format: rendering a tool call and parsing one out of model text.

The format is the OpenHands / Qwen3-Coder one:

    <function=execute_bash>
    <parameter=command>
    ls
    </parameter>
    </function>

A model turn is free reasoning text followed by exactly one such call (optionally
wrapped in `<tool_call>...</tool_call>`, as Qwen3-Coder's own template writes it) and
nothing but whitespace after. parse_action never raises on model text: whatever is
wrong comes back as an error whose message is the observation the agent sees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dagger_jax.agent.observations import (
    describe_parameters,
    format_error_observation,
    format_observation,
    format_reminder,
)
from dagger_jax.agent.tools import DEFAULT_TOOLS, RESERVED_TAGS, ToolSpec, tool_by_name
from dagger_jax.agent.validation import validate_call

_FUNCTION_OPEN = "<function="
_FUNCTION_CLOSE = "</function>"
_PARAM_OPEN = "<parameter="
_PARAM_CLOSE = "</parameter>"
_WRAP_OPEN = "<tool_call>"
_WRAP_CLOSE = "</tool_call>"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class ToolCall:
    """One tool call: the tool's name and its parameter values as the text gave them."""

    name: str
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A private copy, so a caller mutating its dict cannot change a recorded call.
        object.__setattr__(self, "params", dict(self.params))


@dataclass(frozen=True)
class ParsedAction:
    """What parse_action found in a model turn: a call, or the error the agent is shown.

    error_kind is a short stable code for counting failures (no_call, multiple_calls,
    malformed, unclosed, trailing_text, duplicate_parameter, invalid_call).
    """

    call: ToolCall | None
    thought: str = ""
    error: str | None = None
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        """True when a valid call was found."""
        return self.call is not None

    def error_observation(self, max_chars: int | None = None) -> str:
        """The tool message for an unparsed turn: `error` (already `ERROR: ...`), capped like
        any observation."""
        if self.error is None:
            raise ValueError("error_observation: this action parsed; it has no error")
        return self.error if max_chars is None else format_observation(self.error, max_chars)


def render_action(call: ToolCall, thought: str = "") -> str:
    """The text of a turn that makes call, after thought (if any) and a newline.

    Every value is written between newlines, so parse_action gives back exactly the
    values rendered here. Raises ValueError for a name or value the format cannot carry
    (a value containing a closing tag of the format would end the call early).
    """
    if not _NAME_RE.fullmatch(call.name):
        raise ValueError(f"render_action: tool name {call.name!r} is not a valid name")
    lines = [f"{_FUNCTION_OPEN}{call.name}>"]
    for key, value in call.params.items():
        if not _NAME_RE.fullmatch(key):
            raise ValueError(f"render_action: parameter name {key!r} of {call.name} is not valid")
        for tag in RESERVED_TAGS:
            if tag in value:
                raise ValueError(
                    f"render_action: parameter {key!r} of {call.name} contains {tag!r}, "
                    "which the action format cannot carry"
                )
        lines += [f"{_PARAM_OPEN}{key}>", value, _PARAM_CLOSE]
    lines.append(_FUNCTION_CLOSE)
    text = "\n".join(lines)
    return f"{thought.rstrip()}\n{text}" if thought.strip() else text


def _strip_format_newlines(value: str) -> str:
    """Drop the one newline the format puts after `<parameter=...>` and before its close."""
    # Exactly one each: a value's own leading or trailing newlines (a file ending in
    # "\n") survive the round trip through render_action.
    return value.removeprefix("\n").removesuffix("\n")


def _snippet(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _Reject(Exception):
    """Internal: a parse failure with its kind; never leaves this module."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _parse_params(name: str, body: str) -> dict[str, str]:
    """The parameters in the body of `<function=name>...</function>`, in order."""
    params: dict[str, str] = {}
    pos = 0
    while True:
        while pos < len(body) and body[pos].isspace():
            pos += 1
        if pos == len(body):
            return params
        if not body.startswith(_PARAM_OPEN, pos):
            raise _Reject(
                "malformed",
                f"unexpected text inside <function={name}>: {_snippet(body[pos:])}; only "
                "<parameter=NAME>...</parameter> blocks may appear there",
            )
        name_end = body.find(">", pos)
        key = body[pos + len(_PARAM_OPEN) : name_end] if name_end >= 0 else ""
        if name_end < 0 or not _NAME_RE.fullmatch(key):
            raise _Reject(
                "malformed",
                f"malformed parameter tag in <function={name}>: {_snippet(body[pos : pos + 60])}; "
                "write <parameter=NAME> on its own line",
            )
        close = body.find(_PARAM_CLOSE, name_end)
        if close < 0:
            raise _Reject(
                "unclosed", f"<parameter={key}> in <function={name}> is not closed by </parameter>"
            )
        if key in params:
            raise _Reject(
                "duplicate_parameter", f"parameter `{key}` is given twice in <function={name}>"
            )
        params[key] = _strip_format_newlines(body[name_end + 1 : close])
        pos = close + len(_PARAM_CLOSE)


def _parse(text: str, tools: Sequence[ToolSpec]) -> tuple[str, ToolCall]:
    """(thought, call) for a well-formed turn; raises _Reject otherwise."""
    count = text.count(_FUNCTION_OPEN)
    if count == 0:
        raise _Reject("no_call", "your message contains no tool call")
    if count > 1:
        raise _Reject(
            "multiple_calls",
            f"your message contains {count} tool calls; make exactly one call per turn",
        )
    start = text.index(_FUNCTION_OPEN)
    thought = text[:start]
    wrapped = thought.rstrip().endswith(_WRAP_OPEN)
    if wrapped:
        thought = thought.rstrip().removesuffix(_WRAP_OPEN)
    name_end = text.find(">", start)
    name = text[start + len(_FUNCTION_OPEN) : name_end] if name_end >= 0 else ""
    if name_end < 0 or not _NAME_RE.fullmatch(name):
        raise _Reject(
            "malformed",
            f"malformed function tag {_snippet(text[start : start + 60])}; write "
            "<function=TOOL_NAME> on its own line",
        )
    close = text.find(_FUNCTION_CLOSE, name_end)
    if close < 0:
        raise _Reject("unclosed", f"<function={name}> is not closed by </function>")
    params = _parse_params(name, text[name_end + 1 : close])
    tail = text[close + len(_FUNCTION_CLOSE) :].strip()
    if wrapped:
        tail = tail.removeprefix(_WRAP_CLOSE).strip()
    if tail:
        raise _Reject(
            "trailing_text",
            f"text after </function>: {_snippet(tail)}; the tool call must end your message",
        )
    return thought.strip(), ToolCall(name, params)


def parse_action(text: str, tools: Sequence[ToolSpec] = DEFAULT_TOOLS) -> ParsedAction:
    """Find the one tool call at the end of a model turn and check it against tools.

    Returns the call (values with the format's leading and trailing newline removed)
    and the reasoning before it, or an error observation that says what was wrong and
    shows the expected format. Never raises for any text.
    """
    try:
        thought, call = _parse(text, tools)
    except _Reject as reject:
        message = f"{reject.message}.\n{format_reminder(tools)}"
        return ParsedAction(None, "", format_error_observation(message), reject.kind)
    problem = validate_call(call.name, call.params, tools)
    if problem:
        tool = tool_by_name(tools, call.name)
        help_text = (
            f"Parameters of `{tool.name}`:\n{describe_parameters(tool)}"
            if tool is not None
            else format_reminder(tools)
        )
        message = f"{problem}.\n{help_text}"
        return ParsedAction(None, thought, format_error_observation(message), "invalid_call")
    return ParsedAction(call, thought)
