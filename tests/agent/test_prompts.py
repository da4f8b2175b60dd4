"""System and task prompts: the tools, the call format, the repository path and how to finish."""

from __future__ import annotations

import pytest

from dagger_jax.agent import (
    DEFAULT_TOOLS,
    EXECUTE_BASH,
    initial_messages,
    parse_action,
    system_prompt,
    task_prompt,
)


def test_system_prompt_lists_every_tool_and_parameter() -> None:
    prompt = system_prompt()
    for tool in DEFAULT_TOOLS:
        assert f"## {tool.name}\n{tool.description}" in prompt
        for parameter in tool.parameters:
            assert f"- {parameter.name} (" in prompt
    assert (
        "<function=TOOL_NAME>\n<parameter=PARAMETER_NAME>\nvalue\n</parameter>\n</function>"
        in prompt
    )
    # The example the prompt gives is a turn the parser accepts.
    example = prompt.split("- Example:\n", 1)[1]
    assert parse_action(example).ok


def test_system_prompt_follows_the_tools_given() -> None:
    prompt = system_prompt([EXECUTE_BASH])
    assert "execute_bash" in prompt and "str_replace_editor" not in prompt
    with pytest.raises(ValueError, match="no tools given"):
        system_prompt([])


def test_task_prompt() -> None:
    prompt = task_prompt("`add(2, 3)` returns 6.\n")
    assert "/testbed" in prompt and "<issue>\n`add(2, 3)` returns 6.\n</issue>" in prompt
    assert "`finish`" in prompt
    assert "/work/repo" in task_prompt("bug", repo_path="/work/repo")
    with pytest.raises(ValueError, match="problem statement is empty"):
        task_prompt("  \n")


def test_initial_messages() -> None:
    messages = initial_messages("bug")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == system_prompt() and messages[1]["content"] == task_prompt(
        "bug"
    )


def test_compact_prompt_names_every_tool_and_the_call_format():
    from dagger_jax.agent.prompts import initial_messages
    from dagger_jax.agent.tools import DEFAULT_TOOLS
    full = initial_messages("`f` in `pkg/a.py` is wrong.")
    compact = initial_messages("`f` in `pkg/a.py` is wrong.", style="compact")
    for tool in DEFAULT_TOOLS:
        assert tool.name in compact[0]["content"]
        assert all(p.name in compact[0]["content"] for p in tool.parameters)
    assert "<function=" in compact[0]["content"] and "`pkg/a.py`" in compact[1]["content"]
    assert len(compact[0]["content"]) * 4 < len(full[0]["content"])
    with pytest.raises(ValueError, match="prompt style 'terse'"):
        initial_messages("x", style="terse")
