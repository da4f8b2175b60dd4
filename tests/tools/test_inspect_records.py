"""tools/inspect_records.py as a user runs it: per-iteration statistics and one episode dumped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dagger_jax.data.shards import ShardWriter
from dagger_jax.storage.layout import iteration_dir
from tests.data.episodes import episode_batch, make_episode

ROOT = Path(__file__).resolve().parents[2]


def run_tool(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_records.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory, chat):
    workdir = tmp_path_factory.mktemp("workdir")
    iterations = [episode_batch(chat, 6, iteration=0), episode_batch(chat, 4, iteration=1)]
    special, _ = make_episode(chat, "job1/special/0", "tsst", failed=[2], iteration=1, resolved=True)
    special.turns[3].student_latency_s = 0.25  # a takeover: the student was asked, the teacher ran
    iterations[1].append(special)
    for i, records in enumerate(iterations):
        with ShardWriter(iteration_dir(workdir, i), "w0", 4) as writer:
            for record in records:
                writer.write(record)
    return workdir, iterations


def test_statistics_per_iteration(collected) -> None:
    workdir, iterations = collected
    run = run_tool(workdir)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["iteration"] for line in lines] == [0, 1]
    for line, records in zip(lines, iterations):
        turns = [t for r in records for t in r.turns]
        assert line["episodes"] == len(records) and line["turns"] == len(turns)
        assert line["shards"] == -(-len(records) // 4)
        assert line["student_turns"] == sum(t.executor == "student" for t in turns)
        assert line["student_fraction"] + line["teacher_fraction"] == pytest.approx(1.0, abs=1e-3)
        assert line["labelled_turns"] + line["label_failures"] == len(turns)
        assert line["label_failures"] == sum(t.label_text is None for t in turns)
        assert line["resolve_rate"] == pytest.approx(
            sum(r.outcome.resolved for r in records) / len(records), abs=1e-3)
        assert sum(line["end_reasons"].values()) == len(records)
        assert line["mean_turns"] == pytest.approx(len(turns) / len(records), abs=1e-3)
        assert line["tokens_per_labelled_turn"] > 0
    assert [line["takeovers"] for line in lines] == [0, 1]


def test_any_level_of_the_layout_works(collected) -> None:
    workdir, _ = collected
    whole = run_tool(workdir).stdout
    assert run_tool(workdir / "data").stdout == whole
    one = run_tool(iteration_dir(workdir, 1))
    assert one.returncode == 0 and one.stdout == whole.splitlines(keepends=True)[1]


def test_dump_shows_executors_and_labels(collected) -> None:
    workdir, iterations = collected
    special = iterations[1][-1]
    run = run_tool(workdir, "--dump", "job1/special/0")
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "episode job1/special/0" in text and "RESOLVED" in text
    for executor, index in (("teacher", 0), ("student", 1), ("student", 2), ("teacher", 3)):
        assert f"--- [assistant] turn {index}: {executor}" in text
    assert text.count("took over from an unparseable student reply") == 1
    assert "turn 3: teacher  (took over" in text
    assert text.count(">>> teacher label:") == 2  # beside the two student turns
    assert "teacher label: FAILED" in text
    # The student's own action, then the teacher's label for that state.
    turn1 = text.split("turn 1: student")[1].split("--- [tool]")[0]
    assert special.turns[1].executed_text.splitlines()[-1] in turn1
    assert special.turns[1].label_text.splitlines()[0] in turn1.split(">>> teacher label:")[1]
    assert text.count("--- [tool]") == 4 and "--- [system]" in text


def test_errors_are_reported(collected, tmp_path: Path) -> None:
    workdir, _ = collected
    missing = run_tool(workdir, "--dump", "no/such/episode")
    assert missing.returncode == 1 and "no episode 'no/such/episode'" in missing.stderr
    empty = run_tool(tmp_path)
    assert empty.returncode == 2 and "no episode records" in empty.stderr


def test_a_damaged_shard_is_named(collected, tmp_path: Path) -> None:
    workdir, iterations = collected
    directory = tmp_path / "data" / "iter_000"
    with ShardWriter(directory, "w0", 10) as writer:
        for record in iterations[0]:
            writer.write(record)
    shard = writer.shards_written[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    run = run_tool(tmp_path)
    assert run.returncode == 1 and "w0-00000.arecord" in run.stderr and "truncated" in run.stderr


def _tool_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("inspect_records", ROOT / "tools" / "inspect_records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_action_letters() -> None:
    from dagger_jax.agent import ToolCall, render_action
    letter = _tool_module().action_letter
    editor = lambda **p: render_action(ToolCall("str_replace_editor", {"path": "/testbed/a.py", **p}))
    test = "python3 -m pytest -rA tests"  # the synthetic tasks' command has this shape
    assert letter(editor(command="view"), "Here's the result of running `cat -n`") == "V"
    edit = editor(command="str_replace", old_str="a", new_str="b")
    assert letter(edit, "The file /testbed/a.py has been edited.") == "E"
    assert letter(edit, "ERROR: No replacement was performed, old_str `a` did not appear") == "R"
    assert letter(editor(command="create", file_text="x"), "File created") == "C"
    assert letter(render_action(ToolCall("execute_bash", {"command": test})), "") == "T"
    assert letter(render_action(ToolCall("execute_bash", {"command": "ls"})), "") == "B"
    assert letter(render_action(ToolCall("finish", {})), "") == "F"
    assert letter("I will now fix it <function=str_replace_editor", "") == "P"


def test_first_edit_summary() -> None:
    summary = _tool_module().first_edit_summary(["VETF+", "VrVETF+", "VrVrPP-", "VppPP-", "vRetF+"])
    assert summary == {"episodes": 5, "first_edit_applied": 1, "first_edit_refused": 3, "no_edit": 1,
                       "resolved": 3, "resolved_after_refused_first_edit": 2}
    looks = _tool_module().first_edit_summary(["vBVETF+", "VETF+", "vrppp-"], [True, False, True])
    assert (looks["first_look_elsewhere"], looks["resolved_after_first_look_elsewhere"]) == (2, 1)


def test_a_first_look_elsewhere_is_a_view_of_another_file_than_the_label_views() -> None:
    from types import SimpleNamespace

    from dagger_jax.agent import ToolCall, render_action
    view = lambda path: render_action(ToolCall("str_replace_editor", {"command": "view", "path": path}))  # noqa: E731
    tests = render_action(ToolCall("execute_bash", {"command": "python3 -m pytest tests"}))

    def record(executed: str, label: str):
        return SimpleNamespace(turns=[SimpleNamespace(label_text=label)],
                               messages=[{"role": "user", "content": "issue"},
                                         {"role": "assistant", "content": executed}])

    elsewhere = _tool_module().first_look_elsewhere
    assert elsewhere(record(view("/testbed/p/utils.py"), view("/testbed/p/core.py")))
    assert not elsewhere(record(view("/testbed/p/core.py"), view("/testbed/p/core.py")))
    assert not elsewhere(record(tests, view("/testbed/p/core.py")))  # not a look at a file
    assert not elsewhere(record(view("/testbed/p/utils.py"), tests))  # the teacher did not look


def test_actions_lists_every_episode_with_its_executors(collected) -> None:
    workdir, iterations = collected
    run = run_tool(iteration_dir(workdir, 1), "--actions")
    assert run.returncode == 0, run.stderr
    *episodes, summary = run.stdout.splitlines()
    codes = dict(line.split("\t") for line in episodes)
    assert sorted(codes) == sorted(r.episode_id for r in iterations[1])
    assert codes["job1/special/0"] == "BbbB+"  # teacher, student, student, teacher; resolved
    assert json.loads(summary)["episodes"] == len(iterations[1])
    assert json.loads(summary)["no_edit"] == len(iterations[1])
