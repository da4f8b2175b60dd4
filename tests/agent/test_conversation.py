"""ConversationEncoder against full renders: same ids as apply_chat_template, right loss mask."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dagger_jax.agent import ChatTemplateError, ChatTokenizer, ConversationEncoder
from dagger_jax.tokenizer import IM_END, IM_START, load_tokenizer
from tests.agent.conftest import QWEN_STYLE_TEMPLATE

NUM_CONVERSATIONS = 120

# Fragments random contents are made of: unicode, runs of newlines and spaces, code,
# the action format's tags, and (rarely) the special-token strings themselves.
# fmt: off
FRAGMENTS = (
    "a", "Zz", "fix", "0", "42", " ", "  ", "\t", "\n", "\n\n", "\n  ", " \n", "é", "日本語",
    "🎉", "👩‍👩‍👧", "\u200b", "e\u0301", "<", ">", "/", "=", "|", "'s",
    "def f(x):\n    return x + 1\n", "<function=execute_bash>", "</parameter>\n",
    "$ pytest -q\n1 passed", "[100%]",
)
# fmt: on
SPECIALS = (IM_START, IM_END)
WHITESPACE_ONLY = ("", " ", "\n", "\n\n", "  \t\n ", "\n ")


def random_content(rng: random.Random, *, specials: bool = True) -> str:
    if rng.random() < 0.15:
        return rng.choice(WHITESPACE_ONLY)
    parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 8))]
    if specials and rng.random() < 0.05:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(SPECIALS))
    return "".join(parts)


def random_roles(rng: random.Random) -> list[str]:
    roles = ["system"] if rng.random() < 0.7 else []
    roles.append("user")
    for _ in range(rng.randint(0, 10)):
        if roles[-1] in ("assistant", "tool") and rng.random() < 0.6:
            roles.append("tool")  # runs of tool messages: what Qwen's template merges
        else:
            roles.append(rng.choice(("assistant", "assistant", "user", "tool")))
    return roles


def random_conversation(rng: random.Random, *, specials: bool = True) -> list[dict[str, str]]:
    return [
        {"role": role, "content": random_content(rng, specials=specials)}
        for role in random_roles(rng)
    ]


def full_ids(
    chat: ChatTokenizer, messages: list[dict[str, str]], *, prompt: bool = False
) -> list[int]:
    """The reference: tokenize the whole render in one go, as transformers does."""
    if not messages and not prompt:
        return []
    encoded = chat.tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=prompt
    )
    # transformers 5 returns a BatchEncoding here; older versions a plain list.
    return list(encoded if isinstance(encoded, list) else encoded["input_ids"])


def reference_text_and_char_mask(
    messages: list[dict[str, str]], style: str
) -> tuple[str, list[bool]]:
    """Render messages by hand in a fixture's style and mark assistant content + <|im_end|>."""
    pieces: list[tuple[str, bool]] = []
    if style == "qwen" and (not messages or messages[0]["role"] != "system"):
        pieces.append((f"{IM_START}system\nYou are a helpful assistant.{IM_END}\n", False))
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "assistant":
            pieces += [(f"{IM_START}assistant\n", False), (content + IM_END, True)]
            pieces.append(("" if style == "plain" else "\n", False))
        elif style == "plain":
            pieces.append((content, False))
        elif style == "qwen" and role == "tool":
            first = i == 0 or messages[i - 1]["role"] != "tool"
            last = i == len(messages) - 1 or messages[i + 1]["role"] != "tool"
            text = (
                f"{IM_START}user" if first else ""
            ) + f"\n<tool_response>\n{content}\n</tool_response>"
            pieces.append((text + (f"{IM_END}\n" if last else ""), False))
        else:
            pieces.append((f"{IM_START}{role}\n{content}{IM_END}\n", False))
    text = "".join(t for t, _ in pieces)
    return text, [masked for t, masked in pieces for _ in t]


def reference_mask(chat: ChatTokenizer, messages: list[dict[str, str]], style: str) -> list[bool]:
    text, char_mask = reference_text_and_char_mask(messages, style)
    assert text == chat.render(messages)  # the hand render is the template's
    _, offsets = chat.encode_with_offsets(text)
    return [any(char_mask[s:e]) for s, e in offsets]


CASES = ["chatml", "qwen_style", "qwen_style_tagged", "plain_concat"]
STYLES = {
    "chatml": "chatml",
    "qwen_style": "qwen",
    "qwen_style_tagged": "qwen",
    "plain_concat": "plain",
}


@pytest.mark.parametrize("case", CASES)
def test_incremental_ids_and_mask_equal_full_render(
    case: str, request: pytest.FixtureRequest
) -> None:
    chat: ChatTokenizer = request.getfixturevalue(case)
    rng = random.Random(f"ids-{case}")
    rewritten_tails = 0
    for _ in range(NUM_CONVERSATIONS):
        messages = random_conversation(rng)
        encoder = chat.conversation()
        previous: list[int] = []
        for k, message in enumerate(messages, start=1):
            if k > 1 and rng.random() < 0.3:
                assert encoder.generation_prompt_ids() == full_ids(
                    chat, messages[: k - 1], prompt=True
                )
            encoder.append(message)
            expected = full_ids(chat, messages[:k])
            assert encoder.ids == expected, (case, messages[:k])
            # Counts appends whose cut is not at the end of the old text: merged tool
            # blocks (Qwen style), tokens merging across the cut (plain concatenation).
            rewritten_tails += expected[: len(previous)] != previous
            previous = expected
        assert encoder.loss_mask == reference_mask(chat, messages, STYLES[case])
        assert encoder.text == chat.render(messages)
        assert encoder.generation_prompt_ids() == full_ids(chat, messages, prompt=True)
        ids, mask = encoder.arrays()
        assert (
            ids.dtype.name == "int32"
            and mask.dtype == bool
            and len(ids) == len(mask) == len(encoder)
        )
    # ChatML only ever extends; the others really exercised re-tokenized tails.
    assert (rewritten_tails == 0) if case == "chatml" else (rewritten_tails > 20), rewritten_tails


def test_chatml_is_strict_and_qwen_style_is_not(
    chatml: ChatTokenizer, qwen_style: ChatTokenizer
) -> None:
    assert chatml.strictly_prefix_stable
    assert not qwen_style.strictly_prefix_stable


def test_mask_covers_assistant_content_and_end_of_turn_only(chatml: ChatTokenizer) -> None:
    encoder = chatml.conversation(
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "do it"},
            {"role": "assistant", "content": "done"},
            {"role": "tool", "content": "ok"},
        ]
    )
    ids, mask = encoder.ids, encoder.loss_mask
    masked = [i for i, m in zip(ids, mask, strict=True) if m]
    assert masked == [*chatml.encode("done"), chatml.end_of_turn_id]
    ((start, end),) = encoder.assistant_spans
    assert ids[start:end] == masked
    assert chatml.decode(ids[start - 3 : start]) == f"{IM_START}assistant\n"  # header unmasked
    assert chatml.decode(ids[end : end + 1]) == "\n"


def _per_character_ids(chat: ChatTokenizer, content: str) -> list[int]:
    """A valid but non-canonical tokenization: each character on its own."""
    return [i for ch in content for i in chat.encode(ch)]


@pytest.mark.parametrize("case", CASES)
def test_generated_turns_keep_their_ids(case: str, request: pytest.FixtureRequest) -> None:
    chat: ChatTokenizer = request.getfixturevalue(case)
    eot = chat.end_of_turn_id
    rng = random.Random(f"generated-{case}")
    for _ in range(60):
        messages = random_conversation(rng, specials=False)
        encoder = chat.conversation()
        last_turn: tuple[int, int] | None = None  # (end token, end char) of the last generated turn
        for message in messages:
            if message["role"] != "assistant" or rng.random() < 0.3:
                encoder.append(message)
                continue
            prompt = encoder.generation_prompt_ids()
            mask_before = encoder.loss_mask
            style = rng.choice(("canonical", "per_character", "truncated"))
            content = message["content"]
            if style == "canonical":
                generated = chat.assistant_turn_ids(content)
            elif style == "per_character":
                generated = [*_per_character_ids(chat, content), eot]
            else:
                generated = chat.encode(content)  # hit the token limit: no end-of-turn
            assert encoder.append_generated(generated) == content
            closed = generated if style != "truncated" else [*generated, eot]
            ids, mask = encoder.ids, encoder.loss_mask
            assert ids[: len(prompt)] == prompt  # the model's prompt is the training context
            assert ids[len(prompt) : len(prompt) + len(closed)] == closed  # kept as given
            end = len(prompt) + len(closed)
            assert sum(mask[: len(prompt)]) == sum(mask_before)  # the header adds no loss
            assert all(mask[len(prompt) : end]) and not mask[len(prompt) - 1]
            assert not any(mask[end:])  # what the template writes after the turn
            assert encoder.assistant_spans[-1] == (len(prompt), len(prompt) + len(closed))
            end_char = len(chat.render(encoder.messages[:-1], add_generation_prompt=True))
            last_turn = (len(prompt) + len(closed), end_char + len(content) + len(IM_END))
        assert chat.decode(encoder.ids) == chat.render(encoder.messages)
        if last_turn is not None:
            # Everything after the last generated turn is the tokenization of its text.
            end_tok, end_char = last_turn
            assert encoder.ids[end_tok:] == chat.encode(encoder.text[end_char:])
            text, char_mask = reference_text_and_char_mask(list(encoder.messages), STYLES[case])
            _, offsets = chat.encode_with_offsets(text[end_char:])
            tail_mask = [any(char_mask[end_char + s : end_char + e]) for s, e in offsets]
            assert encoder.loss_mask[end_tok:] == tail_mask


def test_canonical_generation_equals_text_append(chatml: ChatTokenizer) -> None:
    history = [{"role": "user", "content": "hi"}]
    reply = "Let me look.\n<function=finish>\n</function>"
    by_text = chatml.conversation([*history, {"role": "assistant", "content": reply}])
    by_ids = chatml.conversation(history)
    by_ids.append_generated(chatml.assistant_turn_ids(reply))
    assert by_ids.ids == by_text.ids and by_ids.loss_mask == by_text.loss_mask
    assert by_ids.messages == by_text.messages


def test_generated_ids_errors(chatml: ChatTokenizer) -> None:
    encoder = chatml.conversation([{"role": "user", "content": "hi"}])
    before = encoder.ids
    eot = chatml.end_of_turn_id
    with pytest.raises(ValueError, match=f"end-of-turn id {eot} at position 1"):
        encoder.append_generated([5, eot, 6, eot])
    with pytest.raises(ValueError, match="outside the vocabulary of 512"):
        encoder.append_generated([5, 512, eot])
    assert encoder.ids == before and len(encoder.messages) == 1  # nothing half-appended


def test_template_changing_history_at_runtime_is_refused(chatml_dir: Path) -> None:
    # Stable on the short probe, but renders differently once a conversation is long.
    tokenizer = load_tokenizer(chatml_dir)
    tokenizer.chat_template = (
        "{%- if messages|length > 12 %}{{- 'LONG ' }}{%- endif %}" + tokenizer.chat_template
    )
    chat = ChatTokenizer(tokenizer)
    encoder = chat.conversation()
    for i in range(12):
        encoder.append({"role": "assistant" if i % 2 else "user", "content": f"m{i}"})
    with pytest.raises(
        ChatTemplateError, match=r"message 12 \(user\).*first difference at character 0"
    ):
        encoder.append({"role": "user", "content": "one too many"})


def test_qwen_style_merges_consecutive_tool_messages(qwen_style: ChatTokenizer) -> None:
    encoder: ConversationEncoder = qwen_style.conversation(
        [{"role": "user", "content": "go"}, {"role": "assistant", "content": "ok"}]
    )
    encoder.append({"role": "tool", "content": "A"})
    encoder.append({"role": "tool", "content": "B"})
    assert encoder.text.endswith(
        f"{IM_START}user\n<tool_response>\nA\n</tool_response>\n<tool_response>\nB\n</tool_response>{IM_END}\n"
    )
    assert qwen_style.tokenizer.chat_template == QWEN_STYLE_TEMPLATE
    assert encoder.ids == full_ids(qwen_style, list(encoder.messages))
