"""Checking that a chat template renders conversations stably enough to encode them turn by turn.

Incremental encoding needs two things of a template: the generation prompt is a
prefix of the conversation once the assistant's reply is added (so the ids the model
was prompted with are the ids it is trained on), and adding a message never changes
the text up to the end of the last assistant turn (so an assistant turn's ids, kept
as generated, stay valid). Templates may rewrite what follows the last assistant turn:
Qwen's merges consecutive tool messages into one user block, so the closing of the
previous block moves. A template that satisfies even the strict prefix property
(render(messages[:k]) is a prefix of render(messages[:k+1])) is reported as such.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Message = Mapping[str, Any]
RenderFn = Callable[[Sequence[Message], bool], str]

# A small agent episode with what templates treat specially: a multi-line system
# prompt, leading spaces, two tool messages in a row, a user message after tool
# output, and an assistant turn at the very end.
PROBE_MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a probe.\nLine two."},
    {"role": "user", "content": "Fix the bug in\n  calc.py"},
    {
        "role": "assistant",
        "content": "Look first.\n<function=execute_bash>\n<parameter=command>\nls\n"
        "</parameter>\n</function>",
    },
    {"role": "tool", "content": "calc.py\ntests"},
    {"role": "assistant", "content": "Two calls."},
    {"role": "tool", "content": "first"},
    {"role": "tool", "content": "second\n"},
    {"role": "assistant", "content": "  spaced"},
    {"role": "user", "content": "Go on."},
    {"role": "assistant", "content": "Done.\n"},
)


class ChatTemplateError(ValueError):
    """A chat template that cannot be used to encode conversations incrementally."""


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix of a and b (in C-speed slices, not a char loop)."""
    if b.startswith(a):
        return len(a)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # invariant: a[:lo] == b[:lo] and the answer is at most hi
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def describe_difference(before: str, after: str, at: int, context: int = 40) -> str:
    """Where two renderings part, with a little text of each around that point."""
    start = max(0, at - context)
    return (
        f"first difference at character {at}: before {before[start : at + context]!r}, "
        f"after {after[start : at + context]!r}"
    )


def assistant_turn_end(
    render: RenderFn, history: Sequence[Message], reply: Message, end_of_turn: str, where: str
) -> tuple[str, str, int]:
    """(generation prompt, render with the reply, end of the reply's end_of_turn) for one turn.

    Raises ChatTemplateError when the generation prompt is not a prefix of the render
    with the reply, or when the template does not write the reply's content verbatim
    after it, followed by end_of_turn.
    """
    content = reply.get("content")
    if not isinstance(content, str):
        raise ChatTemplateError(f"{where}: an assistant message needs str content, not {content!r}")
    prompt = render(history, True)
    full = render([*history, reply], False)
    if not full.startswith(prompt):
        at = common_prefix_len(prompt, full)
        raise ChatTemplateError(
            f"{where}: the generation prompt is not a prefix of the conversation with the "
            f"assistant's reply added; {describe_difference(prompt, full, at)}"
        )
    if not full.startswith(content + end_of_turn, len(prompt)):
        raise ChatTemplateError(
            f"{where}: the template does not write the assistant content verbatim after the "
            f"generation prompt, followed by {end_of_turn!r}; it wrote "
            f"{full[len(prompt) : len(prompt) + len(content) + 40]!r} for {content!r}"
        )
    return prompt, full, len(prompt) + len(content) + len(end_of_turn)


def check_template(
    render: RenderFn,
    end_of_turn: str,
    source: str,
    probe: Sequence[Message] = PROBE_MESSAGES,
) -> bool:
    """Check the template behind render on the probe conversation; True if strictly prefix-stable.

    Raises ChatTemplateError, naming source (the tokenizer's path) and the message at
    which it failed, when the template fails to render a probe prefix or breaks one of
    the two properties in this module's docstring.
    """
    strict = True
    frozen = 0  # text up to here (the end of the last assistant turn) must never change
    previous = ""
    for k in range(1, len(probe) + 1):
        role = probe[k - 1]["role"]
        where = f"chat template of tokenizer {source}, probe message {k - 1} ({role})"
        try:
            if role == "assistant":
                _, current, current_frozen = assistant_turn_end(
                    render, probe[: k - 1], probe[k - 1], end_of_turn, where
                )
            else:
                current, current_frozen = render(probe[:k], False), frozen
        except ChatTemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - a template may raise anything from Jinja
            raise ChatTemplateError(f"{where}: rendering failed: {e}") from e
        at = common_prefix_len(previous, current)
        if at < len(previous):
            strict = False
        if at < frozen:
            raise ChatTemplateError(
                f"{where}: adding this message changes the text before the end of the last "
                f"assistant turn (character {frozen}), so that turn's token ids could not be "
                f"kept; {describe_difference(previous, current, at)}"
            )
        frozen, previous = current_frozen, current
    return strict
