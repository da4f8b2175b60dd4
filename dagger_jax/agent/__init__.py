"""The agent scaffold: tools, the action text format, prompts, and incremental chat encoding.

Imports nothing of dagger_jax but dagger_jax.tokenizer, and executes nothing: the
sandbox layer (envs/) gives the tools their effects.
"""

from dagger_jax.agent.actions import ParsedAction, ToolCall, parse_action, render_action
from dagger_jax.agent.chat_tokenizer import ChatTokenizer
from dagger_jax.agent.conversation import ConversationEncoder
from dagger_jax.agent.observations import (
    MIN_OBSERVATION_CHARS,
    format_bash_observation,
    format_error_observation,
    format_observation,
)
from dagger_jax.agent.prompts import DEFAULT_REPO_PATH, initial_messages, system_prompt, task_prompt
from dagger_jax.agent.template_check import ChatTemplateError, check_template
from dagger_jax.agent.tools import (
    DEFAULT_TOOLS,
    EDITOR_COMMANDS,
    EXECUTE_BASH,
    FINISH,
    STR_REPLACE_EDITOR,
    ToolParameter,
    ToolSpec,
    tool_by_name,
)
from dagger_jax.agent.validation import typed_arguments, validate_call

__all__ = [
    "DEFAULT_REPO_PATH",
    "DEFAULT_TOOLS",
    "EDITOR_COMMANDS",
    "EXECUTE_BASH",
    "FINISH",
    "MIN_OBSERVATION_CHARS",
    "STR_REPLACE_EDITOR",
    "ChatTemplateError",
    "ChatTokenizer",
    "ConversationEncoder",
    "ParsedAction",
    "ToolCall",
    "ToolParameter",
    "ToolSpec",
    "check_template",
    "format_bash_observation",
    "format_error_observation",
    "format_observation",
    "initial_messages",
    "parse_action",
    "render_action",
    "system_prompt",
    "task_prompt",
    "tool_by_name",
    "typed_arguments",
    "validate_call",
]
