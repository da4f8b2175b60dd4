"""The `str_replace_editor` tool (OpenHands semantics), executed through a Sandbox.

Commands: view (a file with line numbers, optionally a [start, end] range; a directory two
levels deep), create (never overwrites), str_replace (old_str must occur exactly once), insert
(after line `insert_line`, 0 = at the top) and undo_edit (per-file history). Every file access
goes through the sandbox, never the host. Paths must be absolute and inside /testbed. A bad
call is an observation (`EditorResult.error`), not an exception: the agent reads it and tries
again. Only a fault of the sandbox itself (`SandboxError`) propagates.

With `miss_hint`, a str_replace whose old_str is not in the file also shows the file's lines
most like it, as Aider's editor does ("did you mean ..."): the agent can copy the real text
from right before its retry instead of re-reading the whole file.
"""

from __future__ import annotations

import difflib
import json
import posixpath
import shlex
from dataclasses import dataclass
from typing import Any

from dagger_jax.envs.sandbox.base import WORKDIR, Sandbox, SandboxFileError

COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")
SNIPPET_LINES = 4  # context shown around an edit
MAX_OUTPUT_CHARS = 16_000
MISS_HINT_MIN_SIMILARITY = 0.5  # below this the closest lines are noise, not a likely target
CLIPPED_NOTE = ("\n<response clipped><NOTE>Only part of this output is shown. Use `grep -n` "
                "to find the lines you need, then view them with view_range.</NOTE>")


@dataclass(frozen=True)
class EditorResult:
    """The observation of one editor call; `error` marks a call that changed nothing."""

    output: str
    error: bool = False


class _CallError(Exception):
    """A bad call; its message becomes the observation."""


def _printable(text: str) -> str:
    # Files are read with surrogate escapes (so writes keep their bytes); observations are not.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def numbered(text: str, first_line: int = 1) -> str:
    """`cat -n` style: right-aligned line numbers, a tab, the line."""
    return "\n".join(f"{i:6}\t{line}" for i, line in enumerate(text.split("\n"), first_line))


def _lines(text: str) -> list[str]:
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []


def closest_window(text: str, wanted: str) -> tuple[int, str] | None:
    """(first line number, lines) of the window of `text`, as many lines as `wanted` has, most
    similar to `wanted`; None when nothing reaches MISS_HINT_MIN_SIMILARITY."""
    lines, size = _lines(text), max(1, len(_lines(wanted)))
    # Compared without indentation, which would make any two lines of a block look alike.
    target = "\n".join(line.strip() for line in _lines(wanted))
    best, best_ratio = None, MISS_HINT_MIN_SIMILARITY
    for start in range(max(1, len(lines) - size + 1)):
        window = lines[start:start + size]
        ratio = difflib.SequenceMatcher(None, target, "\n".join(line.strip() for line in window),
                                        autojunk=False).ratio()
        if ratio > best_ratio:  # strictly: the first of equally close windows wins
            best, best_ratio = (start + 1, "\n".join(window)), ratio
    return best


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or \
            not str(value).strip().lstrip("-").isdigit():
        raise _CallError(f"Parameter `{name}` must be an integer, got {value!r}.")
    return int(value)


def _as_range(value: Any) -> list[int]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _CallError(f"Parameter `view_range` must be a list of two integers, "
                             f"got {value!r}.") from None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _CallError(f"Parameter `view_range` must be a list of two integers, got {value!r}.")
    return [_as_int("view_range", v) for v in value]


class StrReplaceEditor:
    """One episode's editor: its undo history lives as long as the object."""

    def __init__(self, sandbox: Sandbox, root: str = WORKDIR,
                 max_output_chars: int = MAX_OUTPUT_CHARS, miss_hint: bool = False):
        self.sandbox = sandbox
        self.miss_hint = miss_hint
        self.root = root
        self.max_output_chars = max_output_chars
        # path -> earlier contents, newest last; None = the file did not exist (undo deletes).
        self._history: dict[str, list[str | None]] = {}

    def __call__(self, command: str, path: str, file_text: str | None = None,
                 old_str: str | None = None, new_str: str | None = None,
                 insert_line: int | str | None = None,
                 view_range: list[int] | str | None = None) -> EditorResult:
        try:
            output = self._dispatch(command, path, file_text, old_str, new_str, insert_line,
                                    view_range)
        except _CallError as e:
            return EditorResult(_printable(str(e)), error=True)
        except SandboxFileError as e:
            return EditorResult(_printable(str(e)), error=True)
        output = _printable(output)
        if len(output) > self.max_output_chars:
            output = output[:self.max_output_chars] + CLIPPED_NOTE
        return EditorResult(output)

    def _dispatch(self, command, path, file_text, old_str, new_str, insert_line, view_range) -> str:
        if command not in COMMANDS:
            raise _CallError(f"Unrecognized command {command!r}. The commands of "
                             f"str_replace_editor are: {', '.join(COMMANDS)}.")
        path = self._check_path(path)
        kind = self._kind(path)
        if command == "create":
            if kind != "missing":
                raise _CallError(f"File already exists at: {path}. Cannot overwrite files "
                                 "using command `create`.")
            if file_text is None:
                raise _CallError("Parameter `file_text` is required for command: create.")
            self.sandbox.write_file(path, file_text)
            self._history.setdefault(path, []).append(None)
            return f"File created successfully at: {path}"
        if kind == "missing":
            raise _CallError(f"The path {path} does not exist. Please provide a valid path.")
        if kind == "dir":
            if command != "view":
                raise _CallError(f"The path {path} is a directory and only the `view` command "
                                 "can be used on directories.")
            if view_range is not None:
                raise _CallError("The `view_range` parameter is not allowed when `path` points "
                                 "to a directory.")
            return self._view_dir(path)
        if kind != "file":
            raise _CallError(f"The path {path} is not a regular file.")
        if command == "view":
            return self._view_file(path, view_range)
        if command == "str_replace":
            return self._str_replace(path, old_str, new_str)
        if command == "insert":
            return self._insert(path, insert_line, new_str)
        return self._undo(path)

    def _check_path(self, path: str) -> str:
        if not isinstance(path, str) or not path.startswith("/"):
            raise _CallError(f"The path {path} is not an absolute path, it should start with "
                             f"`/`. Maybe you meant {posixpath.join(self.root, str(path))}?")
        normal = posixpath.normpath(path)
        if normal != self.root and not normal.startswith(self.root + "/"):
            raise _CallError(f"The path {path} is outside {self.root}; the editor only works "
                             f"on files inside {self.root}.")
        return normal

    def _kind(self, path: str) -> str:
        q = shlex.quote(path)
        result = self.sandbox.run(f"if [ -d {q} ]; then echo dir; elif [ -f {q} ]; then echo file;"
                                  f" elif [ -e {q} ]; then echo other; else echo missing; fi")
        kind = result.output.strip()
        if kind not in ("dir", "file", "other", "missing"):
            raise SandboxFileError(f"could not inspect {path} in sandbox {self.sandbox.name} "
                                   f"(exit {result.exit_code}, timed out: {result.timed_out}, "
                                   f"{result.duration_s:.1f} s): {result.output.strip()!r}")
        return kind

    def _view_dir(self, path: str) -> str:
        q = shlex.quote(path)
        result = self.sandbox.run(f"find {q} -maxdepth 2 -not -path '*/.*' | sort")
        return (f"Here's the files and directories up to 2 levels deep in {path}, excluding "
                f"hidden items:\n{result.output}")

    def _view_file(self, path: str, view_range: Any) -> str:
        text = self.sandbox.read_file(path)
        lines = _lines(text)
        first = 1
        if view_range is not None:
            start, end = _as_range(view_range)
            n = len(lines)
            if not 1 <= start <= max(n, 1):
                raise _CallError(f"Invalid `view_range`: {[start, end]}. Its first element "
                                 f"`{start}` should be within the range of lines of the file: "
                                 f"[1, {n}].")
            if end != -1 and not start <= end <= n:
                raise _CallError(f"Invalid `view_range`: {[start, end]}. Its second element "
                                 f"`{end}` should be -1 or within [{start}, {n}].")
            lines = lines[start - 1:] if end == -1 else lines[start - 1:end]
            first = start
        return (f"Here's the result of running `cat -n` on {path}:\n"
                f"{numbered(chr(10).join(lines), first)}\n")

    def _edited(self, path: str, old: str, new: str, first: int, last: int, tail: str) -> str:
        """Writes the new text (remembering the old) and shows the edit with some context."""
        self.sandbox.write_file(path, new)
        self._history.setdefault(path, []).append(old)
        lines = _lines(new)
        start = max(1, first - SNIPPET_LINES)
        end = min(len(lines), last + SNIPPET_LINES)
        snippet = numbered("\n".join(lines[start - 1:end]), start)
        return (f"The file {path} has been edited. Here's the result of running `cat -n` on a "
                f"snippet of {path}:\n{snippet}\n{tail}")

    def _str_replace(self, path: str, old_str: str | None, new_str: str | None) -> str:
        if old_str is None or old_str == "":
            raise _CallError("Parameter `old_str` is required for command: str_replace, and "
                             "must not be empty.")
        new_str = "" if new_str is None else new_str
        if new_str == old_str:
            raise _CallError("No replacement was performed. `new_str` and `old_str` must be "
                             "different.")
        text = self.sandbox.read_file(path)
        count = text.count(old_str)
        if count == 0:
            message = (f"No replacement was performed, old_str `{old_str}` did not appear "
                       f"verbatim in {path}.")
            closest = closest_window(text, old_str) if self.miss_hint else None
            if closest is not None:
                message += (f" Did you mean to match these actual lines from {path}?\n"
                            f"{numbered(closest[1], closest[0])}")
            raise _CallError(message)
        if count > 1:
            starts, at = [], text.find(old_str)
            while at != -1:
                starts.append(text.count("\n", 0, at) + 1)
                at = text.find(old_str, at + len(old_str))
            raise _CallError(f"No replacement was performed. old_str `{old_str}` occurs {count} "
                             f"times in {path} (lines {starts}); it must occur exactly once. "
                             "Include more surrounding lines to make it unique.")
        first = text.count("\n", 0, text.find(old_str)) + 1
        return self._edited(path, text, text.replace(old_str, new_str, 1), first,
                            first + new_str.count("\n"),
                            "Review the changes and make sure they are as expected. Edit the "
                            "file again if necessary.")

    def _insert(self, path: str, insert_line: Any, new_str: str | None) -> str:
        if insert_line is None:
            raise _CallError("Parameter `insert_line` is required for command: insert.")
        if new_str is None:
            raise _CallError("Parameter `new_str` is required for command: insert.")
        at = _as_int("insert_line", insert_line)
        text = self.sandbox.read_file(path)
        lines = text.splitlines(keepends=True)
        if not 0 <= at <= len(lines):
            raise _CallError(f"Invalid `insert_line` parameter: {at}. It should be within the "
                             f"range of lines of the file: [0, {len(lines)}].")
        if at == len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"  # appending after a last line that had no newline
        block = new_str if new_str.endswith("\n") else new_str + "\n"
        new = "".join(lines[:at]) + block + "".join(lines[at:])
        return self._edited(path, text, new, at + 1, at + block.count("\n"),
                            "Review the changes and make sure they are as expected (correct "
                            "indentation, no duplicate lines, etc). Edit the file again if "
                            "necessary.")

    def _undo(self, path: str) -> str:
        history = self._history.get(path)
        if not history:
            raise _CallError(f"No edit history found for {path}.")
        previous = history.pop()
        if previous is None:
            result = self.sandbox.run(f"rm -f -- {shlex.quote(path)}")
            if result.exit_code != 0:
                raise SandboxFileError(f"could not remove {path}: {result.output.strip()}")
            return f"Last edit to {path} undone successfully: the file created there is removed."
        self.sandbox.write_file(path, previous)
        return (f"Last edit to {path} undone successfully. Here's the result of running `cat -n` "
                f"on {path}:\n{numbered(chr(10).join(_lines(previous)))}\n")
