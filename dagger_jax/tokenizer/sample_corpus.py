"""The built-in sample corpus: synthetic bug-fix agent chats to train on before DAgger runs.

Each conversation is a system prompt, a user issue about a small made-up Python
function with a bug (wrong operator, off-by-one range, strict comparison, index one
past the end), then assistant turns that call tools in the OpenHands / Qwen3-Coder
text format, each followed by a `tool` message with a plausible observation, and a
final `finish` call (which gets no observation: it ends the episode).
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass

from dagger_jax.tokenizer import IM_END, IM_START

Message = dict[str, str]

SYSTEM_PROMPT = (
    "You are a software engineering agent. The repository is at /workspace. Fix the issue "
    "the user describes by calling one tool per turn in the format "
    "<function=NAME>\n<parameter=PARAM>\nVALUE\n</parameter>\n</function>. Tools: execute_bash "
    "(command), str_replace_editor (command, path, old_str, new_str) and finish. Call finish "
    "once the tests pass."
)
_APPLY = {"+": operator.add, "*": operator.mul, "-": operator.sub}
_MODULES = ("mathutils", "calc", "stats", "helpers", "inventory", "billing", "geometry", "scores")


@dataclass(frozen=True)
class _Bug:
    """One injected bug: the code, the fix, and how the failing test reports it."""

    function: str
    source: str
    old_line: str
    new_line: str
    call: str
    expected: str
    error_lines: tuple[str, ...]
    summary: str
    issue: str
    explanation: str
    error_type: str = "AssertionError"


def _function(signature: str, doc: str, body: str) -> str:
    """Source of a one-function module."""
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return f'def {signature}:\n    """{doc}"""\n{indented}'


def _assert_lines(actual: object, expected: object, call: str) -> tuple[str, ...]:
    """The `E` lines pytest prints for a failed `assert call == expected`."""
    return (f"E       assert {actual} == {expected}", f"E        +  where {actual} = {call}")


def _operator_bug(rng: random.Random) -> _Bug:
    ops = {
        "+": ("sum", ("add_values", "total_of", "combine")),
        "*": ("product", ("multiply", "scale_by", "area_of")),
        "-": ("difference", ("subtract", "delta", "remaining")),
    }
    right = rng.choice(sorted(ops))
    wrong = rng.choice([op for op in sorted(ops) if op != right])
    desc, names = ops[right]
    fn = rng.choice(names)
    while True:  # 2 + 2 == 2 * 2 would hide the bug from the test
        a, b = rng.randint(2, 19), rng.randint(2, 19)
        expected, actual = _APPLY[right](a, b), _APPLY[wrong](a, b)
        if expected != actual:
            break
    call = f"{fn}({a}, {b})"
    return _Bug(
        function=fn,
        source=_function(f"{fn}(a, b)", f"Return the {desc} of a and b.", f"return a {wrong} b"),
        old_line=f"    return a {wrong} b",
        new_line=f"    return a {right} b",
        call=call,
        expected=str(expected),
        error_lines=_assert_lines(actual, expected, call),
        summary=f"assert {actual} == {expected}",
        issue=f"`{call}` returns {actual}, but it should return {expected}, the {desc} of a and b.",
        explanation=f"it applies `{wrong}` where the {desc} needs `{right}`",
    )


def _range_bug(rng: random.Random) -> _Bug:
    fn = rng.choice(("sum_to", "triangle_number", "running_total"))
    n = rng.randint(3, 30)
    expected, actual = n * (n + 1) // 2, n * (n - 1) // 2
    call = f"{fn}({n})"
    body = "total = 0\nfor i in range(1, n):\n    total += i\nreturn total"
    return _Bug(
        function=fn,
        source=_function(f"{fn}(n)", "Return the sum of the integers from 1 to n inclusive.", body),
        old_line="    for i in range(1, n):",
        new_line="    for i in range(1, n + 1):",
        call=call,
        expected=str(expected),
        error_lines=_assert_lines(actual, expected, call),
        summary=f"assert {actual} == {expected}",
        issue=f"`{call}` returns {actual} instead of {expected}; n itself is not counted.",
        explanation="`range(1, n)` stops before n, so n is never added",
    )


def _threshold_bug(rng: random.Random) -> _Bug:
    fn, var = rng.choice((("is_adult", "age"), ("has_quorum", "votes"), ("can_ship", "items")))
    k = rng.randint(2, 40)
    call = f"{fn}({k})"
    return _Bug(
        function=fn,
        source=_function(
            f"{fn}({var})", f"Return True when {var} is at least {k}.", f"return {var} > {k}"
        ),
        old_line=f"    return {var} > {k}",
        new_line=f"    return {var} >= {k}",
        call=call,
        expected="True",
        error_lines=("E       assert False == True", f"E        +  where False = {call}"),
        summary="assert False == True",
        issue=f"`{call}` returns False, but {var} == {k} should count as 'at least {k}'.",
        explanation=f"`>` excludes {var} == {k}, but the docstring says at least {k}",
    )


def _index_bug(rng: random.Random) -> _Bug:
    fn = rng.choice(("last_item", "newest_entry", "final_value"))
    items = [rng.randint(0, 99) for _ in range(rng.randint(2, 6))]
    call = f"{fn}({items})"
    return _Bug(
        function=fn,
        source=_function(
            f"{fn}(items)", "Return the last element of items.", "return items[len(items)]"
        ),
        old_line="    return items[len(items)]",
        new_line="    return items[len(items) - 1]",
        call=call,
        expected=str(items[-1]),
        # MODULE is filled in with the module name when the pytest output is rendered.
        error_lines=(
            "",
            "tests/test_MODULE.py:5: ",
            "_ " * 40,
            f"src/MODULE.py:3: in {fn}",
            "    return items[len(items)]",
            "E   IndexError: list index out of range",
        ),
        summary="IndexError: list index out of range",
        error_type="IndexError",
        issue=f"`{call}` raises IndexError instead of returning {items[-1]}.",
        explanation="`len(items)` is one past the last valid index",
    )


_BUG_MAKERS = (_operator_bug, _range_bug, _threshold_bug, _index_bug)


def tool_call(name: str, **params: str) -> str:
    """Render one tool call in the OpenHands / Qwen3-Coder text format."""
    lines = [f"<function={name}>"]
    for key, value in params.items():
        lines += [f"<parameter={key}>", value, "</parameter>"]
    lines.append("</function>")
    return "\n".join(lines)


def _numbered(source: str) -> str:
    """Format source as `cat -n` does (the str_replace_editor observation quotes it so)."""
    return "\n".join(f"{i:6d}\t{line}" for i, line in enumerate(source.splitlines(), start=1))


def _pytest_output(bug: _Bug, module: str, passed: bool, rng: random.Random) -> str:
    duration = f"in 0.{rng.randint(1, 9):02d}s"
    if passed:
        return f"{'.':<72} [100%]\n1 passed {duration}"
    test = f"tests/test_{module}.py"
    lines = [
        f"{'F':<72} [100%]",
        f"{' FAILURES ':=^80}",
        f"{f' test_{bug.function} ':_^80}",
        "",
        f"    def test_{bug.function}():",
        f">       assert {bug.call} == {bug.expected}",
        *(line.replace("MODULE", module) for line in bug.error_lines),
        "",
        f"{test}:5: {bug.error_type}",
        f"{' short test summary info ':=^80}",
        f"FAILED {test}::test_{bug.function} - {bug.summary}",
        f"1 failed {duration}",
    ]
    return "\n".join(lines)


def _conversation(rng: random.Random) -> list[Message]:
    bug = rng.choice(_BUG_MAKERS)(rng)
    module = rng.choice(_MODULES)
    src = f"/workspace/src/{module}.py"
    run_tests = f"cd /workspace && python -m pytest -q tests/test_{module}.py"
    test_source = f"from {module} import {bug.function}\n\n\ndef test_{bug.function}():\n"
    test_source += f"    assert {bug.call} == {bug.expected}\n"
    fixed = bug.source.replace(bug.old_line, bug.new_line)

    messages: list[Message] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"In src/{module}.py, {bug.issue} Please fix it."},
    ]

    def step(thought: str, action: str, observation: str | None) -> None:
        messages.append({"role": "assistant", "content": f"{thought}\n{action}"})
        if observation is not None:
            messages.append({"role": "tool", "content": observation})

    look = rng.choice(("I will look at the file.", f"Let me read `{bug.function}` first."))
    step(look, tool_call("execute_bash", command=f"cat {src}"), bug.source)
    if rng.random() < 0.4:
        read_test = tool_call("execute_bash", command=f"cat /workspace/tests/test_{module}.py")
        step("Let me see what the test expects.", read_test, test_source)
    if rng.random() < 0.6:
        failing = _pytest_output(bug, module, passed=False, rng=rng)
        run = tool_call("execute_bash", command=run_tests)
        step("I will run the test to reproduce the failure.", run, failing)
    edit = tool_call(
        "str_replace_editor",
        command="str_replace",
        path=src,
        old_str=bug.old_line,
        new_str=bug.new_line,
    )
    edited = (
        f"The file {src} has been edited. Here's the result of running `cat -n` on a snippet "
        f"of {src}:\n{_numbered(fixed)}\nReview the changes and make sure they are as expected."
    )
    step(f"The bug: {bug.explanation}. I will fix that line.", edit, edited)
    passing = _pytest_output(bug, module, passed=True, rng=rng)
    step("Now I will run the test again.", tool_call("execute_bash", command=run_tests), passing)
    step("The fix is in place and the test passes.", tool_call("finish"), None)
    return messages


def sample_conversations(num: int, seed: int) -> list[list[Message]]:
    """Return num synthetic bug-fix agent conversations, the same ones for the same seed.

    The first k conversations for a seed do not depend on num.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    rng = random.Random(seed)
    return [_conversation(rng) for _ in range(num)]


def render_chatml(messages: list[Message]) -> str:
    """Render messages as ChatML text, exactly as CHATML_TEMPLATE does."""
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


def sample_texts(num: int, seed: int) -> list[str]:
    """Return the sample conversations rendered as ChatML text, to train a tokenizer on."""
    return [render_chatml(messages) for messages in sample_conversations(num, seed)]
