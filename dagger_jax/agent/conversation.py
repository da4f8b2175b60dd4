"""Incremental encoding of one conversation: its token ids and loss mask, message by message.

Appending a message renders the whole conversation with the tokenizer's template
(cheap next to a model call) but tokenizes only what changed, so an episode costs
O(total tokens) of tokenization and its ids equal those of tokenizing the full render.

The bookkeeping that makes this exact is a list of cut points (anchors): places in
the rendered text where the ids so far end and tokenizing may start afresh, namely
the edges of added tokens such as <|im_start|> and <|im_end|>, at which the tokenizer
always cuts. When a new render merely extends the old one, the new text is tokenized
from the last anchor (usually the very end). When the template rewrites the tail of
the conversation instead (Qwen's template merges consecutive tool messages into one
user block, so the previous block's closing moves), the encoder finds where the two
renders part and re-tokenizes from the last anchor before that point. Text up to the
end of the last assistant turn may never change: those ids may be ones a model
generated, and they are kept as given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dagger_jax.agent.text import well_formed
from dagger_jax.agent.template_check import (
    ChatTemplateError,
    Message,
    assistant_turn_end,
    common_prefix_len,
    describe_difference,
)

if TYPE_CHECKING:
    from dagger_jax.agent.chat_tokenizer import ChatTokenizer


@dataclass(frozen=True)
class _Anchor:
    """A cut point: text[:char] is encoded by ids[:tok], and tokenizing may restart there."""

    char: int
    tok: int
    witness_end: int  # the cut stays safe while text[:witness_end] is unchanged


@dataclass(frozen=True)
class _Prompt:
    """The generation prompt for the current messages: its text and its ids after `restart`."""

    num_messages: int
    text: str
    restart: _Anchor
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]


class ConversationEncoder:
    """Keeps one conversation's token ids and loss mask as messages are appended.

    The mask is true on each assistant turn's content tokens and the end-of-turn token
    that closes it, false on its header and on every other message. Messages given as
    text (append) get exactly the ids of tokenizing the full render (apply_chat_template);
    turns given as generated ids (append_generated) keep those ids as they are.
    """

    def __init__(self, chat: ChatTokenizer, messages: Iterable[Message] = ()) -> None:
        self._chat = chat
        self._messages: list[dict] = []
        self._text = ""
        self._ids: list[int] = []
        self._mask: list[bool] = []
        self._anchors: list[_Anchor] = [_Anchor(0, 0, 0)]
        self._frozen = 0  # end of the last assistant turn in the text
        self._spans: list[tuple[int, int]] = []
        self._prompt: _Prompt | None = None
        self.extend(messages)

    # --- read-only views ---------------------------------------------------------

    @property
    def messages(self) -> tuple[dict, ...]:
        """The messages so far (generated turns as their decoded text)."""
        return tuple(self._messages)

    @property
    def text(self) -> str:
        """The template's render of the messages so far."""
        return self._text

    @property
    def ids(self) -> list[int]:
        """The conversation's token ids (a copy)."""
        return list(self._ids)

    @property
    def loss_mask(self) -> list[bool]:
        """True on assistant content and end-of-turn tokens (a copy)."""
        return list(self._mask)

    @property
    def assistant_spans(self) -> list[tuple[int, int]]:
        """(start, end) token indices of each assistant turn's masked tokens, in order."""
        return list(self._spans)

    def __len__(self) -> int:
        return len(self._ids)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids as int32, loss mask as bool) numpy arrays of equal length."""
        return np.asarray(self._ids, dtype=np.int32), np.asarray(self._mask, dtype=bool)

    # --- appending ---------------------------------------------------------------

    def append(self, message: Message) -> None:
        """Add a message given as text; only the changed tail of the render is tokenized.

        When the new render extends the old one, only the added text is tokenized. When
        it is not (the template rewrote the tail, e.g. merged this tool message into the
        previous tool block), the ids are cut back to the last stable point (the edge of
        an added token) before the first changed character and re-tokenized from there.
        Either way the ids equal those of tokenizing the whole render.

        Raises ChatTemplateError if the template changes text before the end of the
        last assistant turn, or (for an assistant message) does not render the
        generation prompt followed by the content verbatim and the end-of-turn token.
        """
        message = dict(message)
        if isinstance(message.get("content"), str):  # a tool's output may hold any text
            message["content"] = well_formed(message["content"])
        where = self._where(f"message {len(self._messages)} ({message.get('role')})")
        history = self._messages
        span = None
        if message.get("role") == "assistant":
            prompt, new_text, turn_end = assistant_turn_end(
                self._render, history, message, self._chat.end_of_turn, where
            )
            span = (len(prompt), turn_end)
        else:
            new_text = self._render([*history, message], False)
        restart = self._restart(new_text, where)
        if span is not None and restart.char > span[0]:
            raise ChatTemplateError(
                f"{where}: no cut point before the assistant content at character {span[0]}"
            )
        ids, offsets = self._chat.encode_with_offsets(new_text[restart.char :])
        base = restart.char
        # A token straddling the header/content cut (content starting with newlines can
        # merge with the header's) counts as assistant: it carries content characters.
        mask = [span is not None and base + s < span[1] and base + e > span[0] for s, e in offsets]
        self._commit(
            restart, new_text, ids, mask, self._anchors_of(ids, offsets, base, restart.tok)
        )
        self._messages.append(message)
        if span is not None:
            self._frozen = span[1]
            first = restart.tok + mask.index(True)
            self._spans.append((first, restart.tok + len(mask) - mask[::-1].index(True)))

    def extend(self, messages: Iterable[Message]) -> None:
        """append each of messages in turn."""
        for message in messages:
            self.append(message)

    def generation_prompt_ids(self) -> list[int]:
        """The ids to sample the next assistant turn from: the conversation and the reply header.

        These are the ids of tokenizing render(messages, add_generation_prompt=True).
        """
        prompt = self._prompt_state()
        return [*self._ids[: prompt.restart.tok], *prompt.ids]

    def append_generated(self, ids: Sequence[int]) -> str:
        """Add an assistant turn the model generated from generation_prompt_ids(); returns its text.

        The ids are kept exactly as given, never re-tokenized. They should end with the
        end-of-turn token; a turn cut short (no end-of-turn, e.g. at a token limit) is
        closed with one so the conversation stays well formed. What the template
        writes after the end-of-turn (ChatML: a newline) is appended unmasked.
        Raises ValueError for ids out of the vocabulary or with an end-of-turn token
        before their end, and ChatTemplateError if the template would not render the
        decoded text verbatim.
        """
        where = self._where(f"generated assistant message {len(self._messages)}")
        vocab = len(self._chat.tokenizer)
        generated = [int(i) for i in ids]
        bad = [i for i in generated if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"{where}: token ids {bad[:5]} are outside the vocabulary of {vocab}")
        eot = self._chat.end_of_turn_id
        if eot in generated[:-1]:
            raise ValueError(
                f"{where}: end-of-turn id {eot} at position {generated.index(eot)} before the "
                f"end of the {len(generated)} ids; append one turn at a time"
            )
        content_ids = generated[:-1] if generated and generated[-1] == eot else generated
        content = self._chat.decode(content_ids)
        message = {"role": "assistant", "content": content}
        prompt = self._prompt_state()
        prompt_text, new_text, turn_end = assistant_turn_end(
            self._render, self._messages, message, self._chat.end_of_turn, where
        )
        if prompt_text != prompt.text:
            raise ChatTemplateError(f"{where}: the template renders the same prompt differently")
        suffix_ids, suffix_offsets = self._chat.encode_with_offsets(new_text[turn_end:])
        restart = prompt.restart
        turn_start = restart.tok + len(prompt.ids)
        after_turn = turn_start + len(content_ids) + 1
        anchors = [
            *self._anchors_of(prompt.ids, prompt.offsets, restart.char, restart.tok),
            _Anchor(turn_end, after_turn, turn_end),  # right after the end-of-turn token
            *self._anchors_of(suffix_ids, suffix_offsets, turn_end, after_turn),
        ]
        ids_tail = [*prompt.ids, *content_ids, eot, *suffix_ids]
        mask_tail = (
            [False] * len(prompt.ids) + [True] * (len(content_ids) + 1) + [False] * len(suffix_ids)
        )
        self._commit(restart, new_text, ids_tail, mask_tail, anchors)
        self._messages.append(message)
        self._frozen = turn_end
        self._spans.append((turn_start, after_turn))
        return content

    # --- internals -----------------------------------------------------------------

    def _where(self, what: str) -> str:
        return f"conversation encoder for tokenizer {self._chat.source}, {what}"

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        # An empty conversation renders as nothing: templates that index messages[0]
        # would fail on it (transformers refuses it too), and nothing is encoded yet.
        if not messages:
            if add_generation_prompt:
                raise ValueError(
                    self._where(
                        "an assistant turn cannot start the conversation: there is "
                        "nothing to prompt it with; add a system or user message first"
                    )
                )
            return ""
        return self._chat.render(messages, add_generation_prompt=add_generation_prompt)

    def _prompt_state(self) -> _Prompt:
        """The generation prompt for the current messages, computed once per state."""
        if self._prompt is None or self._prompt.num_messages != len(self._messages):
            text = self._render(self._messages, True)
            restart = self._restart(text, self._where("the generation prompt"))
            ids, offsets = self._chat.encode_with_offsets(text[restart.char :])
            self._prompt = _Prompt(len(self._messages), text, restart, tuple(ids), tuple(offsets))
        return self._prompt

    def _restart(self, new_text: str, where: str) -> _Anchor:
        """The last cut point from which tokenizing new_text reproduces its full tokenization."""
        at = common_prefix_len(self._text, new_text)
        if at < self._frozen:
            raise ChatTemplateError(
                f"{where}: the new render changes the text before the end of the last assistant "
                f"turn (character {self._frozen}); {describe_difference(self._text, new_text, at)}"
            )
        if at == len(self._text) and any(
            new_text.startswith(token, at) for token in self._chat.boundary_tokens
        ):
            return _Anchor(at, len(self._ids), at)  # the new text starts with an added token
        for anchor in reversed(self._anchors):  # sorted by char: the first valid one is last
            if anchor.witness_end <= at:
                return anchor
        raise AssertionError("the anchor at character 0 is always valid")

    def _anchors_of(
        self, ids: Sequence[int], offsets: Sequence[tuple[int, int]], char: int, tok: int
    ) -> list[_Anchor]:
        """Cut points on both sides of each added token among ids (text from char, ids from tok)."""
        anchors = []
        for i, (token_id, (start, end)) in enumerate(zip(ids, offsets, strict=True)):
            if token_id in self._chat.boundary_ids:
                anchors.append(_Anchor(char + start, tok + i, char + end))
                anchors.append(_Anchor(char + end, tok + i + 1, char + end))
        return anchors

    def _commit(
        self,
        restart: _Anchor,
        new_text: str,
        ids: Sequence[int],
        mask: Sequence[bool],
        anchors: Sequence[_Anchor],
    ) -> None:
        """Replace everything after restart by ids, mask and anchors for new_text."""
        self._ids[restart.tok :] = ids
        self._mask[restart.tok :] = mask
        kept = [a for a in self._anchors if a.witness_end <= restart.char]
        self._anchors = [*kept, *anchors]
        self._text = new_text
        self._prompt = None
