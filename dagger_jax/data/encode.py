"""Turning a chat into token ids plus a loss mask that selects the assistant turns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import transformers

from dagger_jax.tokenizer import IM_END


def render_chat(
    tokenizer: transformers.PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
) -> str:
    """Render messages to text with the tokenizer's chat template."""
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):  # transformers 5 may wrap results; tokenize=False gives str today
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
    return text


def encode_chat(
    tokenizer: transformers.PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    end_of_turn: str = IM_END,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a conversation; returns (ids int32, loss mask bool) of equal length.

    The mask is true exactly on each assistant message's content tokens and the
    end_of_turn token that closes it: not on the `<|im_start|>assistant\\n` header,
    not on other roles, not on the newline after end_of_turn.

    The text is cut into pieces (context up to and including an assistant header,
    then content + end_of_turn) and each piece is tokenized on its own. A cut right
    after end_of_turn, a special token, never changes the tokens. The cut between the
    header and the content is the one place where tokenizing the whole text could
    merge across the cut (only for content that starts with whitespace ending in a
    newline); there the pieces are what we want: they are the tokens the model sees
    when it samples the content after a generation prompt.

    Raises ValueError if the chat template renders a conversation prefix differently
    from the start of the whole conversation (e.g. Qwen3's template, which drops
    thinking blocks from earlier turns), since the pieces would then not add up.
    """
    full = render_chat(tokenizer, messages)
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: i + 1])
        if not (full.startswith(through) and through.startswith(prompt) and len(prompt) >= cursor):
            raise ValueError(
                f"the chat template is not prefix-stable at message {i}: rendering the first "
                f"{i + 1} messages (or the generation prompt before message {i}) is not a "
                "prefix of rendering the whole conversation, so the loss mask cannot be derived"
            )
        end = through.rfind(end_of_turn, len(prompt))
        if end < 0:
            raise ValueError(
                f"assistant message {i} does not end with {end_of_turn!r} in the rendered chat"
            )
        end += len(end_of_turn)
        pieces.append((full[cursor : len(prompt)], False))
        pieces.append((full[len(prompt) : end], True))
        cursor = end
    pieces.append((full[cursor:], False))

    ids: list[int] = []
    mask: list[bool] = []
    for text, trainable in pieces:
        if not text:
            continue
        # add_special_tokens=False: the template already wrote every special token
        # (apply_chat_template tokenizes the same way).
        piece_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece_ids)
        mask.extend([trainable] * len(piece_ids))
    return np.asarray(ids, dtype=np.int32), np.asarray(mask, dtype=bool)
