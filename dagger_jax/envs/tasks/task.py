"""The one task type every source yields, and its JSONL form.

A task is a repository at a base state plus what grading needs: which tests must go from
failing to passing (FAIL_TO_PASS), which must keep passing (PASS_TO_PASS), which test files to
restore before grading (so an agent that edits tests gains nothing), and the gold patch where
known. The repository comes either as files (`repo_files`, small generated tasks) or as a
docker image that already holds it at /testbed (SWE-bench / SWE-Gym).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

SCHEMA_VERSION = 1
SPLITS = ("train", "heldout", "test")
_TEXT_FIELDS = ("instance_id", "source", "problem_statement", "test_command", "log_parser",
                "split", "eval_type")
_OPTIONAL_TEXT_FIELDS = ("image", "gold_patch", "test_patch", "eval_script")
_TEXT_LISTS = ("fail_to_pass", "pass_to_pass", "test_files")


@dataclasses.dataclass(frozen=True)
class Task:
    instance_id: str
    source: str                      # synthetic | pypi | swebench
    problem_statement: str
    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]
    test_files: tuple[str, ...]      # repo-relative paths restored before grading
    test_command: str = ""           # run from /testbed; its log goes to the parser
    log_parser: str = "parse_log_pytest"   # a name in swebench's PARSER_REGISTRY
    split: str = "train"
    repo_files: Mapping[str, str] | None = None   # path -> text at the base state
    image: str | None = None         # docker image with the repo at /testbed
    gold_patch: str | None = None
    test_patch: str | None = None    # SWE-bench: applied after restoring test_files
    eval_script: str | None = None   # SWE-bench: the harness's eval script (replaces test_command)
    eval_type: str = "pass_and_fail"  # swebench EvalType value
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"task {self.instance_id!r}"
        self._check_types(where)
        if not self.instance_id:
            raise ValueError("task: empty instance_id")
        if self.split not in SPLITS:
            raise ValueError(f"{where}: split {self.split!r} not in {SPLITS}")
        if self.repo_files is None and self.image is None:
            raise ValueError(f"{where}: needs repo_files or an image")
        if not self.test_command and not self.eval_script:
            raise ValueError(f"{where}: needs a test_command or an eval_script")
        if not self.fail_to_pass:
            raise ValueError(f"{where}: FAIL_TO_PASS is empty (nothing to fix)")
        overlap = set(self.fail_to_pass) & set(self.pass_to_pass)
        if overlap:
            raise ValueError(f"{where}: tests both in FAIL_TO_PASS and PASS_TO_PASS: {sorted(overlap)[:3]}")
        for path in self.test_files + tuple(self.repo_files or ()):
            if path.startswith("/") or ".." in Path(path).parts:
                raise ValueError(f"{where}: path {path!r} must be relative and inside the repo")

    def _check_types(self, where: str) -> None:
        """Every field of the type the code reads it as: a task file is outside input, and a
        number where a path belongs would fail far from the line that holds it."""
        def wrong(name: str, expected: str) -> ValueError:
            value = getattr(self, name)
            return ValueError(f"{where}: {name} must be {expected}, got {type(value).__name__}")
        for name in _TEXT_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise wrong(name, "a string")
        for name in _OPTIONAL_TEXT_FIELDS:
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise wrong(name, "a string or null")
        for name in _TEXT_LISTS:
            if not all(isinstance(item, str) for item in getattr(self, name)):
                raise wrong(name, "a list of strings")
        files = self.repo_files
        if files is not None and not (isinstance(files, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
            raise wrong("repo_files", "an object of path -> file text (strings)")
        if not isinstance(self.metadata, Mapping):
            raise wrong("metadata", "an object")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["schema_version"] = SCHEMA_VERSION
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "task") -> "Task":
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int):
            raise ValueError(f"{where}: schema_version must be an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise ValueError(f"{where}: schema_version {version} is newer than this code ({SCHEMA_VERSION})")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}")
        for key in ("fail_to_pass", "pass_to_pass", "test_files"):
            if key in data:
                if not isinstance(data[key], (list, tuple)):
                    raise ValueError(f"{where}: {key} must be a list, got {type(data[key]).__name__}")
                data[key] = tuple(data[key])
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"{where}: {e}") from None


@dataclasses.dataclass(frozen=True)
class BadTaskLine:
    """A JSONL line that is not a valid task: recorded and skipped, never fatal to a run."""

    path: str
    line_number: int
    reason: str


def tasks_jsonl(tasks: Iterable[Task]) -> str:
    """Tasks as the JSONL text of a task file (one object per line, keys sorted)."""
    return "".join(json.dumps(task.to_json(), sort_keys=True) + "\n" for task in tasks)


def write_tasks(tasks: Iterable[Task], path: str | Path) -> int:
    """Writes tasks as JSONL atomically (temp file, then rename); returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    text = tasks_jsonl(tasks)
    tmp.write_text(text)
    tmp.rename(path)
    return text.count("\n")


def read_jsonl_tasks(path: str | Path, to_task: Callable[[dict, str], Task]
                     ) -> Iterator[Task | BadTaskLine]:
    """Yields `to_task(object, where)` per line, or a BadTaskLine saying what is wrong and where.
    `path` may be any path object that opens (an etils.epath path in object storage, say)."""
    path = Path(path) if isinstance(path, str) else path
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield BadTaskLine(str(path), number,
                                  f"{where}: not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
                yield to_task(data, where)
            except json.JSONDecodeError as e:
                yield BadTaskLine(str(path), number, f"{where}: not JSON ({e.msg})")
            # Any shape of JSON is outside input: whatever a source's reader raises on it makes
            # that line a bad line, never the end of the run.
            except Exception as e:  # noqa: BLE001
                reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                yield BadTaskLine(str(path), number,
                                  reason if reason.startswith(where) else f"{where}: {reason}")


def read_tasks(path: str | Path) -> Iterator[Task | BadTaskLine]:
    """Yields each line's Task (our JSONL), or a BadTaskLine saying what is wrong and where."""
    return read_jsonl_tasks(path, lambda data, where: Task.from_json(data, where=where))
