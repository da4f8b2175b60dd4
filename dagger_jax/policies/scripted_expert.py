"""The scripted expert: a privileged teacher that acts toward the fix from any state.

It knows the task's base state (its files, or the image's base commit) and gold patch, so it
knows what every file should finally contain. Each turn it reads the sandbox (git status and
the files that matter) and takes the next step of a plain plan: repair damage (restore deleted
or broken files, remove junk), view the file with the bug (again after a refused edit, unless
the refusal showed the lines to replace; after a look at a file without the bug, first search
for the function the issue names), make the fix with one small str_replace, run the tests,
finish. Because it decides from the sandbox, not from its own past, it recovers from
whatever state a student leaves: a wrong edit, a deleted file, broken syntax, edited tests, a
premature test run.
"""

from __future__ import annotations

import difflib
import shlex
from typing import Sequence

import unidiff

from dagger_jax.agent import ToolCall, parse_action, render_action
from dagger_jax.envs.sandbox.base import Sandbox, SandboxFileError
from dagger_jax.envs.tasks.task import Task
from dagger_jax.policies.base import AgentState
from dagger_jax.policies.patching import apply_patch

REPO = "/testbed"
_IGNORED = ("__pycache__", ".pytest_cache", ".pyc")


def _base_file(sandbox: Sandbox, path: str) -> str | None:
    """The file at the repo's base commit (None: not in it), read inside the sandbox."""
    result = sandbox.run(f"cd {REPO} && git cat-file -e HEAD:{shlex.quote(path)} 2>/dev/null "
                         f"&& git show HEAD:{shlex.quote(path)} > /tmp/dagger_jax_base_file",
                         timeout_s=30)
    return sandbox.read_file("/tmp/dagger_jax_base_file") if result.exit_code == 0 else None


class _Solution:
    """What each file of the solved repo holds: the base state plus the gold patch.

    Generated tasks carry their base files; image tasks (SWE-bench style) have them only in
    the image, so those are read from the sandbox's base commit, which no edit can change.
    """

    def __init__(self, task: Task, sandbox: Sandbox):
        if task.gold_patch is None:
            raise ValueError(f"the scripted expert needs a gold patch; task {task.instance_id} has none")
        self._task, self._sandbox = task, sandbox
        self._base: dict[str, str | None] = dict(task.repo_files or {})
        touched = [p.path for p in unidiff.PatchSet(task.gold_patch)]
        sources = {path: base for path in touched if (base := self.base(path)) is not None}
        self.fixed = apply_patch(sources, task.gold_patch)
        self.targets = sorted(self.fixed)

    def base(self, path: str) -> str | None:
        if self._task.repo_files is not None:
            return self._task.repo_files.get(path)
        if path not in self._base:
            self._base[path] = _base_file(self._sandbox, path)
        return self._base[path]

    def wanted(self, path: str) -> str | None:
        return self.fixed[path] if path in self.fixed else self.base(path)


def changed_paths(sandbox: Sandbox) -> list[str]:
    """Paths git sees as changed, deleted or new under /testbed (caches ignored)."""
    result = sandbox.run(f"cd {REPO} && git status --porcelain --untracked-files=all", timeout_s=30)
    if result.exit_code != 0:
        raise RuntimeError(f"git status failed in {REPO}: {result.output[-300:]}")
    paths = []
    for line in result.output.splitlines():
        path = line[3:].split(" -> ")[-1].strip().strip('"')
        if path and not any(part in path for part in _IGNORED):
            paths.append(path)
    return paths


def _read(sandbox: Sandbox, path: str) -> str | None:
    try:
        return sandbox.read_file(f"{REPO}/{path}")
    except SandboxFileError:
        return None


def minimal_replacement(current: str, desired: str) -> tuple[str, str]:
    """(old_str, new_str) for one str_replace that moves `current` toward `desired`.

    Takes the first differing block of lines and widens it with context until old_str occurs
    exactly once in `current` (the editor refuses an ambiguous old_str).
    """
    cur, des = current.splitlines(keepends=True), desired.splitlines(keepends=True)
    opcodes = [op for op in difflib.SequenceMatcher(a=cur, b=des, autojunk=False).get_opcodes()
               if op[0] != "equal"]
    _, i1, i2, j1, j2 = opcodes[0]
    before = after = 0
    while True:
        old = "".join(cur[i1 - before:i2 + after])
        if old and current.count(old) == 1:
            return old, "".join(des[j1 - before:j2 + after])
        if i1 - before > 0:
            before += 1
        elif i2 + after < len(cur):
            after += 1
        else:  # the whole file is the block: replace all of it
            return current, desired


def _executed_calls(messages: Sequence[dict[str, str]]) -> list[tuple[ToolCall, str]]:
    """Each parsed assistant call with the observation that answered it ("" if none yet)."""
    calls = []
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            parsed = parse_action(message.get("content") or "")
            if parsed.ok:
                answer = messages[i + 1] if i + 1 < len(messages) else {}
                observation = (answer.get("content") or "") if answer.get("role") == "tool" else ""
                calls.append((parsed.call, observation))
    return calls


def _shows_lines(observation: str, text: str) -> bool:
    """Whether `observation` lists every line of `text` in `cat -n` form (a number, a tab)."""
    listed = {line.split("\t", 1)[1] for line in observation.splitlines()
              if "\t" in line and line.split("\t", 1)[0].strip().isdigit()}
    return all(line in listed for line in text.splitlines())


def _needs_view(calls: Sequence[tuple[ToolCall, str]], full_path: str, old_str: str) -> bool:
    """True until the file is viewed, and again after an edit of it that the editor refused,
    unless the refusal itself listed the lines the expert is about to replace (the editor's
    miss hint).

    A refused str_replace means the agent's picture of the file was wrong; like a careful
    engineer (or an LLM teacher) the expert reads the file again before the next attempt, so
    the recovery it teaches a student (DAgger labels states the expert never reaches itself)
    puts the exact text to copy right before the retry.
    """
    needs = True
    for call, observation in calls:
        if call.name != "str_replace_editor" or call.params.get("path") != full_path:
            continue
        if call.params.get("command") == "view":
            needs = False
        elif observation.startswith("ERROR:"):
            needs = not _shows_lines(observation, old_str)
    return needs


def _is_search(call: ToolCall) -> bool:
    return call.name == "execute_bash" and call.params.get("command", "").startswith("grep ")


def _looked_elsewhere(calls: Sequence[tuple[ToolCall, str]], full_targets: set[str]) -> bool:
    """Whether the agent's latest look was a view of a file that holds no part of the fix,
    with no search since (a student that guessed the wrong module)."""
    for call, _ in reversed(calls):
        if call.name == "str_replace_editor" and call.params.get("command") == "view":
            return call.params.get("path") not in full_targets
        if _is_search(call):
            return False
    return False


def _search_hit(calls: Sequence[tuple[ToolCall, str]], path: str) -> bool:
    """Whether the latest call was a grep whose output lists a hit in `path` (as `./PATH:`)."""
    if not calls:
        return False
    call, observation = calls[-1]
    return _is_search(call) and f"./{path}:" in observation


def _view_thought(path: str, function: str | None, after_hit: bool) -> str:
    """The thought before a view of the file with the bug.

    Each thought repeats a name from close above, the kind of copy a small student learns: after
    a search, the hit as grep printed it (`./PATH`; with the first-look phrase students viewed
    their own earlier, wrong file again); on a first look, the function the issue names, so every
    episode practises the copy a recovery's search needs (docs/studies/06-decoy-family.md).
    """
    if after_hit:
        return f"The search found it in `./{path}`; viewing it."
    if function:
        return f"The issue is about `{function}`; let me look at `{path}`."
    return f"Let me look at `{path}`, where the problem should be."


def definition_search(function: str) -> str:
    """The shell command that finds where `function` is defined: each hit is printed as
    `./PATH:LINE:def NAME(...)`, so the next view copies its path from the latest observation."""
    return f'grep -rn --include=*.py "def {function}(" .'


# Lists every function defined outside the tests, each as `./PATH:LINE:def NAME(...)`.
DEFINITIONS_LISTING = 'grep -rn --include=*.py --exclude-dir=tests "def " .'

# How the expert looks a function up after the agent opened a file without the bug:
# "function" greps for the name the issue gives (the student must copy it from the issue);
# "definitions" lists all definitions (a fixed command; the student picks the hit). A student
# trained from scratch writes a memorised synonym for the name (`in_order` where it
# says `is_sorted`) and its search finds nothing (docs/studies/06-decoy-family.md).
SEARCHES = ("function", "definitions")


class ScriptedExpert:
    """Acts toward the gold solution from the sandbox's current state."""

    name = "expert"

    def __init__(self, search: str = "function"):
        if search not in SEARCHES:
            raise ValueError(f"ScriptedExpert search={search!r}: choose from {SEARCHES}")
        self.search = search

    def act(self, state: AgentState) -> str:
        task, sandbox = state.task, state.sandbox
        solution = _Solution(task, sandbox)
        targets = solution.targets
        calls = _executed_calls(state.messages)
        changed = set(changed_paths(sandbox))
        # Damage first (files the fix does not touch), then the fix itself.
        for path in sorted(changed - set(targets)) + targets:
            current, wanted = _read(sandbox, path), solution.wanted(path)
            if current == wanted:
                continue
            if wanted is None:
                return render_action(ToolCall("execute_bash", {"command": f"rm -f {shlex.quote(path)}"}),
                                     f"`{path}` is not part of the project; removing it.")
            full = f"{REPO}/{path}"
            if current is None:
                return render_action(
                    ToolCall("str_replace_editor", {"command": "create", "path": full, "file_text": wanted}),
                    f"`{path}` is missing; restoring it.")
            old, new = minimal_replacement(current, wanted)
            if path in targets and _needs_view(calls, full, old):
                function = (task.metadata or {}).get("target_function")
                if function and _looked_elsewhere(calls, {f"{REPO}/{t}" for t in targets}):
                    # The agent opened a file without the bug (one the issue does not name). A
                    # search for the function the issue names shows where it lives; guessing
                    # another file would teach a student to guess.
                    command, thought = (
                        (DEFINITIONS_LISTING, "listing the project's functions")
                        if self.search == "definitions"
                        else (definition_search(function), f"searching for `{function}`"))
                    return render_action(ToolCall("execute_bash", {"command": command}),
                                         f"The bug is not in that file; {thought}.")
                return render_action(ToolCall("str_replace_editor", {"command": "view", "path": full}),
                                     _view_thought(path, function, _search_hit(calls, path)))
            # The fix's thought names the file as the view printed it just above, so the edit's
            # path is copied from there, not from the first (perhaps wrong) file looked at.
            reason = (f"The bug is in {full}; fixing it." if path in targets
                      else f"`{path}` was changed by mistake; restoring this part.")
            return render_action(ToolCall("str_replace_editor", {
                "command": "str_replace", "path": full, "old_str": old, "new_str": new}), reason)
        last = calls[-1][0] if calls else None
        ran_tests = (last is not None and last.name == "execute_bash"
                     and last.params.get("command") == task.test_command)
        if ran_tests or not task.test_command:  # image tasks test through their eval script only
            return render_action(ToolCall("finish", {}), "The fix is complete.")
        return render_action(ToolCall("execute_bash", {"command": task.test_command}),
                             "Running the tests to check the fix.")
