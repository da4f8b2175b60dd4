"""Shared fixtures for the agent tests: one small ChatML tokenizer, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagger_jax.agent import ChatTokenizer
from dagger_jax.tokenizer import load_tokenizer

# Mimics Qwen2.5 / Qwen3 for tool results: a default system prompt when none is given,
# and tool messages rendered inside a user block, consecutive ones merged into one.
QWEN_STYLE_TEMPLATE = (
    "{%- if not messages or messages[0].role != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}"
    "{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# No separators at all between non-assistant messages: appending one continues the
# text right where the last ended, so tokens can merge across the cut (e.g. "\n" +
# "\n x"). It makes the encoder find cut points away from the end of the old text.
PLAIN_CONCAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' + message.content + '<|im_end|>' }}"
    "{%- else %}{{- message.content }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def chatml_dir(chat_dir: Path) -> Path:
    return chat_dir  # tests/conftest.py's, built once per run


@pytest.fixture(scope="session")
def chatml(chat: ChatTokenizer) -> ChatTokenizer:
    return chat


def qwen_style_tokenizer(chatml_dir: Path, *, tool_response_tokens: bool) -> ChatTokenizer:
    """The ChatML BPE with the Qwen-style template (and, like Qwen3, <tool_response> tokens)."""
    tokenizer = load_tokenizer(chatml_dir)
    tokenizer.chat_template = QWEN_STYLE_TEMPLATE
    if tool_response_tokens:
        tokenizer.add_tokens(["<tool_response>", "</tool_response>"])
    return ChatTokenizer(tokenizer, source=f"{chatml_dir} (qwen-style)")


@pytest.fixture(scope="session")
def qwen_style(chatml_dir: Path) -> ChatTokenizer:
    return qwen_style_tokenizer(chatml_dir, tool_response_tokens=False)


@pytest.fixture(scope="session")
def qwen_style_tagged(chatml_dir: Path) -> ChatTokenizer:
    return qwen_style_tokenizer(chatml_dir, tool_response_tokens=True)


@pytest.fixture(scope="session")
def plain_concat(chatml_dir: Path) -> ChatTokenizer:
    tokenizer = load_tokenizer(chatml_dir)
    tokenizer.chat_template = PLAIN_CONCAT_TEMPLATE
    return ChatTokenizer(tokenizer, source=f"{chatml_dir} (plain-concat)")
