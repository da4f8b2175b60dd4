"""Real-package tasks: a bug injected into a PyPI sdist's own code, caught by its own tests.

Builds tasks from two small pure-Python packages with different layouts (inflection: one
module, tests at the top; toolz: a package with tests inside it), pinned so the tests are
deterministic, and checks them the way they will be used: graded in real sandboxes, resolved
by the scripted expert, not by a policy that does nothing. Bad packages end their own tasks
with a recorded reason. The sdists are downloaded once into the normal cache.
"""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dagger_jax.envs.base_image import DEFAULT_RECIPE
from dagger_jax.envs.grading import grade, run_tests, verdict
from dagger_jax.envs.sandbox import SandboxSpec
from dagger_jax.envs.tasks.pypi import build_tasks, line_diff
from dagger_jax.envs.tasks.sdist import (BuildFailure, PackageLayoutError, PypiConfig, SdistError,
                                         fetch_sdist, load_sdist)
from dagger_jax.envs.tasks.repo import materialize_repo
from dagger_jax.envs.tasks.source_mutations import (MutationError, SourceMutation, apply_mutation,
                                                    candidate_mutations, functions)
from dagger_jax.envs.tasks.task import Task
from dagger_jax.policies.actors import NoopActor
from dagger_jax.policies.patching import apply_patch
from dagger_jax.policies.scripted_expert import ScriptedExpert
from tests.envs.sandbox.conftest import ROOT

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

INFLECTION = "inflection==0.5.1"
TOOLZ = "toolz==1.2.0"


@pytest.fixture(scope="module")
def inflection_tasks(bwrap_backend) -> list[Task]:
    built = build_tasks(INFLECTION, 2, seed=0, backend=bwrap_backend)
    assert all(isinstance(t, Task) for t in built), built
    return built


@pytest.fixture(scope="module")
def toolz_task(bwrap_backend) -> Task:
    built = build_tasks(TOOLZ, 1, seed=1, backend=bwrap_backend)
    assert isinstance(built[0], Task), built
    return built[0]


def _original(task: Task) -> str:
    """The target file as the sdist has it."""
    repo = load_sdist(fetch_sdist(f"{task.metadata['package']}=={task.metadata['version']}"))
    return repo.files[task.metadata["target_file"]]


# ---------------------------------------------------------------- what a built task is


def test_tasks_come_from_the_real_package(inflection_tasks):
    for task in inflection_tasks:
        assert task.source == "pypi" and task.instance_id.startswith("pypi-inflection-0.5.1-")
        assert {"inflection/__init__.py", "test_inflection.py"} <= set(task.repo_files)
        assert "setup.py" not in task.repo_files  # only what the tests need, never the build
        assert task.fail_to_pass and task.pass_to_pass
        assert all(t.startswith("test_inflection.py::") for t in task.fail_to_pass + task.pass_to_pass)
        assert "test_inflection.py" in task.test_files
        assert task.fail_to_pass[0] in task.problem_statement
        assert task.metadata["trials"] <= PypiConfig().max_trials
    # Different task indices give different bugs.
    assert len({json.dumps(t.metadata["mutation"], sort_keys=True) for t in inflection_tasks}) == 2


def test_the_gold_patch_is_a_small_diff_of_the_original_file(inflection_tasks, toolz_task):
    for task in inflection_tasks + [toolz_task]:
        path, original = task.metadata["target_file"], _original(task)
        changed = [line for line in task.gold_patch.splitlines()[3:] if line[:1] in "+-"]
        assert 2 <= len(changed) <= 4, task.gold_patch
        assert apply_patch(task.repo_files, task.gold_patch)[path] == original
        buggy = task.repo_files[path].splitlines()
        same = sum(a == b for a, b in zip(buggy, original.splitlines()))
        assert len(buggy) == len(original.splitlines()) and same >= len(buggy) - 2
        # The statement shows the failure, never the fix.
        fix_line = next(line[1:] for line in changed if line.startswith("+"))
        assert fix_line.strip() not in task.problem_statement


def test_tests_inside_the_package_are_found(toolz_task):
    assert all(t.startswith("toolz/") and "/tests/" in t for t in toolz_task.fail_to_pass)
    assert toolz_task.metadata["target_file"].startswith("toolz/")
    assert not toolz_task.metadata["target_file"].startswith("toolz/tests/")


# ---------------------------------------------------------------- graded in real sandboxes


def test_fail_to_pass_fails_at_base_and_the_gold_patch_resolves(backend, inflection_tasks, tmp_path):
    task = inflection_tasks[0]
    spec = SandboxSpec(image=DEFAULT_RECIPE.image, repo_dir=materialize_repo(task, tmp_path / "repo"))
    with backend.open(spec) as sandbox:
        _, report = verdict(task, run_tests(sandbox, task, timeout_s=120))
        assert not report["FAIL_TO_PASS"]["success"]
        assert len(report["FAIL_TO_PASS"]["failure"]) == len(task.fail_to_pass)
        assert len(report["PASS_TO_PASS"]["success"]) == len(task.pass_to_pass)
        sandbox.write_file("/tmp/gold.patch", task.gold_patch)
        assert sandbox.run("cd /testbed && git apply /tmp/gold.patch").exit_code == 0
        result = grade(sandbox, task)
    assert result.resolved, (result.status, result.error)


def test_the_expert_resolves_them_and_noop_does_not(backend, inflection_tasks, run_episode):
    task = inflection_tasks[1]
    expert = run_episode(task, ScriptedExpert(), backend)
    noop = run_episode(task, NoopActor(), backend)
    assert expert.resolved and expert.end_reason == "finish", expert.summary()
    assert not noop.resolved and noop.outcome.fail_to_pass_passed == 0


def test_the_expert_resolves_a_bug_in_a_package_with_nested_tests(bwrap_backend, toolz_task, run_episode):
    assert run_episode(toolz_task, ScriptedExpert(), bwrap_backend).resolved
    assert not run_episode(toolz_task, NoopActor(), bwrap_backend).resolved


# ---------------------------------------------------------------- bad packages


def _sdist(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    """A local sdist tarball `name-1.0.tar.gz` holding `files` under `name-1.0/`."""
    path = tmp_path / f"{name}-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-1.0/{rel}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_an_sdist_without_tests_is_a_recorded_reason_for_each_task(bwrap_backend, tmp_path):
    sdist = _sdist(tmp_path, "notests", {"notests/__init__.py": "def f(x):\n    return x + 1\n",
                                         "setup.py": "raise SystemExit('never run')\n"})
    with pytest.raises(PackageLayoutError, match="has no tests"):
        load_sdist(sdist)
    built = build_tasks(str(sdist), 2, seed=0, backend=bwrap_backend)
    assert [type(b) for b in built] == [BuildFailure, BuildFailure]
    assert all("notests-1.0.tar.gz has no tests" in b.reason for b in built)


def test_tests_that_cannot_run_in_the_sandbox_are_a_reason_and_never_touch_the_host(
        bwrap_backend, tmp_path):
    marker = tmp_path / "host_was_touched"
    sdist = _sdist(tmp_path, "needsdeps", {
        "needsdeps/__init__.py": "def double(x):\n    return 2 * x\n",
        # Package code (here: a conftest) only ever runs in the sandbox, where the host's
        # tmp_path does not exist.
        "conftest.py": f"open({str(marker)!r}, 'w').write('x')\n",
        "tests/test_double.py": "import hypothesis_not_installed\nfrom needsdeps import double\n\n"
                                "def test_double():\n    assert double(2) == 4\n"})
    built = build_tasks(str(sdist), 1, seed=0, backend=bwrap_backend)
    assert isinstance(built[0], BuildFailure)
    assert built[0].reason.startswith("baseline tests do not pass in the sandbox")
    assert not marker.exists()


def test_a_package_that_does_not_exist_is_a_clear_error(bwrap_backend, tmp_path):
    name = "dagger-jax-no-such-package-0a1b2c"
    with pytest.raises(SdistError, match=f"no package '{name}' on https://pypi.org/simple"):
        fetch_sdist(name, cache_dir=tmp_path)
    built = build_tasks(name, 1, seed=0, backend=bwrap_backend, config=PypiConfig(cache_dir=tmp_path))
    assert isinstance(built[0], BuildFailure) and f"no package '{name}'" in built[0].reason


def test_make_tasks_keeps_the_good_tasks_and_records_the_rest(tmp_path):
    sdist = _sdist(tmp_path, "notests", {"notests/__init__.py": "x = 1\n"})
    out = tmp_path / "tasks.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tasks.py"), "--source", "pypi",
                           "--package", str(sdist), "--package", INFLECTION, "--n", "1",
                           "--seed", "5", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tasks = [Task.from_json(json.loads(line)) for line in out.read_text().splitlines()]
    assert [t.metadata["package"] for t in tasks] == ["inflection"]
    failures = [json.loads(line) for line in (tmp_path / "tasks.jsonl.failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and "has no tests" in failures[0]["reason"]
    assert "notests-1.0.tar.gz" in done.stderr and "not built" in done.stderr


# ---------------------------------------------------------------- line-preserving mutations

SOURCE = '''\
import re  # a comment the reformatting mutator would drop


class Box:
    def fits(self, size, limit=10):
        """Says whether it fits."""
        if size<=limit and (size > 0 or  # odd layout kept as is
                            limit in (1, 2)):
            return   size*2 - 1
        return re.match("x", "x") is None


def shout(text: str, times=3):
    total = 0
    for _ in range(times):
        total += len(text)
    return f"{text!r:>{times}}" + "!" * total
'''


def test_every_mutation_changes_only_its_own_lines():
    tree = ast.parse(SOURCE)
    names = [name for name, _ in functions(tree)]
    assert names == ["Box.fits", "shout"]
    operators = set()
    for name, node in functions(tree):
        for mutation in candidate_mutations(SOURCE, name, node.lineno):
            try:
                mutated = apply_mutation(SOURCE, mutation)
            except MutationError:
                continue  # refused rather than done wrong
            operators.add(mutation.operator)
            before, after = SOURCE.splitlines(), mutated.splitlines()
            assert len(before) == len(after)
            changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
            assert 1 <= len(changed) <= 2 and changed[0] + 1 >= mutation.line, mutation
            assert "# a comment the reformatting mutator would drop" in mutated
    assert operators == {"compare", "arith", "boolop", "constant", "condition", "variable"}


def test_an_edit_that_would_change_more_than_meant_is_refused():
    source = "def f(a, b, c):\n    return a + b * c\n"
    mult = next(m for m in candidate_mutations(source, "f", 1) if m.description == "* -> +")
    with pytest.raises(MutationError, match="intended AST"):  # a + b + c means (a + b) + c
        apply_mutation(source, mult)
    with pytest.raises(MutationError, match="no function 'g'"):
        apply_mutation(source, SourceMutation("g", 1, "arith", 0, 2, "+ -> -"))


def test_line_diff_is_one_hunk_even_between_look_alike_functions():
    block = "def f{0}(x):\n    '''Doc.'''\n    if x > 0:\n        return x\n    return -x\n\n\n"
    before = "".join(block.format(i) for i in range(4))
    after = before.replace("def f2(x):\n    '''Doc.'''\n    if x > 0:", "def f2(x):\n    '''Doc.'''\n    if x >= 0:")
    patch = line_diff("m.py", before, after)
    assert patch.count("@@ ") == 1 and [l for l in patch.splitlines() if l[:1] in "+-"][2:] == \
        ["-    if x > 0:", "+    if x >= 0:"]
    assert apply_patch({"m.py": before}, patch)["m.py"] == after
