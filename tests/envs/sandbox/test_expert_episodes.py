"""Whole episodes in real sandboxes, on the collector's episode loop: the expert resolves every
task, from clean and damaged states; noop resolves none; a fault ends only its own episode.

The whole flow runs on both backends; the episode logic (refused edits, hints, turn limits,
wrong first looks) on bubblewrap only, since it does not depend on the backend (each backend's
own behaviour is pinned by test_editor.py and test_sandbox_behaviour.py); docker's faults
(a missing image, a killed container) on docker."""

from __future__ import annotations

import random

import pytest

from dagger_jax.agent import parse_action
from dagger_jax.envs.corruption import corrupt
from dagger_jax.envs.tasks.synthetic import Difficulty, generate_tasks
from dagger_jax.policies.actors import NoopActor
from dagger_jax.policies.base import AgentState
from dagger_jax.policies.scripted_expert import ScriptedExpert, minimal_replacement

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

TASKS = generate_tasks(6, seed=41, difficulty=Difficulty(files=2, functions_per_file=2, distractors=1))


def test_expert_resolves_all_and_noop_none(backend, run_episode):
    expert = [run_episode(t, ScriptedExpert(), backend) for t in TASKS]
    noop = [run_episode(t, NoopActor(), backend) for t in TASKS]
    assert [r.resolved for r in expert] == [True] * len(TASKS), [r.summary() for r in expert]
    assert all(r.end_reason == "finish" and r.turns == 4 for r in expert)
    assert not any(r.resolved for r in noop)
    assert all(r.outcome.fail_to_pass_passed == 0 for r in noop)


def test_the_same_episode_twice_gives_the_same_observations(bwrap_backend, run_episode):
    # Two runs that collect the same teacher episode (SFT's and DAgger's, a resumed job) must
    # record the same tokens: no wall-clock time in what the tools print.
    first, second = (run_episode(TASKS[1], ScriptedExpert(), bwrap_backend) for _ in range(2))
    assert first.messages == second.messages
    test_logs = [m["content"] for m in first.messages if m["role"] == "tool" and "PASSED " in m["content"]]
    assert test_logs and all("FAILED " not in log for log in test_logs), test_logs
    assert first.resolved and second.resolved


def test_expert_recovers_from_random_wrong_edits(bwrap_backend, run_episode):
    rng = random.Random(7)
    results, damage = [], []
    for task in TASKS:
        def setup(sandbox, task=task):
            damage.append(corrupt(sandbox, task, rng, edits=3))
        results.append(run_episode(task, ScriptedExpert(), bwrap_backend, setup=setup))
    assert all(r.resolved for r in results), [(r.summary(), d) for r, d in zip(results, damage)]
    kinds = {edit.split()[0] for edits in damage for edit in edits}
    assert len(kinds) >= 4, kinds  # the damage really varied
    # Repairs cost turns: the damaged episodes are longer than the clean 4-turn ones.
    assert sum(r.turns for r in results) > 4 * len(TASKS)


def test_unparseable_turns_are_observations_and_the_episode_goes_on(bwrap_backend, run_episode):
    class Mumbler:
        name = "mumbler"

        def __init__(self):
            self.expert = ScriptedExpert()
            self.turn = 0

        def act(self, state: AgentState) -> str:
            self.turn += 1
            return "I am not sure what to do." if self.turn == 1 else self.expert.act(state)

    result = run_episode(TASKS[0], Mumbler(), bwrap_backend)
    assert result.resolved and result.turns == 5
    assert result.messages[3]["role"] == "tool" and result.messages[3]["content"].startswith("ERROR:")


class Miscopier:
    """Views, then tries a str_replace whose old_str is not in the file, then lets the expert act."""

    name = "miscopier"

    def __init__(self, wrong_old_str):
        self.expert = ScriptedExpert()
        self.wrong_old_str = wrong_old_str  # from the expert's old_str
        self.turn = 0

    def act(self, state: AgentState) -> str:
        self.turn += 1
        action = self.expert.act(state)
        if self.turn == 2:
            old = parse_action(action).call.params["old_str"]
            return action.replace(old, self.wrong_old_str(old), 1)
        return action


def test_after_a_refused_edit_the_expert_reads_the_file_again(bwrap_backend, run_episode):
    result = run_episode(TASKS[0], Miscopier(lambda old: "no such line\n" + old), bwrap_backend)
    tools = [m["content"] for m in result.messages if m["role"] == "tool"]
    assistant = [m["content"] for m in result.messages if m["role"] == "assistant"]
    assert tools[1].startswith("ERROR: No replacement was performed")
    assert "<parameter=command>\nview\n" in assistant[2]  # re-read, not a blind retry
    assert "<parameter=command>\nstr_replace\n" in assistant[3]
    assert result.resolved and result.turns == 6  # view, refused edit, view, edit, test, finish


def test_a_refusal_that_shows_the_lines_to_replace_needs_no_second_view(bwrap_backend, run_episode):
    # One character off: the editor's miss hint lists the real line, so the expert edits at once.
    def off_by_one_char(old):
        return old.replace(" ", "  ", 1)

    hinted = run_episode(TASKS[0], Miscopier(off_by_one_char), bwrap_backend, edit_miss_hint=True)
    tools = [m["content"] for m in hinted.messages if m["role"] == "tool"]
    assistant = [m["content"] for m in hinted.messages if m["role"] == "assistant"]
    assert "Did you mean to match these actual lines" in tools[1]
    assert "<parameter=command>\nstr_replace\n" in assistant[2]
    assert hinted.resolved and hinted.turns == 5  # view, refused edit, edit, test, finish
    # A hint that misses the lines the fix needs (nothing alike: none at all) still means a view.
    far = run_episode(TASKS[0], Miscopier(lambda old: "zzzz qqqq\n"), bwrap_backend, edit_miss_hint=True)
    far_calls = [m["content"] for m in far.messages if m["role"] == "assistant"]
    assert "<parameter=command>\nview\n" in far_calls[2] and far.resolved and far.turns == 6


def test_turn_limit_and_policy_errors_end_the_episode_with_a_reason(bwrap_backend, run_episode):
    limited = run_episode(TASKS[0], ScriptedExpert(), bwrap_backend, max_turns=1)  # only looked
    assert limited.end_reason == "turn_limit" and limited.turns == 1 and not limited.resolved
    # Grading judges the repository, as the harness does: fixed but unfinished still resolves.
    fixed = run_episode(TASKS[0], ScriptedExpert(), bwrap_backend, max_turns=2)
    assert fixed.end_reason == "turn_limit" and fixed.resolved

    class Crashing:
        name = "crashing"

        def act(self, state):
            raise RuntimeError("model server went away")

    crashed = run_episode(TASKS[0], Crashing(), bwrap_backend)  # it acts in the teacher's seat
    assert crashed.end_reason == "teacher_error" and "model server went away" in crashed.error


def test_a_missing_image_is_the_machinerys_fault_not_an_outcome(docker_backend, run_episode):
    from dagger_jax.rollout.faults import InfrastructureFault

    task = TASKS[0].__class__(**{**TASKS[0].__dict__, "image": "dagger-jax/no-such-image:1"})
    with pytest.raises(InfrastructureFault, match="no-such-image"):
        run_episode(task, ScriptedExpert(), docker_backend)


def test_minimal_replacement_is_unique_and_small():
    current = "a = 1\nb = 2\na = 1\nc = 3\n"
    desired = "a = 1\nb = 2\na = 5\nc = 3\n"
    old, new = minimal_replacement(current, desired)
    assert current.count(old) == 1 and current.replace(old, new) == desired
    assert len(old.splitlines()) <= 2


def test_a_container_killed_mid_episode_ends_only_that_episode(docker_backend, run_episode):
    import docker

    class KillsItsContainer:
        """Acts like the expert, but the container dies (from outside) before turn 2."""

        name = "killer"

        def __init__(self):
            self.expert, self.turn = ScriptedExpert(), 0

        def act(self, state):
            self.turn += 1
            if self.turn == 2:
                docker.from_env().containers.get(state.sandbox.container_id).kill()
            return self.expert.act(state)

    from dagger_jax.rollout.faults import InfrastructureFault

    with pytest.raises(InfrastructureFault, match="died"):  # never recorded as the agent's end
        run_episode(TASKS[0], KillsItsContainer(), docker_backend)
    after = run_episode(TASKS[1], ScriptedExpert(), docker_backend)  # the run goes on
    assert after.resolved


DECOY_TASK = generate_tasks(1, seed=5, difficulty=Difficulty(
    templates=4, bug_kinds=("compare", "arith"), functions_per_file=1, packages=1,
    numbered_packages=False, modules=2, hide_location=True, decoys=1))[0]


def _after_a_wrong_guess(run_episode, backend, search: str):
    """An episode whose first look opens the decoy, the expert acting from then on; the
    tools' and the assistant's messages, and the result."""
    task = DECOY_TASK
    decoy = next(p for p in task.repo_files if p.startswith("ledger/") and p != task.metadata["target_file"]
                 and p != "ledger/__init__.py")

    class WrongGuess:
        name = "wrong-guess"

        def __init__(self):
            self.expert, self.turn = ScriptedExpert(search=search), 0

        def act(self, state: AgentState) -> str:
            self.turn += 1
            if self.turn == 1:
                return self.expert.act(state).replace(task.metadata["target_file"], decoy)
            return self.expert.act(state)

    result = run_episode(task, WrongGuess(), backend)
    tools = [m["content"] for m in result.messages if m["role"] == "tool"]
    assistant = [m["content"] for m in result.messages if m["role"] == "assistant"]
    return decoy, tools, assistant, result


def test_after_a_student_opens_the_decoy_the_expert_opens_the_file_with_the_bug(bwrap_backend, run_episode):
    task = DECOY_TASK
    decoy, tools, assistant, result = _after_a_wrong_guess(run_episode, bwrap_backend, "function")
    target, function = task.metadata["target_file"], task.metadata["target_function"]
    assert f"/testbed/{decoy}" in assistant[0] and "def " not in tools[0] and " = " in tools[0]
    # Not a second guess: a search for the function the issue names, whose hit names the file.
    assert f'<parameter=command>\ngrep -rn --include=*.py "def {function}(" .\n' in assistant[1]
    assert tools[1].startswith(f"./{target}:1:def {function}("), tools[1]
    assert f"/testbed/{target}" in assistant[2] and "def " in tools[2]
    # The view's thought quotes the hit as printed (the path to copy), not the first-look phrase.
    assert assistant[2].startswith(f"The search found it in `./{target}`"), assistant[2]
    # The first look's thought repeats the function; the fix's names the file as the
    # view printed it just above it, not the decoy looked at first.
    assert assistant[0].startswith(f"The issue is about `{function}`; let me look at `{decoy}`"), assistant[0]
    assert tools[2].startswith(f"Here's the result of running `cat -n` on /testbed/{target}:"), tools[2]
    assert assistant[3].startswith(f"The bug is in /testbed/{target}; fixing it."), assistant[3]
    assert result.resolved and result.turns == 6  # decoy, search, view, edit, test, finish
    # The expert alone never searches: it knows where the bug is.
    alone = run_episode(task, ScriptedExpert(), bwrap_backend)
    assert alone.resolved and alone.turns == 4
    assert not any("grep" in m["content"] for m in alone.messages if m["role"] == "assistant")


def test_the_definitions_search_lists_the_functions_outside_the_tests(bwrap_backend, run_episode):
    # A fixed command (nothing to copy from the issue) whose only hit here is the function
    # with the bug; the view and the fix follow as after a search for the name.
    target, function = DECOY_TASK.metadata["target_file"], DECOY_TASK.metadata["target_function"]
    _, tools, assistant, result = _after_a_wrong_guess(run_episode, bwrap_backend, "definitions")
    assert '<parameter=command>\ngrep -rn --include=*.py --exclude-dir=tests "def " .\n' in assistant[1]
    hits = tools[1].splitlines()[:-1]  # then the exit-code line
    assert len(hits) == 1 and hits[0].startswith(f"./{target}:1:def {function}("), tools[1]
    assert assistant[2].startswith(f"The search found it in `./{target}`"), assistant[2]
    assert result.resolved and result.turns == 6


def test_an_unknown_expert_search_is_refused():
    with pytest.raises(ValueError, match="search='names'.*function.*definitions"):
        ScriptedExpert(search="names")
