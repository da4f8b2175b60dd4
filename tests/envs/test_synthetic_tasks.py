"""Synthetic bug-fix tasks: deterministic, broken by exactly the injected bug, fixable by gold."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dagger_jax.envs.tasks.mutations import Mutation, apply_mutation, candidate_mutations, normalise
from dagger_jax.envs.tasks.synthetic import Difficulty, generate_task, generate_tasks
from dagger_jax.envs.tasks.task import BadTaskLine, Task, read_tasks, write_tasks


def test_same_seed_same_task_and_splits_are_disjoint():
    assert generate_task(3, 1) == generate_task(3, 1)
    train = generate_tasks(40, seed=3)
    heldout = generate_tasks(40, seed=3, split="heldout")
    contents = lambda ts: {json.dumps(t.repo_files, sort_keys=True) for t in ts}  # noqa: E731
    assert not contents(train) & contents(heldout)
    assert not {t.instance_id for t in train} & {t.instance_id for t in heldout}
    assert len(contents(train)) == 40


def test_every_task_has_failing_and_passing_tests_and_a_minimal_gold_patch():
    for task in generate_tasks(30, seed=11, difficulty=Difficulty(files=2, functions_per_file=2,
                                                                   distractors=1)):
        assert task.fail_to_pass and task.pass_to_pass
        assert set(task.test_files) <= set(task.repo_files)
        changed = [line for line in task.gold_patch.splitlines()
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        assert len(changed) == 2, task.gold_patch  # one line out, one line in
        assert task.metadata["target_function"] in task.problem_statement
        assert task.metadata["target_file"] in task.problem_statement


def test_difficulty_knobs_shape_the_repo():
    task = generate_task(0, 0, difficulty=Difficulty(files=3, functions_per_file=2, distractors=2,
                                                      hide_location=True))
    modules = [p for p in task.repo_files
               if p.endswith(".py") and not p.startswith("tests/") and not p.endswith("__init__.py")]
    assert len(modules) == 3 and len(task.test_files) == 3
    assert task.metadata["target_file"] not in task.problem_statement
    source = "".join(task.repo_files[m] for m in modules)
    assert source.count("def ") == 3 * 2 + 2


def test_mutations_change_exactly_one_thing():
    source = normalise("def f(a, b):\n    if a < b and b > 0:\n        return a + 1\n    return b\n")
    mutations = list(candidate_mutations(source, "f"))
    operators = {m.operator for m in mutations}
    assert operators == {"compare", "arith", "constant", "boolop", "variable"}
    for m in mutations:
        mutant = apply_mutation(source, m)
        assert mutant != source
        assert sum(x != y for x, y in zip(mutant.splitlines(), source.splitlines())) == 1
    with pytest.raises(ValueError, match="no top-level function 'g'"):
        apply_mutation(source, Mutation("compare", "g", 0, ""))


def test_jsonl_round_trip_and_bad_lines_are_reported_not_fatal(tmp_path):
    tasks = generate_tasks(3, seed=5)
    path = tmp_path / "tasks.jsonl"
    assert write_tasks(tasks, path) == 3
    with path.open("a") as f:
        f.write("{not json\n")
        f.write(json.dumps({**tasks[0].to_json(), "fail_to_pass": []}) + "\n")
        f.write(json.dumps({**tasks[0].to_json(), "colour": "red"}) + "\n")
        f.write(json.dumps({**tasks[0].to_json(), "schema_version": 99}) + "\n")
    items = list(read_tasks(path))
    assert [i for i in items if isinstance(i, Task)] == tasks
    bad = [i for i in items if isinstance(i, BadTaskLine)]
    assert [b.line_number for b in bad] == [4, 5, 6, 7]
    assert "not JSON" in bad[0].reason and f"{path}:4" in bad[0].reason
    assert "FAIL_TO_PASS is empty" in bad[1].reason
    assert "unknown keys ['colour']" in bad[2].reason
    assert "schema_version 99" in bad[3].reason
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(read_tasks(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("change, reason", [
    ({"repo_files": {"a.py": 7}}, "repo_files must be an object of path -> file text"),
    ({"repo_files": ["a.py"]}, "repo_files must be an object of path -> file text"),
    ({"instance_id": 12}, "instance_id must be a string, got int"),
    ({"test_command": ["pytest"]}, "test_command must be a string, got list"),
    ({"fail_to_pass": [1, 2]}, "fail_to_pass must be a list of strings"),
    ({"image": 3}, "image must be a string or null"),
    ({"metadata": [1]}, "metadata must be an object"),
    ({"schema_version": "1"}, "schema_version must be an integer"),
    ({"split": None}, "split must be a string"),
])
def test_a_task_line_of_any_shape_is_reported_and_skipped(tmp_path, change, reason):
    good = generate_tasks(2, seed=5)
    path = tmp_path / "tasks.jsonl"
    write_tasks(good[:1], path)
    with path.open("a") as f:
        f.write(json.dumps({**good[0].to_json(), **change}) + "\n")
    with path.open("ab") as f:
        f.write(b'{"instance_id": "\xff\xfe"}\n')  # not UTF-8
        f.write((json.dumps(good[1].to_json()) + "\n").encode())
    items = list(read_tasks(path))
    assert [i for i in items if isinstance(i, Task)] == good
    bad = [i for i in items if isinstance(i, BadTaskLine)]
    assert [b.line_number for b in bad] == [2, 3]
    assert reason in bad[0].reason and f"{path}:2" in bad[0].reason
    assert "not UTF-8" in bad[1].reason and f"{path}:3" in bad[1].reason


def test_task_paths_must_stay_inside_the_repo():
    good = generate_task(0, 0)
    with pytest.raises(ValueError, match="must be relative and inside the repo"):
        Task(**{**good.__dict__, "test_files": ("../outside.py",)})


def test_template_and_bug_kind_knobs_narrow_the_family_and_stay_deterministic():
    from dagger_jax.envs.tasks.function_templates import TEMPLATES
    narrow = Difficulty(templates=4, bug_kinds=("compare", "arith"))
    tasks = generate_tasks(40, 3, "train", narrow)
    allowed = {name for t in TEMPLATES[:4] for name in t.names}
    assert {t.metadata["target_function"] for t in tasks} <= allowed
    assert {t.metadata["mutation"]["operator"] for t in tasks} <= {"compare", "arith"}
    assert [t.gold_patch for t in tasks] == [t.gold_patch for t in generate_tasks(40, 3, "train", narrow)]
    # The default family is untouched by the knobs' existence (task files stay the same).
    assert generate_task(3, 0).repo_files == generate_task(3, 0, "train", Difficulty()).repo_files
    with pytest.raises(ValueError, match="bug_kinds: unknown"):
        Difficulty(bug_kinds=("typo",))
    with pytest.raises(ValueError, match="templates=1 is fewer"):
        Difficulty(templates=1, functions_per_file=2)
    # As configs and command lines give them: a comma list, location hidden or named.
    flat = Difficulty.from_settings(templates=4, bug_kinds="compare, arith", hide_location=False)
    assert flat == narrow
    assert Difficulty.from_settings(bug_kinds="", hide_location=True) == Difficulty(hide_location=True)
    with pytest.raises(ValueError, match="bug_kinds: unknown"):
        Difficulty.from_settings(bug_kinds="compare,typo", hide_location=False)


def test_path_knobs_narrow_the_names_and_change_nothing_else():
    from dagger_jax.envs.tasks.synthetic import MODULE_NAMES, PACKAGE_NAMES
    plain = Difficulty(templates=4, bug_kinds=("compare", "arith"))
    bare = dataclasses.replace(plain, numbered_packages=False)
    for index in range(10):
        numbered, unnumbered = generate_task(2, index, "train", plain), generate_task(2, index, "train", bare)
        package = numbered.metadata["package"]
        assert unnumbered.metadata["package"] == package.rsplit("_", 1)[0] in PACKAGE_NAMES
        # Same functions, bug and tests: only the package's name differs.
        assert numbered.gold_patch.replace(package, "P") == unnumbered.gold_patch.replace(
            unnumbered.metadata["package"], "P")
        assert f"`{unnumbered.metadata['target_file']}`" in unnumbered.problem_statement
    narrow = Difficulty(templates=4, packages=2, numbered_packages=False, modules=3)
    paths = {t.metadata["target_file"] for t in generate_tasks(30, 5, "heldout", narrow)}
    assert paths <= {f"{p}/{m}.py" for p in PACKAGE_NAMES[:2] for m in MODULE_NAMES[:3]}
    assert len(paths) > 1
    with pytest.raises(ValueError, match="packages=11"):
        Difficulty(packages=11)
    with pytest.raises(ValueError, match="modules=1: choose 0 .all. or 2"):
        Difficulty(files=2, modules=1)


def test_decoys_are_constants_only_modules_and_change_nothing_else():
    hidden = Difficulty(templates=4, bug_kinds=("compare", "arith"), functions_per_file=1,
                        packages=1, numbered_packages=False, modules=2, hide_location=True)
    with_decoy = dataclasses.replace(hidden, decoys=1)
    targets = []
    for index in range(20):
        plain, decoyed = generate_task(4, index, "train", hidden), generate_task(4, index, "train", with_decoy)
        extra = set(decoyed.repo_files) - set(plain.repo_files)
        assert len(extra) == 1, extra
        (decoy,) = extra
        # The other module of the two, holding integer constants: no function, no test file.
        assert decoy.startswith("ledger/") and decoy != decoyed.metadata["target_file"]
        lines = decoyed.repo_files[decoy].splitlines()
        assert 2 <= len(lines) <= 3 and all(line.split(" = ")[1].isdigit() for line in lines)
        assert "def " not in decoyed.repo_files[decoy]
        assert decoyed.test_files == plain.test_files
        # Everything else is the decoy-free task's, and the issue names no file.
        assert {k: v for k, v in decoyed.repo_files.items() if k != decoy} == plain.repo_files
        assert (decoyed.gold_patch, decoyed.fail_to_pass, decoyed.problem_statement) == (
            plain.gold_patch, plain.fail_to_pass, plain.problem_statement)
        assert "ledger/" not in decoyed.problem_statement
        targets.append(decoyed.metadata["target_file"])
    # The bug sits in either module, so a first look is a guess.
    assert set(targets) == {"ledger/core.py", "ledger/utils.py"}
    assert generate_task(4, 3, "train", with_decoy) == generate_task(4, 3, "train", with_decoy)
    with pytest.raises(ValueError, match="modules=1: choose 0 .all. or 2"):
        Difficulty(modules=1, decoys=1)
    with pytest.raises(ValueError, match="decoys=-1"):
        Difficulty(decoys=-1)
    with pytest.raises(ValueError, match="need 9 module names"):
        Difficulty(files=1, decoys=8)
