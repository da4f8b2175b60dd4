"""The system prompt (tools and call format) and the task prompt (repository and issue)."""

from __future__ import annotations

from collections.abc import Sequence

from dagger_jax.agent.observations import CALL_FORMAT_EXAMPLE, describe_parameters
from dagger_jax.agent.tools import DEFAULT_TOOLS, ToolSpec

DEFAULT_REPO_PATH = "/testbed"

_SYSTEM_INTRO = (
    "You are a software engineering agent working in a sandboxed Linux machine. You fix "
    "issues in a code repository by calling tools, one call per turn, and reading what "
    "each call returns."
)

_SYSTEM_RULES = (
    "Rules:\n"
    "- Each message: think briefly, then end with exactly one tool call in this format:\n"
    f"{CALL_FORMAT_EXAMPLE}\n"
    "- Put each parameter value between its tags on its own lines; write values literally "
    "(no escaping, no quotes around them).\n"
    "- Nothing may follow </function>. The result of the call comes back in the next "
    "message.\n"
    "- Example:\n"
    "I will list the repository.\n"
    "<function=execute_bash>\n<parameter=command>\nls\n</parameter>\n</function>"
)


def system_prompt(tools: Sequence[ToolSpec] = DEFAULT_TOOLS) -> str:
    """The system message: who the agent is, each tool with its parameters, and the format."""
    if not tools:
        raise ValueError("system_prompt: no tools given; the agent could not act")
    sections = [_SYSTEM_INTRO, "Tools:"]
    for tool in tools:
        sections.append(f"## {tool.name}\n{tool.description}\n{describe_parameters(tool)}")
    sections.append(_SYSTEM_RULES)
    return "\n\n".join(sections)


def task_prompt(problem_statement: str, repo_path: str = DEFAULT_REPO_PATH) -> str:
    """The first user message: where the repository is, the issue, and how to finish."""
    if not problem_statement.strip():
        raise ValueError("task_prompt: the problem statement is empty")
    return (
        f"The repository is checked out at {repo_path}. Fix the issue below by changing "
        f"the non-test source files under {repo_path} so that the issue is resolved.\n\n"
        f"<issue>\n{problem_statement.strip()}\n</issue>\n\n"
        "Explore the code, reproduce the problem, make the fix and check it, e.g. by running "
        "the relevant tests. When you are done, call the `finish` tool; the episode ends "
        "there and your changes are graded."
    )


def compact_system_prompt(tools: Sequence[ToolSpec] = DEFAULT_TOOLS) -> str:
    """The same tools and call format in a few lines: for students trained from scratch on CPU,
    where the full prompt's ~800 tokens per example cost more compute than the actions."""
    if not tools:
        raise ValueError("compact_system_prompt: no tools given; the agent could not act")
    listed = "; ".join(f"{t.name}({', '.join(p.name for p in t.parameters)})" for t in tools)
    return (f"You fix issues in a repository with one tool call per turn. Tools: {listed}.\n"
            f"Format:\n{CALL_FORMAT_EXAMPLE}")


def compact_task_prompt(problem_statement: str, repo_path: str = DEFAULT_REPO_PATH) -> str:
    if not problem_statement.strip():
        raise ValueError("compact_task_prompt: the problem statement is empty")
    return f"Repository: {repo_path}\n<issue>\n{problem_statement.strip()}\n</issue>"


PROMPT_STYLES = ("full", "compact")


def initial_messages(
    problem_statement: str,
    repo_path: str = DEFAULT_REPO_PATH,
    tools: Sequence[ToolSpec] = DEFAULT_TOOLS,
    style: str = "full",
) -> list[dict[str, str]]:
    """The conversation an episode starts from: the system prompt and the task prompt.

    style "full" is the scaffold's prompt (what a pretrained model needs); "compact" says the
    same in a few lines (the local demo's from-scratch student learns the format from labels)."""
    if style == "full":
        system, task = system_prompt(tools), task_prompt(problem_statement, repo_path)
    elif style == "compact":
        system, task = compact_system_prompt(tools), compact_task_prompt(problem_statement, repo_path)
    else:
        raise ValueError(f"prompt style {style!r}: choose from {PROMPT_STYLES}")
    return [{"role": "system", "content": system}, {"role": "user", "content": task}]
