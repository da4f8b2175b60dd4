"""Collected episode records: statistics per iteration, one episode as text, or action letters.

    python tools/inspect_records.py DIR                      # one JSON line per iteration
    python tools/inspect_records.py DIR --dump EPISODE_ID    # one episode, turn by turn
    python tools/inspect_records.py DIR --actions            # each episode as action letters

DIR is a workdir, its data/ directory, or one iter_NNN directory (data/ or eval/). Only
manifest-listed shards are read (as the trainer reads them); a damaged shard is reported,
naming the file.

Action letters (--actions), one per turn, upper case where the teacher's action was executed
and lower case where the student's was: V view, E an edit the editor applied, R an edit it
refused (an `old_str` not in the file), C create, I insert, T a test run (any pytest command),
B any other shell command, F finish, P an unparseable reply; then + (resolved) or - (not).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dagger_jax.agent import parse_action
from dagger_jax.data.examples import plan_examples
from dagger_jax.data.shard_sync import pulled
from dagger_jax.data.records import EpisodeRecord, RecordError
from dagger_jax.data.shards import (
    MANIFEST,
    EpisodeSource,
    ShardError,
    iter_records,
    read_manifest,
)
from dagger_jax.storage.layout import all_iteration_dirs, iteration_dirs_in, iteration_of
from dagger_jax.storage.store import StorePath, store_path

# Example statistics without a length limit: what the episodes would cost to train on.
_NO_LIMIT = 2**62


def record_dirs(path: StorePath) -> list[Path]:
    """The iteration directories that path (workdir, data dir or iter dir; local or gs://)
    stands for, as local directories (a bucket's pulled into working copies)."""
    if (path / MANIFEST).exists() or iteration_of(path) is not None:
        return pulled([path])
    return pulled(iteration_dirs_in(path) or all_iteration_dirs(path))


def iteration_stats(directory: Path, records: Iterable[EpisodeRecord]) -> dict[str, Any]:
    episodes = turns = student = teacher = labelled = failures = unparsed = resolved = 0
    takeovers = agreed = 0
    trunk_tokens = example_tokens = trained_turns = 0
    beta_sum = 0.0
    end_reasons: Counter = Counter()
    for record in records:
        episodes += 1
        turns += len(record.turns)
        student += sum(t.executor == "student" for t in record.turns)
        teacher += sum(t.executor == "teacher" for t in record.turns)
        takeovers += sum(t.taken_over for t in record.turns)
        labelled += sum(t.labelled for t in record.turns)
        failures += sum(not t.labelled for t in record.turns)
        unparsed += sum(not t.parse_ok for t in record.turns)
        resolved += record.outcome.resolved
        end_reasons[record.outcome.end_reason] += 1
        beta_sum += record.beta
        trunk_tokens += len(record.trunk_ids)
        _, stats = plan_examples(record.turn_summaries(), _NO_LIMIT)
        example_tokens += stats.tokens
        trained_turns += stats.trained_turns
        agreed += stats.student_turns_in_trunk

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "iteration": iteration_of(directory),
        "dir": str(directory),
        "shards": len(read_manifest(directory)),
        "episodes": episodes,
        "turns": turns,
        "student_turns": student,
        "teacher_turns": teacher,
        "student_fraction": ratio(student, turns),
        "teacher_fraction": ratio(teacher, turns),
        "takeovers": takeovers,
        # Student turns that said exactly their label: they train inside the trunk.
        "student_turns_as_labelled": agreed,
        "labelled_turns": labelled,
        "label_failures": failures,
        "unparsed_actions": unparsed,
        "resolved": resolved,
        "resolve_rate": ratio(resolved, episodes),
        "end_reasons": dict(sorted(end_reasons.items())),
        "mean_turns": ratio(turns, episodes),
        "mean_beta": ratio(beta_sum, episodes),
        "mean_trunk_tokens": ratio(trunk_tokens, episodes),
        "tokens_per_labelled_turn": ratio(example_tokens, trained_turns),
    }


_EDITOR_LETTERS = {"view": "V", "create": "C", "insert": "I"}


def action_letter(action: str, observation: str) -> str:
    """One executed action as a letter (the module docstring lists them)."""
    parsed = parse_action(action)
    if not parsed.ok:
        return "P"
    call = parsed.call
    if call.name == "finish":
        return "F"
    if call.name == "execute_bash":
        return "T" if "pytest" in call.params.get("command", "") else "B"
    command = call.params.get("command")
    if command == "str_replace":
        return "R" if observation.startswith("ERROR") else "E"
    return _EDITOR_LETTERS.get(command, "?")


def action_codes(record: EpisodeRecord) -> str:
    """The episode as letters, lower case for the student's executed turns, then + or -."""
    messages = record.messages
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    letters = []
    for turn, i in zip(record.turns, assistant):
        after = messages[i + 1] if i + 1 < len(messages) else {}
        observation = (after.get("content") or "") if after.get("role") == "tool" else ""
        letter = action_letter(messages[i]["content"] or "", observation)
        letters.append(letter.lower() if turn.executor == "student" else letter)
    return "".join(letters) + ("+" if record.outcome.resolved else "-")


def _viewed_path(action: str | None) -> str | None:
    parsed = parse_action(action or "")
    if parsed.ok and parsed.call.name == "str_replace_editor" and parsed.call.params.get("command") == "view":
        return parsed.call.params.get("path")
    return None


def first_look_elsewhere(record: EpisodeRecord) -> bool:
    """Whether the episode opened with a view of another file than the one the teacher's label
    of that first state views (a wrong guess where the issue names no file)."""
    if not record.turns or not record.messages:
        return False
    first = next((m["content"] for m in record.messages if m["role"] == "assistant"), None)
    executed, labelled = _viewed_path(first), _viewed_path(record.turns[0].label_text)
    return executed is not None and labelled is not None and executed != labelled


def first_edit_summary(codes: list[str], looked_elsewhere: list[bool] | None = None) -> dict[str, Any]:
    """How the first edit of each episode went, and what came of a refused one; with
    `looked_elsewhere` (per episode, first_look_elsewhere) also what came of a wrong first look."""
    firsts = [next((c for c in code if c.upper() in "ER"), None) for code in codes]
    refused = [code for code, first in zip(codes, firsts) if first is not None and first.upper() == "R"]
    looks = {}
    if looked_elsewhere is not None:
        astray = [code for code, away in zip(codes, looked_elsewhere) if away]
        looks = {"first_look_elsewhere": len(astray),
                 "resolved_after_first_look_elsewhere": sum(code.endswith("+") for code in astray)}
    return {
        "episodes": len(codes),
        "first_edit_applied": sum(f is not None and f.upper() == "E" for f in firsts),
        "first_edit_refused": len(refused),
        "no_edit": sum(f is None for f in firsts),
        "resolved": sum(code.endswith("+") for code in codes),
        "resolved_after_refused_first_edit": sum(code.endswith("+") for code in refused),
        **looks,
    }


def _indent(text: str) -> str:
    return textwrap.indent(text, "    ", lambda line: True) if text else "    (empty)"


def render_episode(record: EpisodeRecord) -> str:
    """The conversation as executed, each assistant turn with its executor and the label."""
    o = record.outcome
    lines = [
        f"episode {record.episode_id}  task {record.task_id}  iteration {record.iteration}  "
        f"beta {record.beta}  seed {record.seed}",
        f"student {record.student_version}  teacher {record.teacher_id}  "
        f"{len(record.trunk_ids)} trunk tokens  {len(record.turns)} turns",
        f"outcome: {'RESOLVED' if o.resolved else 'not resolved'}  end {o.end_reason}  "
        f"F2P {o.fail_to_pass_passed}/{o.fail_to_pass_total}  "
        f"P2P {o.pass_to_pass_passed}/{o.pass_to_pass_total}"
        + (f"  error: {o.error}" if o.error else ""),
    ]
    turn = 0
    for message in record.messages:
        role = message["role"]
        if role != "assistant":
            lines += [f"--- [{role}]", _indent(message["content"])]
            continue
        t = record.turns[turn]
        turn += 1
        parse = "" if t.parse_ok else "  (unparseable action)"
        took = "  (took over from an unparseable student reply)" if t.taken_over else ""
        lines.append(f"--- [assistant] turn {t.index}: {t.executor}{parse}{took}")
        lines.append(_indent(message["content"]))
        if t.executor == "student":
            if t.label_text is None:
                lines.append("    >>> teacher label: FAILED (no label, no example)")
            else:
                lines += ["    >>> teacher label:", _indent(_indent(t.label_text))]
    if o.patch:
        lines += ["--- patch", _indent(o.patch)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=store_path,
                        help="a workdir, its data/ dir, or one iter_NNN dir (local or gs://)")
    parser.add_argument("--dump", metavar="EPISODE_ID", help="print this episode as text")
    parser.add_argument("--actions", action="store_true",
                        help="print each episode as action letters, then a first-edit summary "
                             "per iteration directory")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"inspect_records: {args.dir} is not a directory", file=sys.stderr)
        return 2
    dirs = record_dirs(args.dir)
    if not dirs:
        print(f"inspect_records: no episode records under {args.dir} (expected a workdir, its "
              "data/ dir, or an iter_NNN dir)", file=sys.stderr)
        return 2
    try:
        if args.dump is not None:
            source = EpisodeSource(dirs)  # finds the episode from the manifests, reads one
            for key, location in enumerate(source.locations):
                if location.episode_id == args.dump:
                    print(render_episode(source[key]))
                    return 0
            print(f"inspect_records: no episode {args.dump!r} under {args.dir}", file=sys.stderr)
            return 1
        for directory in dirs:
            if args.actions:
                codes, looks = [], []
                for record in iter_records(directory):
                    codes.append(action_codes(record))
                    looks.append(first_look_elsewhere(record))
                    print(f"{record.episode_id}\t{codes[-1]}")
                print(json.dumps({"dir": str(directory), **first_edit_summary(codes, looks)}), flush=True)
            else:
                print(json.dumps(iteration_stats(directory, iter_records(directory))), flush=True)
    except (ShardError, RecordError, OSError) as e:
        print(f"inspect_records: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
