"""The ChatML chat template (Qwen style) and the special tokens it relies on."""

from __future__ import annotations

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Order matters: ids 0, 1, 2 in every tokenizer trained by this package.
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

# One `<|im_start|>{role}\n{content}<|im_end|>\n` block per message, as Qwen does.
# Unlike Qwen's own template, tool observations keep their `tool` role instead of
# being folded into a user turn: that keeps every message a separate block, so a
# rendered prefix of a conversation is always a prefix of the whole rendering
# (dagger_jax.data.encode relies on that). A missing or non-string content (e.g. an
# assistant turn that only carries structured tool calls) renders as empty text.
CHATML_TEMPLATE: str = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception('Unsupported chat role: ' ~ message['role']) }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
