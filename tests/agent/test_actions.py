"""The action format: render/parse round trips, and an error observation for every bad turn."""

from __future__ import annotations

import random

import pytest

from dagger_jax.agent import (
    DEFAULT_TOOLS,
    EDITOR_COMMANDS,
    ParsedAction,
    ToolCall,
    parse_action,
    render_action,
    typed_arguments,
)

FORMAT_HINT = "<function=TOOL_NAME>\n<parameter=PARAMETER_NAME>\nvalue\n</parameter>\n</function>"

# fmt: off
VALUES = ("ls", "", "\n", "a\n", "\nleading", "  spaced  ", "日本語 🎉", "x = 1\n\ny = 2\n", "<b>",
          "line\r\nwindows", "\t", "}{", "<parameter", "</param>")
# fmt: on


def _call(text: str) -> ToolCall:
    parsed = parse_action(text)
    assert parsed.ok and parsed.error is None, parsed.error
    assert parsed.call is not None
    return parsed.call


def test_documented_example_parses() -> None:
    text = "<function=execute_bash>\n<parameter=command>\nls\n</parameter>\n</function>"
    assert _call(text) == ToolCall("execute_bash", {"command": "ls"})
    assert render_action(ToolCall("execute_bash", {"command": "ls"})) == text


def random_valid_call(rng: random.Random) -> ToolCall:
    tool = rng.choice(["execute_bash", "str_replace_editor", "finish"])
    value = lambda: "".join(rng.choice(VALUES) for _ in range(rng.randint(0, 3)))  # noqa: E731
    if tool == "execute_bash":
        return ToolCall(tool, {"command": value()})
    if tool == "finish":
        return ToolCall(tool, {"message": value()} if rng.random() < 0.5 else {})
    command = rng.choice(EDITOR_COMMANDS)
    params = {"command": command, "path": "/testbed/" + value().strip()}
    if command == "create":
        params["file_text"] = value()
    elif command == "str_replace":
        params |= {"old_str": value(), "new_str": value()}
    elif command == "insert":
        params |= {"insert_line": str(rng.randint(0, 99)), "new_str": value()}
    elif command == "view" and rng.random() < 0.5:
        params["view_range"] = rng.choice(["[1, 10]", "[3, -1]", "[5,5]"])
    return ToolCall(tool, params)


def test_render_parse_round_trip_over_random_calls() -> None:
    rng = random.Random(0)
    for _ in range(500):
        call = random_valid_call(rng)
        thought = rng.choice(["", "I will look.", "Multi\nline\n\nthought ✓"])
        text = render_action(call, thought)
        if rng.random() < 0.5:
            text += rng.choice([" ", "\n", "\n\n  \t"])  # whitespace after the call is fine
        parsed = parse_action(text)
        assert parsed.call == call, (text, parsed.error)
        assert parsed.thought == thought.strip()


def test_values_lose_exactly_one_newline_each_side() -> None:
    text = "<function=execute_bash>\n<parameter=command>\n\n  echo hi\n\n</parameter>\n</function>"
    assert _call(text).params == {"command": "\n  echo hi\n"}
    inline = "<function=execute_bash><parameter=command>ls -la</parameter></function>"
    assert _call(inline).params == {"command": "ls -la"}


def test_qwen3_coder_tool_call_wrapper_is_accepted() -> None:
    text = "Check.\n<tool_call>\n<function=finish>\n</function>\n</tool_call>\n"
    parsed = parse_action(text)
    assert parsed.call == ToolCall("finish") and parsed.thought == "Check."


def test_typed_arguments() -> None:
    call = _call(
        "<function=str_replace_editor>\n<parameter=command>\n view \n</parameter>\n"
        "<parameter=path>\n/testbed/a.py\n</parameter>\n"
        "<parameter=view_range>\n[2, -1]\n</parameter>\n</function>"
    )
    assert typed_arguments(call.name, call.params) == {
        "command": "view",
        "path": "/testbed/a.py",
        "view_range": (2, -1),
    }
    insert = ToolCall(
        "str_replace_editor",
        {"command": "insert", "path": "/a", "insert_line": "0", "new_str": "x"},
    )
    assert typed_arguments(insert.name, insert.params)["insert_line"] == 0
    with pytest.raises(ValueError, match="invalid call of `execute_bash`"):
        typed_arguments("execute_bash", {})


def _fn(name: str, **params: str) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<function={name}>\n{body}</function>"


EDIT = {"command": "str_replace", "path": "/testbed/a.py", "old_str": "a", "new_str": "b"}

BAD_TURNS = [
    ("no_call", "I think the bug is in foo.py.", "contains no tool call"),
    ("no_call", "", "contains no tool call"),
    ("multiple_calls", _fn("execute_bash", command="ls") + _fn("finish"), "2 tool calls"),
    ("invalid_call", _fn("run_python", code="1"), "unknown tool `run_python`"),
    ("invalid_call", _fn("execute_bash", cmd="ls"), "no parameter `cmd`"),
    ("invalid_call", _fn("execute_bash"), "needs the parameter(s) `command`"),
    (
        "invalid_call",
        _fn("str_replace_editor", command="create", path="/a"),
        "with command=create needs the parameter(s) `file_text`",
    ),
    (
        "invalid_call",
        _fn("str_replace_editor", command="delete", path="/a"),
        "must be one of: view, create",
    ),
    (
        "invalid_call",
        _fn("str_replace_editor", command="insert", path="/a", insert_line="two", new_str="x"),
        "`insert_line` of `str_replace_editor` must be an integer",
    ),
    (
        "invalid_call",
        _fn("str_replace_editor", command="insert", path="/a", insert_line="-1", new_str="x"),
        "must be >= 0",
    ),
    (
        "invalid_call",
        _fn("str_replace_editor", command="view", path="/a", view_range="1-5"),
        "two integers [start, end]",
    ),
    (
        "invalid_call",
        _fn("str_replace_editor", command="view", path="/a", view_range="[0, 5]"),
        "start >= 1",
    ),
    (
        "invalid_call",
        _fn("str_replace_editor", command="view", path="/a", view_range="[5, 2]"),
        "view_range",
    ),
    (
        "invalid_call",
        _fn("str_replace_editor", command="view", path="/a", view_range="[1, 2, 3]"),
        "view_range",
    ),
    (
        "invalid_call",
        _fn("str_replace_editor", command="view", path="/a", view_range="[true, 2]"),
        "view_range",
    ),
    (
        "unclosed",
        "<function=execute_bash>\n<parameter=command>\nls\n</parameter>\n",
        "not closed by </function>",
    ),
    (
        "unclosed",
        "<function=execute_bash>\n<parameter=command>\nls\n</function>",
        "<parameter=command> in <function=execute_bash> is not closed",
    ),
    ("malformed", "<function=execute bash>\n</function>", "malformed function tag"),
    (
        "malformed",
        "<function=execute_bash\n<parameter=command>\nls\n</parameter>\n</function>",
        "malformed function tag",
    ),
    ("malformed", "<function=execute_bash>\ncommand: ls\n</function>", "unexpected text inside"),
    (
        "malformed",
        "<function=execute_bash>\n<parameter=>\nls\n</parameter>\n</function>",
        "malformed parameter tag",
    ),
    (
        "trailing_text",
        _fn("execute_bash", command="ls") + "\nThen I will run the tests.",
        "text after </function>",
    ),
    (
        "duplicate_parameter",
        "<function=execute_bash>\n<parameter=command>\nls\n</parameter>\n"
        "<parameter=command>\npwd\n</parameter>\n</function>",
        "`command` is given twice",
    ),
]


@pytest.mark.parametrize(("kind", "text", "says"), BAD_TURNS)
def test_bad_turns_give_an_error_observation(kind: str, text: str, says: str) -> None:
    parsed = parse_action(text)
    assert not parsed.ok and parsed.call is None
    assert parsed.error_kind == kind
    assert parsed.error is not None and parsed.error.startswith("ERROR: ")
    assert says in parsed.error
    # The agent is shown how to do it right: the format, or the tool's parameters.
    assert FORMAT_HINT in parsed.error or "Parameters of `" in parsed.error


def test_edit_call_is_valid_as_control() -> None:
    assert _call(_fn("str_replace_editor", **EDIT)).params == EDIT


def test_parser_never_raises_on_random_text() -> None:
    rng = random.Random(1)
    # fmt: off
    pieces = ["<function=", "execute_bash", "finish", "str_replace_editor", ">", "</function>",
              "<parameter=", "command", "path", "</parameter>", "\n", " ", "ls", "[1, 2]", "x",
              "<tool_call>", "</tool_call>", "<", "=", "日"]
    # fmt: on
    outcomes = set()
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        if rng.random() < 0.5:  # a valid call with a random slice cut out, or junk before it
            valid = render_action(random_valid_call(rng))
            start = rng.randrange(len(valid))
            cut = valid[:start] + valid[start + rng.randint(0, 12) :]
            text = rng.choice([cut, text.replace("<function=", "") + "\n" + valid])
        parsed = parse_action(text)
        assert isinstance(parsed, ParsedAction)
        assert (parsed.call is None) != (parsed.error is None)
        outcomes.add(parsed.error_kind)
    assert {None, "no_call", "multiple_calls", "malformed", "unclosed"} <= outcomes


def test_render_refuses_what_the_format_cannot_carry() -> None:
    with pytest.raises(
        ValueError, match="'file_text' of str_replace_editor contains '</parameter>'"
    ):
        render_action(
            ToolCall(
                "str_replace_editor",
                {"command": "create", "path": "/a", "file_text": "x</parameter>y"},
            )
        )
    with pytest.raises(ValueError, match="tool name 'bad name'"):
        render_action(ToolCall("bad name"))


def test_tool_call_params_are_a_private_copy() -> None:
    params = {"command": "ls"}
    call = ToolCall("execute_bash", params)
    params["command"] = "rm -rf /"
    assert call.params == {"command": "ls"}


def test_specs_cover_the_issue_tools() -> None:
    names = {tool.name: tool for tool in DEFAULT_TOOLS}
    assert set(names) == {"execute_bash", "str_replace_editor", "finish"}
    editor = names["str_replace_editor"].to_openai()["function"]
    assert set(editor["parameters"]["properties"]) == {
        "command",
        "path",
        "file_text",
        "old_str",
        "new_str",
        "insert_line",
        "view_range",
    }
    assert editor["parameters"]["required"] == ["command", "path"]
    assert editor["parameters"]["properties"]["command"]["enum"] == list(EDITOR_COMMANDS)
    assert names["str_replace_editor"].required_for("insert") == (
        "command",
        "path",
        "insert_line",
        "new_str",
    )
    assert names["execute_bash"].to_openai()["function"]["parameters"]["required"] == ["command"]


def test_error_observation_is_the_error_once_and_capped() -> None:
    parsed = parse_action("I am not sure what to do.")
    assert parsed.error_observation() == parsed.error
    assert parsed.error_observation().count("ERROR:") == 1
    long = parse_action("I am not sure. " * 40 + "<function=finish>\n<parameter=x>\n")
    capped = long.error_observation(200)
    assert len(long.error) > 200 >= len(capped) and capped.startswith("ERROR: ")
    with pytest.raises(ValueError, match="has no error"):
        parse_action(_fn("finish")).error_observation()
