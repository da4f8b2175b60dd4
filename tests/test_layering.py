"""The package layers import only downward (DESIGN.md): checked on every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dagger_jax"

# Which of our packages each layer may import (besides itself). Leaf modules at the top level
# (workdir, log_filters, config_base) are shared helpers; main and recipes may import anything.
ALLOWED = {
    "models": set(),
    "tokenizer": set(),
    "envs": set(),
    "agent": {"tokenizer"},
    "data": {"agent", "tokenizer"},
    "train": {"models", "workdir"},
    "policies": {"agent", "envs", "models", "tokenizer"},
    "rollout": {"agent", "envs", "policies", "data", "models", "tokenizer"},
    "serving": {"models", "policies", "tokenizer", "agent"},
}


def our_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for name in names:
            if name.startswith("dagger_jax."):
                found.add(name.split(".")[1])
    return found


def test_layers_import_only_downward():
    violations = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            bad = our_imports(path) - allowed - {layer}
            if bad:
                violations.append(f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_the_check_sees_imports():
    assert our_imports(PACKAGE / "main.py") >= {"train", "models", "data", "tokenizer"}
