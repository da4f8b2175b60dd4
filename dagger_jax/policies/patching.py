"""Applies a unified diff to in-memory file contents (the expert's picture of the fixed repo)."""

from __future__ import annotations

from typing import Mapping

import unidiff


def apply_patch(files: Mapping[str, str], patch: str) -> dict[str, str | None]:
    """The contents after `patch` of every file it touches (None for a deleted file).

    Raises ValueError naming the file and hunk when the patch does not fit the contents.
    """
    result: dict[str, str | None] = {}
    for patched in unidiff.PatchSet(patch):
        path = patched.path
        if patched.is_removed_file:
            result[path] = None
            continue
        source = "" if patched.is_added_file else files.get(path)
        if source is None:
            raise ValueError(f"patch modifies {path}, which the task's files do not have")
        lines = source.splitlines(keepends=True)
        for hunk in reversed(list(patched)):  # bottom-up keeps earlier line numbers valid
            start = max(hunk.source_start - 1, 0)
            expected = [line.value for line in hunk if line.is_context or line.is_removed]
            if lines[start:start + len(expected)] != expected:
                raise ValueError(f"patch hunk at {path}:{hunk.source_start} does not match the file")
            target = [line.value for line in hunk if line.is_context or line.is_added]
            lines[start:start + len(expected)] = target
        result[path] = "".join(lines)
    return result
