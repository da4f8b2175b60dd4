"""The agent layer imports only dagger_jax.tokenizer of ours, and runs no commands."""

from __future__ import annotations

import ast
from pathlib import Path

import dagger_jax.agent

AGENT_DIR = Path(dagger_jax.agent.__file__).parent
# Modules through which code could execute commands; the sandbox layer owns that.
EXECUTING_MODULES = {"subprocess", "pty", "pexpect", "docker", "asyncio.subprocess"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_agent_imports_only_tokenizer_of_ours() -> None:
    files = sorted(AGENT_DIR.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        ours = {name for name in _imports(path) if name.split(".")[0] == "dagger_jax"}
        outside = {
            name
            for name in ours
            if not name.startswith(("dagger_jax.agent", "dagger_jax.tokenizer"))
        }
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_agent_executes_nothing() -> None:
    for path in sorted(AGENT_DIR.glob("*.py")):
        imported = _imports(path)
        assert not imported & EXECUTING_MODULES, (
            f"{path.name} imports {imported & EXECUTING_MODULES}"
        )
        assert "os.system" not in path.read_text() and "os.popen" not in path.read_text()
