"""The package layers import only downward, as DESIGN.md's table says: checked on every module's
imports, in every import form (`import dagger_jax.x`, `from dagger_jax.x import y`,
`from dagger_jax import x`, and imports inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dagger_jax"

# Which of our layers each layer may import besides itself: DESIGN.md's "depends on" column.
# Departures, where the code has the better reason: policies load the tokenizer stored beside a
# model export (policies -> tokenizer, as serving already may); the loop names its workdir's
# paths (recipes -> storage); the rollout service takes its job's task file, tokenizer and shard
# directory from the run's store, with which it may share nothing else (rollout -> storage);
# `names` is a leaf every layer may import (the label, weight and
# batch names that recipes, rollout, data and train share), and so is `accelerators` (the
# package's __init__ runs it before any layer starts JAX).
ALLOWED = {
    "storage": set(),
    "models": set(),
    "tokenizer": set(),
    "envs": set(),
    "agent": {"tokenizer"},
    "data": {"agent", "storage"},
    "train": {"models", "storage"},
    "policies": {"agent", "envs", "models", "tokenizer"},
    "serving": {"policies", "models", "tokenizer", "agent"},
    "rollout": {"agent", "envs", "policies", "data", "serving", "storage"},
    "recipes": {"rollout", "data", "train", "models", "storage"},
    # Reports read what a run wrote (state.json histories, curves); no layer imports them.
    "reports": {"storage"},
}
LEAVES = {"names", "accelerators"}
# The entry point: the one place that wires a config into the layers (DESIGN.md). It may import
# every layer; only it imports recipes.
ENTRY = {"main", "settings"}
# Top-level modules beside the entry point (the demo runs the entry point once per recipe and
# seed): each may import anything but recipes, and no layer imports them.
APPS = {"demo", "config_base", "run_processes", "log_filters"}


def our_imports(path: Path) -> set[str]:
    """The first component under dagger_jax of every import in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dagger_jax.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "dagger_jax":
                found |= {a.name for a in node.names}
            elif node.module.startswith("dagger_jax."):
                found.add(node.module.split(".")[1])
    return found


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted({layer_of(p) for p in PACKAGE.rglob("*.py")} - set(ALLOWED) - LEAVES - ENTRY
                     - APPS - {"__init__"})
    assert not unknown, f"modules outside DESIGN.md's layers (add them to the table): {unknown}"


def test_layers_import_only_downward():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        imports = our_imports(path) - {layer} - LEAVES
        if layer in ALLOWED:
            bad = imports - ALLOWED[layer]
        elif layer in LEAVES:
            bad = imports
        elif layer in APPS:
            bad = imports & {"recipes"}
        else:
            continue
        if bad:
            violations.append(f"{path.relative_to(ROOT)} ({layer}) imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_nothing_but_the_entry_point_imports_recipes():
    """Tools, benchmarks and configs go through the entry point's settings, never the recipes."""
    paths = [p for folder in ("tools", "benchmarks", "configs") for p in (ROOT / folder).rglob("*.py")]
    paths += [p for p in PACKAGE.rglob("*.py") if layer_of(p) not in ENTRY | {"recipes"}]
    offenders = [str(p.relative_to(ROOT)) for p in paths if "recipes" in our_imports(p)]
    assert not offenders, f"import dagger_jax.recipes outside the entry point: {offenders}"


def test_the_check_sees_every_import_form(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import dagger_jax.models.qwen3\nfrom dagger_jax.data import records\n"
                     "from dagger_jax import recipes, storage\n"
                     "def late():\n    from dagger_jax.rollout.collector import collect\n")
    assert our_imports(probe) == {"models", "data", "recipes", "storage", "rollout"}
    assert our_imports(PACKAGE / "main.py") >= {"train", "recipes"}
