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


def initial_messages(
    problem_statement: str,
    repo_path: str = DEFAULT_REPO_PATH,
    tools: Sequence[ToolSpec] = DEFAULT_TOOLS,
) -> list[dict[str, str]]:
    """The conversation an episode starts from: the system prompt and the task prompt."""
    return [
        {"role": "system", "content": system_prompt(tools)},
        {"role": "user", "content": task_prompt(problem_statement, repo_path)},
    ]
