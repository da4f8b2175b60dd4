"""Construction-time checks of a tokenizer's chat template, and errors that say what differed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import transformers

from dagger_jax.agent import ChatTemplateError, ChatTokenizer, check_template
from dagger_jax.agent.template_check import common_prefix_len
from dagger_jax.tokenizer import CHATML_TEMPLATE, load_tokenizer

CHATML_BLOCK = "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
GEN_PROMPT = "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"


def _with_template(tok_dir: Path, template: str) -> transformers.PreTrainedTokenizerBase:
    tokenizer = load_tokenizer(tok_dir)
    tokenizer.chat_template = template
    return tokenizer


def test_project_chatml_tokenizer_passes(chatml: ChatTokenizer, chatml_dir: Path) -> None:
    assert chatml.tokenizer.chat_template == CHATML_TEMPLATE
    assert chatml.source == str(chatml_dir)
    assert chatml.end_of_turn_id == 2 and chatml.strictly_prefix_stable


BAD_TEMPLATES = [
    (
        # The number of tool results up front: each tool message rewrites the very start.
        "{{- messages|selectattr('role', 'equalto', 'tool')|list|length }}"
        "{%- for message in messages %}" + CHATML_BLOCK + "{%- endfor %}" + GEN_PROMPT,
        r"probe message 3 \(tool\): adding this message changes the text before the end of "
        r"the last assistant turn.*first difference at character 0: before '0<\|im_start.*"
        r"after '1<\|im_start",
    ),
    (
        # The message count up front: the reply changes what the prompt said.
        "{{- messages|length }}{%- for message in messages %}"
        + CHATML_BLOCK
        + "{%- endfor %}"
        + GEN_PROMPT,
        r"probe message 2 \(assistant\): the generation prompt is not a prefix of the "
        r"conversation.*first difference at character 0: before '2<\|im_start.*after '3",
    ),
    (
        # Like Qwen3's own template: an empty think block on the last assistant turn only,
        # which the generation prompt does not contain.
        "{%- for message in messages %}{%- if message.role == 'assistant' and loop.last %}"
        "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message.content + "
        "'<|im_end|>\\n' }}{%- else %}" + CHATML_BLOCK + "{%- endif %}{%- endfor %}" + GEN_PROMPT,
        r"probe message 2 \(assistant\): the template does not write the assistant content "
        r"verbatim after the generation prompt.*<think>",
    ),
    (
        "{%- for message in messages %}{%- if message.role == 'assistant' %}"
        "{{- '<|im_start|>assistant\\n' + message.content|trim + '<|im_end|>\\n' }}"
        "{%- else %}" + CHATML_BLOCK + "{%- endif %}{%- endfor %}" + GEN_PROMPT,
        r"probe message 7 \(assistant\): the template does not write the assistant content "
        r"verbatim.*'spaced<\|im_end\|>",
    ),
    (
        "{%- for message in messages %}" + CHATML_BLOCK + "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>model\\n' }}{%- endif %}",
        r"probe message 2 \(assistant\): the generation prompt is not a prefix.*"
        r"first difference at character \d+: before '.*model",
    ),
    (
        "{%- for message in messages %}{%- if message.role == 'tool' %}"
        "{{- raise_exception('no tool role here') }}{%- endif %}"
        + CHATML_BLOCK
        + "{%- endfor %}"
        + GEN_PROMPT,
        r"probe message 3 \(tool\): rendering failed: no tool role here",
    ),
]


@pytest.mark.parametrize(("template", "says"), BAD_TEMPLATES)
def test_unusable_templates_are_refused_naming_the_tokenizer(
    chatml_dir: Path, template: str, says: str
) -> None:
    tokenizer = _with_template(chatml_dir, template)
    with pytest.raises(ChatTemplateError, match=re.escape(f"tokenizer {chatml_dir}")) as info:
        ChatTokenizer(tokenizer)
    assert re.search(says, str(info.value), flags=re.DOTALL), str(info.value)


def test_tokenizer_without_template(chatml_dir: Path) -> None:
    bare = transformers.PreTrainedTokenizerFast(tokenizer_file=str(chatml_dir / "tokenizer.json"))
    with pytest.raises(ChatTemplateError, match="tokenizer my-bare-tok has no chat template"):
        ChatTokenizer(bare, source="my-bare-tok")


def test_end_of_turn_must_be_one_added_token(chatml_dir: Path) -> None:
    with pytest.raises(ChatTemplateError, match=r"end-of-turn '</s>' is not a single added token"):
        ChatTokenizer(load_tokenizer(chatml_dir), end_of_turn="</s>")


def test_check_template_on_a_plain_function() -> None:
    def render(messages, add_generation_prompt):  # noqa: ANN001, ANN202 - a stand-in template
        text = "".join(f"[{m['role']}]{m['content']}<e>" for m in messages)
        return text + ("[assistant]" if add_generation_prompt else "")

    assert check_template(render, "<e>", "stand-in") is True


def test_common_prefix_len() -> None:
    assert common_prefix_len("abcdef", "abcxyz") == 3
    assert common_prefix_len("abc", "abcdef") == 3
    assert common_prefix_len("abcdef", "abc") == 3
    assert common_prefix_len("", "x") == 0 and common_prefix_len("x", "y") == 0
    assert common_prefix_len("日本語", "日本人") == 2
