"""Synthetic bug-fix tasks: a small generated package with tests and one injected bug.

Deterministic from (seed, split, index). The correct package is generated first and its tests'
expected values computed by running it (our own template code, in-process, at generation time);
then one mutation that makes at least one of the target function's tests fail is injected.
FAIL_TO_PASS are the tests the bug breaks, PASS_TO_PASS all the others. The gold patch is the
inverse edit. Train and held-out tasks come from disjoint random streams, and a held-out task
never shares its package contents with a train task of the same seed (tested).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import random
from typing import Any

from dagger_jax.envs.tasks.function_templates import TEMPLATES, FunctionTemplate
from dagger_jax.envs.tasks.mutations import OPERATORS, apply_mutation, candidate_mutations, normalise
from dagger_jax.envs.tasks.task import Task

PACKAGE_NAMES = ("ledger", "inventory", "metrics", "scheduler", "catalog", "geometry", "payroll",
                 "telemetry", "shipping", "grading")
MODULE_NAMES = ("core", "utils", "stats", "text", "lists", "numbers", "helpers", "ops")
# -qq drops pytest's header and its closing "N passed in 0.06s" line, the only part of a test
# run's output that wall-clock time changes: the same state then always gives the same
# observation tokens, so two runs (SFT and DAgger, a resumed job) that collect the same teacher
# episode get identical records. -rA keeps the PASSED/FAILED lines the graders parse.
TEST_COMMAND = "python3 -m pytest -rA -qq -p no:cacheprovider tests"
CASES_PER_FUNCTION = 3
DECOY_CONSTANTS = ("LIMIT", "SCALE", "OFFSET", "WIDTH", "STEP", "MARGIN", "PRECISION", "RETRIES")


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Knobs: more files and functions (and look-alike distractors) mean more to search."""

    files: int = 1
    functions_per_file: int = 2
    distractors: int = 0          # extra functions built from the buggy function's template
    hide_location: bool = False   # the problem statement does not name the file
    templates: int = 0            # > 0: draw functions from the first N templates only
    bug_kinds: tuple[str, ...] = ()  # mutation operators allowed (mutations.OPERATORS); () = all
    # Where the bug is: a from-scratch student must copy the path from the issue, and
    # `inventory_51` is a harder copy than `ledger`. These narrow the names a path is made of.
    packages: int = 0             # > 0: package names from the first N of PACKAGE_NAMES only
    numbered_packages: bool = True  # False: `ledger`, not `ledger_37`
    modules: int = 0              # > 0: module names from the first N of MODULE_NAMES only
    # Modules holding only constants, no function and no tests. With hide_location=True the
    # agent's first look is a guess among the modules; a decoy is recognisable on sight (no
    # `def`), so the way out of a wrong guess, viewing another module, is learnable from what
    # the agent observes. A privileged teacher never opens one: only states the student reaches
    # hold it.
    decoys: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.templates <= len(TEMPLATES):
            raise ValueError(f"Difficulty.templates={self.templates}: choose 0 (all) to {len(TEMPLATES)}")
        if self.templates and self.templates < self.files * self.functions_per_file:
            raise ValueError(f"Difficulty.templates={self.templates} is fewer than the "
                             f"{self.files * self.functions_per_file} functions a task holds")
        if not 0 <= self.packages <= len(PACKAGE_NAMES):
            raise ValueError(f"Difficulty.packages={self.packages}: choose 0 (all) to {len(PACKAGE_NAMES)}")
        if self.decoys < 0:
            raise ValueError(f"Difficulty.decoys={self.decoys}: choose 0 or more")
        per_task = self.files + self.decoys
        if not 0 <= self.modules <= len(MODULE_NAMES) or 0 < self.modules < per_task:
            raise ValueError(f"Difficulty.modules={self.modules}: choose 0 (all) or {per_task} "
                             f"(files and decoys per task) to {len(MODULE_NAMES)}")
        if per_task > len(MODULE_NAMES):
            raise ValueError(f"Difficulty: {self.files} files and {self.decoys} decoys need "
                             f"{per_task} module names; there are {len(MODULE_NAMES)}")
        unknown = sorted(set(self.bug_kinds) - set(OPERATORS))
        if unknown:
            raise ValueError(f"Difficulty.bug_kinds: unknown {unknown}; choose from {OPERATORS}")

    @classmethod
    def from_settings(cls, *, bug_kinds: str, **fields) -> "Difficulty":
        """From flat settings as configs and command lines hold them: `bug_kinds`
        comma-separated ("" = all)."""
        return cls(bug_kinds=tuple(k.strip() for k in bug_kinds.split(",") if k.strip()), **fields)


def _rng(seed: int, split: str, index: int | str) -> random.Random:
    digest = hashlib.sha256(f"synthetic/{split}/{seed}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _run(source: str, name: str, args: tuple) -> tuple[bool, Any]:
    """(ok, value or 'ExcType: message') of calling `name(*args)` in `source`."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "<synthetic>", "exec"), namespace)  # noqa: S102 - our own template code
    try:
        return True, namespace[name](*args)
    except Exception as e:  # a mutant may crash: that is a failing test too
        return False, f"{type(e).__name__}: {e}"


def _test_file(module: str, package: str, cases: list[tuple[str, tuple, Any]]) -> str:
    names = sorted({name for name, _, _ in cases})
    lines = [f"from {package}.{module} import {', '.join(names)}", ""]
    counters: dict[str, int] = {}
    for name, args, expected in cases:
        i = counters[name] = counters.get(name, -1) + 1
        call = f"{name}({', '.join(repr(a) for a in args)})"
        lines += ["", f"def test_{name}_{i}():", f"    assert {call} == {expected!r}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _draw_cases(rng: random.Random, source: str, name: str, template: FunctionTemplate, k: int,
                count: int, avoid: list | None = None) -> list[tuple[str, tuple, Any]]:
    """`count` test cases with distinct arguments (a few draws may repeat; they are skipped)."""
    seen = {repr(args) for n, args, _ in (avoid or []) if n == name}
    out: list[tuple[str, tuple, Any]] = []
    for _ in range(count * 10):
        args = template.draw_args(rng, k)
        if repr(args) in seen:
            continue
        seen.add(repr(args))
        ok, value = _run(source, name, args)
        if not ok:  # a template bug, not data: fail loudly at generation time
            raise RuntimeError(f"template function {name} raised on {args}: {value}")
        out.append((name, args, value))
        if len(out) == count:
            break
    return out


def _breaking_mutation(rng: random.Random, source: str, name: str, target_cases: list,
                       kinds: tuple[str, ...] = ()):
    """(mutation, buggy source, results, indices of broken cases) or None."""
    mutations = [m for m in candidate_mutations(source, name) if not kinds or m.operator in kinds]
    rng.shuffle(mutations)
    for mutation in mutations:
        buggy = apply_mutation(source, mutation)
        results = [_run(buggy, name, args) for _, args, _ in target_cases]
        broken = [i for i, (ok, value) in enumerate(results) if not ok or value != target_cases[i][2]]
        if broken:
            return mutation, buggy, results, broken
    return None


def _functions(rng: random.Random, count: int, pool: int = 0) -> list[tuple[str, FunctionTemplate, int]]:
    allowed = TEMPLATES[:pool] if pool else TEMPLATES
    templates = rng.sample(allowed, k=min(count, len(allowed)))
    return [(rng.choice(t.names), t, rng.randint(2, 4)) for t in templates]


def generate_task(seed: int, index: int, split: str = "train",
                  difficulty: Difficulty = Difficulty()) -> Task:
    # Restricted templates or bug kinds can leave a draw with no breaking mutation: draw again
    # from a stream derived from the same (seed, split, index), so tasks stay deterministic.
    for attempt in range(50):
        task = _generate(seed, index, split, difficulty, attempt)
        if task is not None:
            return task
    raise RuntimeError(f"no mutation breaks any function's tests (seed {seed}, index {index}, "
                       f"{difficulty})")


def _generate(seed: int, index: int, split: str, difficulty: Difficulty, attempt: int) -> Task | None:
    rng = _rng(seed, split, index) if attempt == 0 else _rng(seed, split, f"{index}.{attempt}")
    name, number = rng.choice(PACKAGE_NAMES[:difficulty.packages or None]), rng.randint(10, 99)
    package = f"{name}_{number}" if difficulty.numbered_packages else name
    modules = rng.sample(MODULE_NAMES[:difficulty.modules or None], k=difficulty.files)
    chosen = _functions(rng, difficulty.files * difficulty.functions_per_file, difficulty.templates)
    target_name, target_template, _ = chosen[0]
    for d in range(difficulty.distractors):  # same code shape, other names: harder to pinpoint
        chosen.append((f"{rng.choice(target_template.names)}_v{d + 2}", target_template, rng.randint(2, 4)))
    placement = {name: modules[i % len(modules)] for i, (name, _, _) in enumerate(chosen)}

    sources: dict[str, str] = {}
    for module in modules:
        parts = [t.source.format(name=name, k=k) for name, t, k in chosen if placement[name] == module]
        sources[module] = normalise("\n\n".join(parts))
    cases: dict[str, list[tuple[str, tuple, Any]]] = {m: [] for m in modules}
    for name, template, k in chosen:
        cases[placement[name]] += _draw_cases(rng, sources[placement[name]], name, template, k,
                                              CASES_PER_FUNCTION)

    found = None
    # The first function is the preferred target; one whose every mutant survives its tests
    # (even with extra cases) hands over to the next.
    for target_name, target_template, k in chosen[:len(chosen) - difficulty.distractors]:
        target_module = placement[target_name]
        for extra_round in range(3):
            if extra_round:  # no mutant was caught: more cases may catch one
                cases[target_module] += _draw_cases(rng, sources[target_module], target_name,
                                                    target_template, k, CASES_PER_FUNCTION,
                                                    avoid=cases[target_module])
            found = _breaking_mutation(rng, sources[target_module], target_name,
                                       [c for c in cases[target_module] if c[0] == target_name],
                                       difficulty.bug_kinds)
            if found:
                break
        if found:
            break
    if not found:
        return None
    mutation, buggy, results, broken = found
    target_cases = [c for c in cases[target_module] if c[0] == target_name]

    # Keep bytecode and caches out of `git diff` (the episode's patch).
    files = {".gitignore": "__pycache__/\n*.pyc\n.pytest_cache/\n", f"{package}/__init__.py": ""}
    test_files = []
    for module in modules:
        files[f"{package}/{module}.py"] = buggy if module == target_module else sources[module]
        test_path = f"tests/test_{module}.py"
        files[test_path] = _test_file(module, package, cases[module])
        test_files.append(test_path)
    test_ids = {m: [f"tests/test_{m}.py::test_{n}_{i}" for n, i in _numbered(cases[m])] for m in modules}
    fail = [test_ids[target_module][target_cases_index(cases[target_module], target_name, b)] for b in broken]
    passing = [t for m in modules for t in test_ids[m] if t not in fail]

    for module, text in _decoy_modules(seed, split, index, difficulty, modules).items():
        files[f"{package}/{module}.py"] = text

    ok, got = results[broken[0]]
    _, example_args, expected = target_cases[broken[0]]
    call = f"{target_name}({', '.join(repr(a) for a in example_args)})"
    outcome = f"returns `{got!r}`" if ok else f"raises `{got}`"
    where = f" in `{package}/{target_module}.py`" if not difficulty.hide_location else ""
    statement = (f"`{target_name}`{where} is supposed to {target_template.summary}, "
                 f"but it gives wrong results.\n\nFor example, `{call}` {outcome}; "
                 f"it should return `{expected!r}`.\n\nPlease fix the bug. The tests are under `tests/`.")
    path = f"{package}/{target_module}.py"
    return Task(
        instance_id=f"synthetic-{split}-{seed}-{index}",
        source="synthetic",
        problem_statement=statement,
        fail_to_pass=tuple(fail),
        pass_to_pass=tuple(passing),
        test_files=tuple(test_files),
        test_command=TEST_COMMAND,
        split=split,
        repo_files=files,
        gold_patch=unified_diff(path, buggy, sources[target_module]),
        # JSON-shaped (lists, not tuples), so a task file round-trips.
        metadata={"mutation": dataclasses.asdict(mutation),
                  "difficulty": {**dataclasses.asdict(difficulty), "bug_kinds": list(difficulty.bug_kinds)},
                  "package": package, "target_function": target_name, "target_file": path},
    )


def _decoy_modules(seed: int, split: str, index: int, difficulty: Difficulty,
                   taken: list[str]) -> dict[str, str]:
    """{module: source} of the task's decoys: a few integer constants each.

    Drawn from their own stream, so a family without decoys generates exactly the tasks it did
    before the knob existed.
    """
    if not difficulty.decoys:
        return {}
    rng = _rng(seed, split, f"{index}.decoys")
    free = [m for m in MODULE_NAMES[:difficulty.modules or None] if m not in taken]
    out = {}
    for module in rng.sample(free, k=difficulty.decoys):
        names = sorted(rng.sample(DECOY_CONSTANTS, k=rng.randint(2, 3)))
        out[module] = "".join(f"{name} = {rng.randint(2, 99)}\n" for name in names)
    return out


def _numbered(cases: list[tuple[str, tuple, Any]]) -> list[tuple[str, int]]:
    counters: dict[str, int] = {}
    out = []
    for name, _, _ in cases:
        counters[name] = counters.get(name, -1) + 1
        out.append((name, counters[name]))
    return out


def target_cases_index(cases: list[tuple[str, tuple, Any]], name: str, nth: int) -> int:
    """Position in the module's case list of the nth case of function `name`."""
    return [i for i, (n, _, _) in enumerate(cases) if n == name][nth]


def unified_diff(path: str, before: str, after: str) -> str:
    """A `git apply`-able patch turning `before` into `after` at repo path `path`."""
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 fromfile=f"a/{path}", tofile=f"b/{path}")
    return f"diff --git a/{path} b/{path}\n" + "".join(lines)


def generate_tasks(n: int, seed: int, split: str = "train",
                   difficulty: Difficulty = Difficulty()) -> list[Task]:
    return [generate_task(seed, i, split, difficulty) for i in range(n)]
