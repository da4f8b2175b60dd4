"""A tokenizer and its own chat template, checked once for turn-by-turn encoding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import transformers

from dagger_jax.agent.conversation import ConversationEncoder
from dagger_jax.agent.text import well_formed
from dagger_jax.agent.template_check import (
    PROBE_MESSAGES,
    ChatTemplateError,
    Message,
    check_template,
)
from dagger_jax.tokenizer import IM_END, load_tokenizer


class ChatTokenizer:
    """Renders chats with a tokenizer's own template and tokenizes them with exact offsets.

    Construction checks the template on a probe conversation (see template_check) and
    raises ChatTemplateError, naming the tokenizer, if it cannot be encoded turn by
    turn. `strictly_prefix_stable` tells whether every rendered prefix of the probe was
    a prefix of the next render (ChatML: yes; Qwen's tool-merging template: no).

    end_of_turn is the token that closes an assistant turn (<|im_end|> for ChatML and
    Qwen); it must be an added token of the tokenizer. template_kwargs go to every
    apply_chat_template call (e.g. {"enable_thinking": False} for Qwen3).
    """

    def __init__(
        self,
        tokenizer: transformers.PreTrainedTokenizerBase,
        *,
        end_of_turn: str = IM_END,
        source: str | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        probe: Sequence[Message] = PROBE_MESSAGES,
    ) -> None:
        self.tokenizer = tokenizer
        self.source = source or getattr(tokenizer, "name_or_path", "") or "<unnamed tokenizer>"
        self.end_of_turn = end_of_turn
        self.template_kwargs = dict(template_kwargs or {})
        if not tokenizer.chat_template:
            raise ChatTemplateError(f"the tokenizer {self.source} has no chat template")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"the tokenizer {self.source} is not a fast (Rust) tokenizer; incremental "
                "encoding needs its character offsets"
            )
        self.boundary_tokens = self._boundary_tokens()
        self.boundary_ids = frozenset(tokenizer.convert_tokens_to_ids(sorted(self.boundary_tokens)))
        eot_ids = tokenizer.encode(end_of_turn, add_special_tokens=False)
        if len(eot_ids) != 1 or end_of_turn not in self.boundary_tokens:
            raise ChatTemplateError(
                f"end-of-turn {end_of_turn!r} is not a single added token of the tokenizer "
                f"{self.source} (it encodes to {eot_ids})"
            )
        self.end_of_turn_id: int = eot_ids[0]
        self.strictly_prefix_stable = check_template(
            self._render_raw, end_of_turn, self.source, probe
        )

    @classmethod
    def from_path(cls, path: str | Path, **kwargs: Any) -> ChatTokenizer:
        """Load the tokenizer stored in a local directory and check its template."""
        return cls(load_tokenizer(path), source=str(path), **kwargs)

    def _boundary_tokens(self) -> frozenset[str]:
        """Added tokens that the tokenizer always cuts text at, whatever surrounds them.

        Encoding splits text at added tokens before anything else, so tokenizing the
        text before and after such a token separately gives the same ids as tokenizing
        it whole. Tokens that strip neighbouring whitespace, match whole words only, or
        are matched after a normalizer changes the text do not have that guarantee.
        """
        normalizer = self.tokenizer.backend_tokenizer.normalizer
        return frozenset(
            token.content
            for token in self.tokenizer.added_tokens_decoder.values()
            if not (token.lstrip or token.rstrip or token.single_word)
            and (normalizer is None or not token.normalized)
        )

    def _render_raw(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )
        if not isinstance(text, str):
            raise TypeError(
                f"apply_chat_template(tokenize=False) of {self.source} returned "
                f"{type(text).__name__}, not str"
            )
        return text

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
        """messages as text, through the tokenizer's chat template.

        Raises ChatTemplateError naming the tokenizer when the template fails.
        """
        try:
            return self._render_raw(messages, add_generation_prompt)
        except Exception as e:  # noqa: BLE001 - Jinja and templates raise anything
            roles = [m.get("role") for m in messages]
            raise ChatTemplateError(
                f"the chat template of tokenizer {self.source} failed on a conversation with "
                f"roles {roles}: {e}"
            ) from e

    def encode(self, text: str) -> list[int]:
        """Token ids of text, adding no special tokens (the template wrote them all)."""
        return list(self.tokenizer(well_formed(text), add_special_tokens=False)["input_ids"])

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of text and each token's (start, end) character span in text."""
        encoded = self.tokenizer(well_formed(text), add_special_tokens=False,
                                 return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ids, special tokens and spacing kept exactly."""
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def assistant_turn_ids(self, content: str) -> list[int]:
        """The ids a model generates for content after the generation prompt: content, end-of-turn.

        Content is tokenized on its own, as sampling produces it after the prompt's
        header; use this to turn a teacher's text label into student token ids.
        """
        return [*self.encode(content), self.end_of_turn_id]

    def conversation(self, messages: Sequence[Message] = ()) -> ConversationEncoder:
        """A new incremental encoder for a conversation starting with messages."""
        return ConversationEncoder(self, messages)
