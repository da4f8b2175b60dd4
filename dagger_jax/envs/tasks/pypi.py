"""Real-package bug-fix tasks, the SWE-smith way: a PyPI sdist's own code and tests, one bug.

Per package: the sdist is fetched (hash-checked, cached) and read in memory on the host; nothing
of it is executed here, not even setup.py (which is why this does not call `pip download`: pip
runs the build backend to read the metadata). Its source package, tests and pytest config become
the repo. Everything that runs the package's code runs in a sandbox: a baseline test run (the
tests that pass there are the ones a bug may break), then up to `max_trials` candidate
mutations, each a one-site edit of a function the tests mention, until one makes baseline-passing
tests fail without breaking collection. FAIL_TO_PASS are those tests, PASS_TO_PASS the others
the test command runs; the gold patch is the inverse edit. Each finished task is then graded
once at its base state and once with the gold patch, exactly as episodes are graded.

A package that cannot give a task (no sdist, no tests, tests that need what the image lacks, no
mutation caught) yields a `BuildFailure` with the reason for each of its tasks; it never ends a
batch.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import random
import re
import shlex
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from swebench.harness.constants import FAIL_TO_PASS, PASS_TO_PASS
from swebench.harness.log_parsers import PARSER_REGISTRY

from dagger_jax.envs.base_image import DEFAULT_RECIPE
from dagger_jax.envs.grading import grade, run_tests, verdict
from dagger_jax.envs.sandbox.base import Sandbox, SandboxBackend, SandboxError, SandboxSpec
from dagger_jax.envs.tasks import source_mutations as sm
from dagger_jax.envs.tasks.repo import materialize_repo
from dagger_jax.envs.tasks.sdist import (LOG, PYTEST, BuildFailure, PackageLayoutError, PackageRepo,
                                        PypiConfig, SdistError, fetch_sdist, load_sdist)
from dagger_jax.envs.tasks.task import Task

# ---------------------------------------------------------------- running its tests (sandboxed)


@dataclasses.dataclass(frozen=True)
class PytestRun:
    """One pytest run in the sandbox: its whole log (read from a file, not the capped output)."""

    statuses: Mapping[str, str]        # test id -> PASSED / FAILED / ERROR / ...
    log: str
    seconds: float
    timed_out: bool

    def passed(self) -> set[str]:
        # An id with a space in its parameters reaches the parser cut at the space (and may
        # collide with another): such ids cannot be graded reliably, so none is ever used.
        return {t for t, s in self.statuses.items() if s == "PASSED" and ("[" not in t or t.endswith("]"))}

    def broken_files(self) -> set[str]:
        """Test files that errored as a whole (collection: an import failed)."""
        return {t for t, s in self.statuses.items() if s == "ERROR" and "::" not in t}


def run_pytest(sandbox: Sandbox, repo: PackageRepo, targets: Sequence[str], timeout_s: float,
               extra: str = "") -> PytestRun:
    """Runs pytest on `targets` (test files) in /testbed; a hang is a timed-out run."""
    args = " ".join(shlex.quote(t) for t in targets)
    start = time.perf_counter()
    result = sandbox.run(f"cd /testbed && {repo.env()}{PYTEST} {extra} {args} > {LOG} 2>&1",
                         timeout_s=timeout_s)
    log = sandbox.read_file(LOG)
    return PytestRun(PARSER_REGISTRY["parse_log_pytest"](log, None), log,
                     time.perf_counter() - start, result.timed_out)


def _test_file(test_id: str) -> str:
    return test_id.split("::", 1)[0]


def _failure_excerpt(log: str, test_id: str, max_chars: int = 1500) -> str:
    """The end of a test's failure block in a --tb=short log, or its summary line."""
    head = ".".join(test_id.split("::")[1:])
    blocks = re.split(r"^_{3,} (.+?) _{3,}$", log, flags=re.MULTILINE)
    for title, body in zip(blocks[1::2], blocks[2::2]):
        if title == head:
            lines = re.split(r"^=+ ", body, maxsplit=1, flags=re.MULTILINE)[0].strip().splitlines()
            return "\n".join(lines[-20:])[-max_chars:]
    lines = [line for line in log.splitlines() if line.split()[1:2] == [test_id]]
    return (lines[0] if lines else f"{test_id} fails")[-max_chars:]


def line_diff(path: str, before: str, after: str, context: int = 3) -> str:
    """A `git apply`-able one-hunk patch of the changed lines (difflib's matcher can pair up
    look-alike functions and turn a one-line edit into a diff of hundreds of lines)."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    lo, a_hi, b_hi = max(start - context, 0), len(a) - end, len(b) - end
    tail = a[a_hi:min(a_hi + context, len(a))]
    hunk = ([" " + x for x in a[lo:start]] + ["-" + x for x in a[start:a_hi]]
            + ["+" + x for x in b[start:b_hi]] + [" " + x for x in tail])
    header = f"@@ -{lo + 1},{a_hi + len(tail) - lo} +{lo + 1},{b_hi + len(tail) - lo} @@\n"
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n{header}{''.join(hunk)}"


# ---------------------------------------------------------------- injecting the bug


@dataclasses.dataclass(frozen=True)
class _Baseline:
    run: PytestRun
    passed: frozenset[str]
    runnable_files: tuple[str, ...]    # test files that collect and have a passing test
    whole_suite: bool                  # quick enough to be every task's test command


def _gist(log: str) -> str:
    """What a failed run says in a few lines: its first errors and its closing count."""
    lines = log.strip().splitlines()
    errors = [line for line in lines if line.startswith("E   ")][:4]
    closing = [line for line in lines[-3:] if line.startswith("=")]
    return "\n".join(errors + closing or lines[-8:])


def _file_by_file(sandbox: Sandbox, repo: PackageRepo, config: PypiConfig) -> PytestRun:
    """The suite one test file at a time, so a slow or hanging file costs only itself."""
    statuses: dict[str, str] = {}
    logs, seconds = [], 0.0
    deadline = time.perf_counter() + config.baseline_budget_s
    for path in repo.test_files:
        left = deadline - time.perf_counter()
        if left < 5:
            break
        run = run_pytest(sandbox, repo, [path], min(config.test_timeout_s / 4, left),
                         extra="--continue-on-collection-errors")
        seconds += run.seconds
        if not run.timed_out:
            statuses.update(run.statuses)
            logs.append(run.log)
    return PytestRun(statuses, "\n".join(logs), seconds, timed_out=False)


def _baseline(sandbox: Sandbox, repo: PackageRepo, config: PypiConfig) -> _Baseline | str:
    run = run_pytest(sandbox, repo, repo.test_files, config.test_timeout_s,
                     extra="--continue-on-collection-errors")
    if run.timed_out:
        run = _file_by_file(sandbox, repo, config)
    broken = run.broken_files()
    passed = frozenset(t for t in run.passed() if _test_file(t) not in broken)
    if not passed:
        return f"baseline tests do not pass in the sandbox (none passed):\n{_gist(run.log)}"
    runnable = tuple(sorted({_test_file(t) for t in passed}))
    whole = run.seconds <= config.whole_suite_s and len(" ".join(runnable)) <= 2000
    return _Baseline(run, passed, runnable, whole)


def _rng(repo: PackageRepo, seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"pypi/{repo.name}/{repo.version}/{split}/{seed}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _candidates(repo: PackageRepo, baseline: _Baseline) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """(file, function, def line, test files that mention it) for every function some runnable
    test file names: an unnamed function's bug is rarely caught, so it would waste a trial."""
    words = {f: set(re.findall(r"\w+", repo.files[f])) for f in baseline.runnable_files}
    out = []
    for path in repo.source_files:
        try:
            tree = ast.parse(repo.files[path])
        except SyntaxError:
            continue  # e.g. a Python 2-only module: the tests cannot import it either
        for qualname, node in sm.functions(tree):
            parts = qualname.split(".")
            word = parts[-2] if parts[-1].startswith("__") and len(parts) > 1 else parts[-1]
            mentions = tuple(f for f, names in words.items() if word in names)
            if mentions:
                out.append((path, qualname, node.lineno, mentions))
    return out


@dataclasses.dataclass(frozen=True)
class _Found:
    path: str
    mutation: sm.SourceMutation
    buggy: str
    run: PytestRun                     # of the task's test files, with the bug
    targets: tuple[str, ...]           # the test files the task's command runs
    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]
    trials: int


def _judge(run: PytestRun, baseline: _Baseline, files: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(broken, still passing) baseline-passing tests of `files`; None when the run hung or
    lost tests (the bug broke an import: not the kind of task we want)."""
    expected = {t for t in baseline.passed if _test_file(t) in files}
    if run.timed_out or run.broken_files() or not expected <= set(run.statuses):
        return None
    broken = sorted(t for t in expected if run.statuses[t] in ("FAILED", "ERROR"))
    return broken, sorted(t for t in expected if run.statuses[t] == "PASSED")


def _try(sandbox: Sandbox, repo: PackageRepo, baseline: _Baseline, path: str,
         mutation: sm.SourceMutation, buggy: str, mentions: tuple[str, ...],
         timeout_s: float) -> tuple[PytestRun, tuple[str, ...], list[str], list[str]] | None:
    """Runs the tests against the mutant (the sandbox file is restored after): (run, the task's
    test files, F2P, P2P) when it breaks baseline-passing tests and nothing else, else None."""
    sandbox.write_file(f"/testbed/{path}", buggy)
    try:
        run = run_pytest(sandbox, repo, mentions, timeout_s)
        judged = _judge(run, baseline, mentions)
        if not judged or not judged[0]:
            return None
        targets = baseline.runnable_files if baseline.whole_suite else \
            tuple(sorted({_test_file(t) for t in judged[0]}))
        if targets != mentions:  # the task's own test files decide F2P and P2P
            run = run_pytest(sandbox, repo, targets, timeout_s)
            judged = _judge(run, baseline, targets)
        return (run, targets, *judged) if judged and judged[0] else None
    finally:
        sandbox.write_file(f"/testbed/{path}", repo.files[path])


def _search(sandbox: Sandbox, repo: PackageRepo, baseline: _Baseline, rng: random.Random,
            used: set, config: PypiConfig) -> Iterator[_Found]:
    """Mutations that break baseline-passing tests and nothing else, at most max_trials tried."""
    candidates = _candidates(repo, baseline)
    rng.shuffle(candidates)
    timeout = min(config.test_timeout_s, max(30.0, 5 * baseline.run.seconds))
    trials = 0
    for path, qualname, line, mentions in candidates:
        if trials >= config.max_trials:
            return
        source = repo.files[path]
        mutations = [m for m in sm.candidate_mutations(source, qualname, line)
                     if (path, m.function, m.function_line, m.operator, m.site) not in used]
        if not mutations:
            continue
        # Operator first: else the many variable-swap sites would crowd out the rest.
        operator = rng.choice(sorted({m.operator for m in mutations}))
        mutation = rng.choice([m for m in mutations if m.operator == operator])
        try:
            buggy = sm.apply_mutation(source, mutation)
        except sm.MutationError:
            continue  # an edit that would change more than meant: not a trial
        trials += 1
        used.add((path, mutation.function, mutation.function_line, mutation.operator, mutation.site))
        caught = _try(sandbox, repo, baseline, path, mutation, buggy, mentions, timeout)
        if caught:
            run, targets, f2p, p2p = caught
            yield _Found(path, mutation, buggy, run, targets, tuple(f2p), tuple(p2p), trials)


# ---------------------------------------------------------------- the task


def _statement(repo: PackageRepo, found: _Found, command: str, name_function: bool) -> str:
    example, others = found.fail_to_pass[0], found.fail_to_pass[1:]
    more = ""
    if others:
        listed = ", ".join(f"`{t}`" for t in others[:3])
        more = f"\n\n{len(others)} other test(s) fail as well, e.g. {listed}."
    where = (f"\n\nThe problem seems to be in `{found.mutation.function}` (`{found.path}`)."
             if name_function else "")
    return (f"{repo.name} {repo.version}: `{example}` fails\n\n"
            f"The test `{example}` fails:\n\n```\n{_failure_excerpt(found.run.log, example)}\n```"
            f"{more}{where}\n\nThese tests passed before; the tests are right and the package's "
            f"code is wrong. Please fix it. Run the tests with:\n\n    {command}\n")


def _check(task: Task, backend: SandboxBackend, timeout_s: float) -> str | None:
    """Grades the task at its base state (F2P must fail, P2P pass) and with the gold patch
    (resolved), the way an episode is graded; None when both hold, else what went wrong."""
    with tempfile.TemporaryDirectory(prefix="dagger_jax-pypi-check-") as tmp:
        spec = SandboxSpec(image=DEFAULT_RECIPE.image, repo_dir=materialize_repo(task, Path(tmp) / "repo"))
        with backend.open(spec) as sandbox:
            _, report = verdict(task, run_tests(sandbox, task, timeout_s))
            if report[FAIL_TO_PASS]["success"] or report[PASS_TO_PASS]["failure"]:
                return (f"at the base state {len(report[FAIL_TO_PASS]['success'])} FAIL_TO_PASS "
                        f"test(s) pass and {len(report[PASS_TO_PASS]['failure'])} PASS_TO_PASS "
                        "test(s) fail: flaky tests?")
            sandbox.write_file("/tmp/gold.patch", task.gold_patch)
            applied = sandbox.run("cd /testbed && git apply /tmp/gold.patch", timeout_s=60)
            if applied.exit_code != 0:
                return f"the gold patch does not apply: {applied.output[-300:]}"
            result = grade(sandbox, task, timeout_s)
            if not result.resolved:
                return (f"the gold patch does not resolve the task ({result.status}: FAIL_TO_PASS "
                        f"{result.fail_to_pass_passed}/{result.fail_to_pass_total}, PASS_TO_PASS "
                        f"{result.pass_to_pass_passed}/{result.pass_to_pass_total})"
                        f"{': ' + result.error if result.error else ''}")
    return None


def _task(repo: PackageRepo, found: _Found, baseline: _Baseline, index: int, seed: int,
          split: str, config: PypiConfig) -> Task:
    command = f"{repo.env()}{PYTEST} {' '.join(shlex.quote(t) for t in found.targets)}"
    return Task(
        instance_id=f"pypi-{repo.name}-{repo.version}-{split}-{seed}-{index}",
        source="pypi",
        problem_statement=_statement(repo, found, command, config.name_function),
        fail_to_pass=found.fail_to_pass, pass_to_pass=found.pass_to_pass,
        test_files=repo.restored_files, test_command=command, split=split,
        repo_files={**repo.files, found.path: found.buggy},
        gold_patch=line_diff(found.path, found.buggy, repo.files[found.path]),
        metadata={"package": repo.name, "version": repo.version, "sdist": repo.sdist,
                  "sdist_sha256": repo.sha256, "target_file": found.path,
                  "target_function": found.mutation.function,
                  "mutation": dataclasses.asdict(found.mutation), "trials": found.trials,
                  "baseline_passed": len(baseline.passed)})


def _build_one(sandbox: Sandbox, backend: SandboxBackend, repo: PackageRepo, baseline: _Baseline,
               index: int, seed: int, split: str, used: set, config: PypiConfig) -> Task | str:
    """Task `index`, or why there is none: the first caught mutation whose task grades right."""
    started, problem = time.perf_counter(), None
    for found in _search(sandbox, repo, baseline, _rng(repo, seed, split, index), used, config):
        task = _task(repo, found, baseline, index, seed, split, config)
        problem = _check(task, backend, config.test_timeout_s)
        if problem is None:
            seconds = round(time.perf_counter() - started, 2)
            return dataclasses.replace(task, metadata={**task.metadata, "build_seconds": seconds})
    if problem:
        return f"the last caught mutation's task did not grade right: {problem}"
    return (f"no mutation of a function the tests name (at most {config.max_trials} tried) made "
            "a baseline-passing test fail without breaking collection")


def build_tasks(requirement: str, n: int, seed: int, backend: SandboxBackend, split: str = "train",
                config: PypiConfig = PypiConfig()) -> list[Task | BuildFailure]:
    """`n` tasks from one package (NAME, NAME==VERSION or an sdist path), each a Task or the
    recorded reason it could not be made; never raises for a bad package."""
    def fail_all(reason: str, start: int = 0) -> list[Task | BuildFailure]:
        return [BuildFailure(requirement, i, reason) for i in range(start, n)]

    try:
        repo = load_sdist(fetch_sdist(requirement, config.cache_dir, config.index_url), config)
    except (SdistError, PackageLayoutError) as e:
        return fail_all(str(e))
    out: list[Task | BuildFailure] = []
    used: set = set()  # (file, function, line, operator, site): n tasks, n different bugs
    try:
        with tempfile.TemporaryDirectory(prefix="dagger_jax-pypi-") as tmp:
            for rel, text in repo.files.items():
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / rel).write_text(text)
            # One sandbox for the package: each trial writes its mutant and restores the file.
            with backend.open(SandboxSpec(image=DEFAULT_RECIPE.image, repo_dir=Path(tmp))) as sandbox:
                baseline = _baseline(sandbox, repo, config)
                if isinstance(baseline, str):
                    return fail_all(baseline)
                for index in range(n):
                    try:
                        built = _build_one(sandbox, backend, repo, baseline, index, seed, split, used, config)
                    except SandboxError:
                        raise
                    except Exception as e:  # noqa: BLE001 - a fault is this task's recorded reason
                        built = f"building failed: {type(e).__name__}: {e}"
                    out.append(built if isinstance(built, Task) else BuildFailure(requirement, index, built))
    except SandboxError as e:
        return out + fail_all(f"sandbox failed: {e.reason}", start=len(out))
    except Exception as e:  # noqa: BLE001 - e.g. a log that cannot be read: this package's reason
        return out + fail_all(f"building failed: {type(e).__name__}: {e}", start=len(out))
    return out
