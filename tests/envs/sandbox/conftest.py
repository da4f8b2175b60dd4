"""Fixtures for the sandbox tests: a task repo and snapshots (the backends are session fixtures
of tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagger_jax.envs.sandbox import SandboxSpec
from tests.conftest import LIMITS, ROOT  # noqa: F401 - the sandbox tests import them from here


def make_repo(root: Path) -> Path:
    """A tiny task repo: a module, a test, a nested package and a hidden file."""
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "pkg" / "sub" / "deep.txt").write_text("deep\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_calc.py").write_text(
        "from pkg.calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    (root / ".hidden").write_text("secret\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    return root


@pytest.fixture
def task_repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def sandbox(backend, task_repo):
    with backend.open(SandboxSpec(repo_dir=task_repo)) as box:
        yield box


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes, to prove a host repo did not change."""
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


class Ran:
    """One single-actor episode's record, read as the sandbox tests check it."""

    def __init__(self, record):
        self.record = record
        self.outcome = record.outcome
        self.resolved, self.end_reason = record.outcome.resolved, record.outcome.end_reason
        self.error, self.patch = record.outcome.error, record.outcome.patch
        self.turns, self.messages = len(record.turns), record.messages

    def summary(self) -> dict:
        from dagger_jax.rollout.mixed_episode import episode_summary
        return episode_summary(self.record)


@pytest.fixture(scope="session")
def run_episode(chat):
    """run_episode(task, policy, backend, max_turns=30, setup=None, edit_miss_hint=False): one
    episode acted by `policy` alone (an object with act(AgentState) -> text, or an actor) on the
    collector's episode loop."""
    from dagger_jax.policies.actors import ExpertActor
    from dagger_jax.rollout.mixed_episode import EpisodeSettings, run_actor_episode

    def run(task, policy, backend, max_turns=30, setup=None, edit_miss_hint=False) -> Ran:
        actor = policy if hasattr(policy, "act") and _is_async(policy.act) else ExpertActor(policy)
        settings = EpisodeSettings(max_turns=max_turns, context_budget=1 << 30, max_new_tokens=1,
                                   edit_miss_hint=edit_miss_hint)
        return Ran(run_actor_episode(task, actor, backend=backend, chat=chat, settings=settings,
                                     setup=setup))
    return run


def _is_async(function) -> bool:
    import inspect
    return inspect.iscoroutinefunction(function)
