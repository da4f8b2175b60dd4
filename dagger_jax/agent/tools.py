"""The agent's tools as data: names, descriptions and typed parameters.

A system prompt lists these specs and the action parser validates calls against
them. Nothing here executes anything: the sandbox layer (envs/) gives the tools
their effects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

ParamType = Literal["string", "integer", "array"]

# The format's own tags: a parameter value containing one of them cannot be rendered
# (or parsed back), since the parser cuts the call at the first closing tag.
RESERVED_TAGS: tuple[str, ...] = ("<function=", "</function>", "</parameter>")


@dataclass(frozen=True)
class ToolParameter:
    """One parameter of a tool: what it is called, its type and whether a call needs it."""

    name: str
    type: ParamType
    description: str
    required: bool = False
    enum: tuple[str, ...] = ()  # allowed values, for string parameters that select a mode


@dataclass(frozen=True)
class ToolSpec:
    """A tool the agent may call: the text a system prompt shows and the rules a parser checks."""

    name: str
    description: str
    parameters: tuple[ToolParameter, ...] = ()
    # For a tool whose `command` parameter picks a sub-command: the parameters each
    # sub-command needs on top of the always-required ones, as (command, names) pairs.
    required_by_command: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def parameter(self, name: str) -> ToolParameter | None:
        """The parameter called name, or None when the tool has none by that name."""
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        return None

    def required_for(self, command: str | None) -> tuple[str, ...]:
        """Names of the parameters a call needs, given the value of its `command` parameter."""
        names = [p.name for p in self.parameters if p.required]
        for sub_command, extra in self.required_by_command:
            if sub_command == command:
                names += [name for name in extra if name not in names]
        return tuple(names)

    def to_openai(self) -> dict[str, Any]:
        """This spec as an OpenAI-style function tool (for API teachers that take `tools=`)."""
        properties: dict[str, Any] = {}
        for p in self.parameters:
            schema: dict[str, Any] = {"type": p.type, "description": p.description}
            if p.enum:
                schema["enum"] = list(p.enum)
            if p.type == "array":
                schema["items"] = {"type": "integer"}
            properties[p.name] = schema
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {
                    "type": "object",
                    "properties": properties,
                    "required": [p.name for p in self.parameters if p.required],
                },
            },
        }


EXECUTE_BASH = ToolSpec(
    name="execute_bash",
    description=(
        "Run a bash command in the repository's sandbox and see its output and exit code. "
        "No network. Long output is truncated; commands that run too long are killed."
    ),
    parameters=(ToolParameter("command", "string", "The bash command to run.", required=True),),
)

EDITOR_COMMANDS: tuple[str, ...] = ("view", "create", "str_replace", "insert", "undo_edit")

STR_REPLACE_EDITOR = ToolSpec(
    name="str_replace_editor",
    description=(
        "View, create and edit files. `view` shows a file with line numbers (or lists a "
        "directory); `create` writes a new file; `str_replace` replaces old_str, which must "
        "occur exactly once, by new_str; `insert` puts new_str after line insert_line "
        "(0 = at the top); `undo_edit` reverts the last edit of path."
    ),
    parameters=(
        ToolParameter(
            "command", "string", "The editor command to run.", required=True, enum=EDITOR_COMMANDS
        ),
        ToolParameter("path", "string", "Absolute path of the file or directory.", required=True),
        ToolParameter("file_text", "string", "Content of the new file (for `create`)."),
        ToolParameter("old_str", "string", "The exact text to replace (for `str_replace`)."),
        ToolParameter(
            "new_str", "string", "Replacement text (`str_replace`) or text to insert (`insert`)."
        ),
        ToolParameter(
            "insert_line", "integer", "Line number after which to insert (for `insert`)."
        ),
        ToolParameter(
            "view_range",
            "array",
            "Lines to show, [start, end] counted from 1; end -1 means to the end (for `view`).",
        ),
    ),
    required_by_command=(
        ("create", ("file_text",)),
        ("str_replace", ("old_str",)),
        ("insert", ("insert_line", "new_str")),
    ),
)

FINISH = ToolSpec(
    name="finish",
    description="End the episode once the issue is fixed. Nothing runs after it.",
    parameters=(
        # OpenHands' finish takes an optional message; accepting it keeps models trained
        # on OpenHands trajectories (e.g. the Qwen3-Coder teacher) from a spurious error.
        ToolParameter("message", "string", "An optional summary of what was done."),
    ),
)

DEFAULT_TOOLS: tuple[ToolSpec, ...] = (EXECUTE_BASH, STR_REPLACE_EDITOR, FINISH)


def tool_by_name(tools: Iterable[ToolSpec], name: str) -> ToolSpec | None:
    """The spec called name among tools, or None."""
    for tool in tools:
        if tool.name == name:
            return tool
    return None
