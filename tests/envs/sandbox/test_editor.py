"""The str_replace_editor tool, run through each sandbox backend."""

from __future__ import annotations

import pytest

from dagger_jax.envs.editor import StrReplaceEditor, numbered

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow


@pytest.fixture
def editor(sandbox):
    return StrReplaceEditor(sandbox)


CALC = "/testbed/pkg/calc.py"


def test_view_file_numbers_lines(editor):
    result = editor("view", CALC)
    assert not result.error
    assert result.output == (f"Here's the result of running `cat -n` on {CALC}:\n"
                             "     1\tdef add(a, b):\n     2\t    return a - b\n")


def test_view_range_shows_only_those_lines(editor, sandbox):
    sandbox.write_file("/testbed/ten.txt", "".join(f"line{i}\n" for i in range(1, 11)))
    assert editor("view", "/testbed/ten.txt", view_range=[3, 4]).output.endswith(
        "     3\tline3\n     4\tline4\n")
    tail = editor("view", "/testbed/ten.txt", view_range="[9, -1]").output
    assert tail.endswith("     9\tline9\n    10\tline10\n")


@pytest.mark.parametrize("view_range, message", [
    ([0, 2], "first element `0`"), ([2, 1], "second element `1`"), ([1, 99], "second element `99`"),
    ([1], "list of two integers"), ("nonsense", "list of two integers"),
])
def test_bad_view_range_is_an_error(editor, view_range, message):
    result = editor("view", CALC, view_range=view_range)
    assert result.error and message in result.output


def test_view_directory_lists_two_levels_without_hidden_items(editor):
    result = editor("view", "/testbed")
    assert not result.error
    listing = result.output.splitlines()[1:]
    assert "/testbed/pkg/calc.py" in listing and "/testbed/pkg/sub" in listing
    assert "/testbed/pkg/sub/deep.txt" not in listing  # third level
    assert not any(".hidden" in line for line in listing)


def test_view_range_on_a_directory_is_an_error(editor):
    result = editor("view", "/testbed/pkg", view_range=[1, 2])
    assert result.error and "not allowed" in result.output


def test_create_writes_a_new_file_and_refuses_an_existing_one(editor, sandbox):
    created = editor("create", "/testbed/new/mod.py", file_text="x = 1\n")
    assert not created.error and "created successfully" in created.output
    assert sandbox.read_file("/testbed/new/mod.py") == "x = 1\n"
    again = editor("create", CALC, file_text="overwrite")
    assert again.error and "already exists" in again.output
    assert sandbox.read_file(CALC).startswith("def add")
    missing = editor("create", "/testbed/other.py")
    assert missing.error and "`file_text` is required" in missing.output


def test_str_replace_replaces_a_unique_occurrence(editor, sandbox):
    result = editor("str_replace", CALC, old_str="a - b", new_str="a + b")
    assert not result.error
    assert "has been edited" in result.output and "     2\t    return a + b" in result.output
    assert sandbox.read_file(CALC) == "def add(a, b):\n    return a + b\n"
    assert sandbox.run("python3 -m pytest -q tests 2>&1 | tail -n 1").output.startswith("1 passed")


def test_str_replace_with_no_match_names_it(editor, sandbox):
    result = editor("str_replace", CALC, old_str="a * b", new_str="a + b")
    assert result.error and "did not appear verbatim" in result.output
    assert "Did you mean" not in result.output  # the hint is opt-in
    assert sandbox.read_file(CALC) == "def add(a, b):\n    return a - b\n"


def test_a_miss_hint_shows_the_closest_lines_with_their_numbers(sandbox):
    hinting = StrReplaceEditor(sandbox, miss_hint=True)
    sandbox.write_file("/testbed/order.py", "def lo(x):\n    return x\n\ndef ok(v):\n"
                       "    for i in range(len(v) - 1):\n        if v[i] >= v[i + 1]:\n"
                       "            return False\n    return True\n")
    miss = hinting("str_replace", "/testbed/order.py", old_str="        if v[i] > v[i - 1]:\n",
                   new_str="        if v[i] > v[i + 1]:\n")
    assert miss.error and miss.output.endswith(
        "Did you mean to match these actual lines from /testbed/order.py?\n"
        "     6\t        if v[i] >= v[i + 1]:")
    # As many lines as old_str has, however it is indented.
    two = hinting("str_replace", "/testbed/order.py", old_str="for i in range(len(v)):\nif v[i] > v[i + 1]:",
                  new_str="x")
    assert two.output.endswith("     5\t    for i in range(len(v) - 1):\n     6\t        if v[i] >= v[i + 1]:")
    # Nothing alike (indentation does not count): no hint rather than a misleading one.
    far = hinting("str_replace", "/testbed/order.py", old_str="        total -= v\n", new_str="x")
    assert far.error and "did not appear verbatim" in far.output and "Did you mean" not in far.output
    assert sandbox.read_file("/testbed/order.py").count(">=") == 1  # nothing was changed


def test_str_replace_with_several_matches_names_the_count_and_lines(editor, sandbox):
    sandbox.write_file("/testbed/dup.py", "x = 1\ny = 2\nx = 1\nx = 1\n")
    result = editor("str_replace", "/testbed/dup.py", old_str="x = 1", new_str="x = 3")
    assert result.error and "occurs 3 times" in result.output and "[1, 3, 4]" in result.output
    assert sandbox.read_file("/testbed/dup.py") == "x = 1\ny = 2\nx = 1\nx = 1\n"


def test_str_replace_needs_old_str_and_a_change(editor):
    assert "`old_str` is required" in editor("str_replace", CALC, new_str="x").output
    same = editor("str_replace", CALC, old_str="a - b", new_str="a - b")
    assert same.error and "must be different" in same.output


def test_str_replace_without_new_str_deletes(editor, sandbox):
    editor("str_replace", CALC, old_str="    return a - b\n")
    assert sandbox.read_file(CALC) == "def add(a, b):\n"


@pytest.mark.parametrize("line, expected", [
    (0, "# top\ndef add(a, b):\n    return a - b\n"),
    (1, "def add(a, b):\n# top\n    return a - b\n"),
    ("2", "def add(a, b):\n    return a - b\n# top\n"),
])
def test_insert_goes_after_insert_line(editor, sandbox, line, expected):
    result = editor("insert", CALC, insert_line=line, new_str="# top")
    assert not result.error, result.output
    assert sandbox.read_file(CALC) == expected


def test_insert_after_a_last_line_without_newline(editor, sandbox):
    sandbox.write_file("/testbed/n.txt", "a\nb")
    editor("insert", "/testbed/n.txt", insert_line=2, new_str="c\n")
    assert sandbox.read_file("/testbed/n.txt") == "a\nb\nc\n"


@pytest.mark.parametrize("line, message", [(3, "[0, 2]"), (-1, "[0, 2]"), ("two", "integer"),
                                           (None, "`insert_line` is required")])
def test_bad_insert_line_is_an_error(editor, sandbox, line, message):
    result = editor("insert", CALC, insert_line=line, new_str="x")
    assert result.error and message in result.output
    assert sandbox.read_file(CALC) == "def add(a, b):\n    return a - b\n"


def test_undo_reverts_edits_in_reverse_order(editor, sandbox):
    original = sandbox.read_file(CALC)
    editor("str_replace", CALC, old_str="a - b", new_str="a + b")
    editor("insert", CALC, insert_line=0, new_str="import os")
    first = editor("undo_edit", CALC)
    assert not first.error and "undone" in first.output
    assert sandbox.read_file(CALC) == "def add(a, b):\n    return a + b\n"
    editor("undo_edit", CALC)
    assert sandbox.read_file(CALC) == original
    none_left = editor("undo_edit", CALC)
    assert none_left.error and "No edit history" in none_left.output


def test_undo_of_create_removes_the_file(editor, sandbox):
    editor("create", "/testbed/tmp.py", file_text="x")
    assert not editor("undo_edit", "/testbed/tmp.py").error
    assert sandbox.run("test -e /testbed/tmp.py; echo $?").output == "1\n"


def test_undo_history_is_per_file(editor, sandbox):
    editor("str_replace", CALC, old_str="a - b", new_str="a + b")
    other = editor("undo_edit", "/testbed/run.sh")
    assert other.error and "No edit history found for /testbed/run.sh" in other.output


@pytest.mark.parametrize("path, message", [
    ("pkg/calc.py", "not an absolute path"),
    ("/etc/passwd", "outside /testbed"),
    ("/testbed/../etc/passwd", "outside /testbed"),
    ("/testbedx/a.py", "outside /testbed"),
    ("/testbed/missing.py", "does not exist"),
])
def test_bad_paths_are_errors(editor, path, message):
    result = editor("view", path)
    assert result.error and message in result.output


def test_edit_commands_refuse_directories(editor):
    result = editor("str_replace", "/testbed/pkg", old_str="a", new_str="b")
    assert result.error and "is a directory" in result.output


def test_unknown_command_lists_the_commands(editor):
    result = editor("delete", CALC)
    assert result.error and "undo_edit" in result.output


def test_long_views_are_clipped(sandbox):
    sandbox.write_file("/testbed/long.txt", "x" * 50 + "\n" * 2000)
    result = StrReplaceEditor(sandbox, max_output_chars=500)("view", "/testbed/long.txt")
    assert "<response clipped>" in result.output and len(result.output) < 800


def test_undecodable_bytes_survive_an_edit(editor, sandbox):
    sandbox.run("printf 'caf\\351\\nvalue = 1\\n' > latin.txt")
    result = editor("str_replace", "/testbed/latin.txt", old_str="value = 1", new_str="value = 2")
    assert not result.error
    dump = sandbox.run("od -An -c latin.txt | tr -s ' '").output
    assert dump.split()[:4] == ["c", "a", "f", "351"]


def test_numbered_formats_like_cat_n():
    assert numbered("a\nb", 9) == "     9\ta\n    10\tb"
