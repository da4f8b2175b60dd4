"""Observation text: length caps with a counted truncation marker, bash results, errors."""

from __future__ import annotations

import random
import re

import pytest

from dagger_jax.agent import (
    MIN_OBSERVATION_CHARS,
    format_bash_observation,
    format_error_observation,
    format_observation,
)

MARKER = re.compile(r"\n\[\.\.\. (\d+) characters truncated \.\.\.\]\n")


def test_short_text_is_unchanged() -> None:
    text = "line 1\nline 2\n"
    assert format_observation(text, MIN_OBSERVATION_CHARS) == text
    assert format_observation("x" * 500, 500) == "x" * 500


def _check_truncated(text: str, max_chars: int) -> None:
    out = format_observation(text, max_chars)
    assert len(out) <= max_chars
    match = MARKER.search(out)
    assert match is not None
    head, tail = out[: match.start()], out[match.end() :]
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) + int(match.group(1)) + len(tail) == len(text)
    assert len(out) >= max_chars - 1  # the budget is used, not wasted
    assert abs(len(head) - len(tail)) <= 1


def test_long_text_keeps_head_and_tail_and_counts_the_cut() -> None:
    rng = random.Random(0)
    for _ in range(200):
        max_chars = rng.randint(MIN_OBSERVATION_CHARS, 3000)
        length = rng.choice([max_chars + 1, max_chars + 2, rng.randint(max_chars, 20_000)])
        _check_truncated("".join(rng.choices("ab\n日🎉 ", k=length)), max_chars)
    # Where the count in the marker gains a digit (9_999 -> 10_000 characters cut).
    for length in range(10_150, 10_200):
        _check_truncated("x" * length, MIN_OBSERVATION_CHARS)


def test_too_small_a_cap_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="max_chars=50 is below the minimum of 200"):
        format_observation("x" * 1000, 50)


def test_bash_observation_shapes() -> None:
    assert format_bash_observation("a.py\nb.py\n", 0, 1000) == (
        "a.py\nb.py\n[The command finished with exit code 0.]"
    )
    assert format_bash_observation("", 2, 1000) == "[The command finished with exit code 2.]"
    assert format_bash_observation("spin", None, 1000, timeout_s=30).endswith(
        "\n[The command timed out after 30 seconds and was killed.]"
    )
    flood = format_bash_observation("y\n" * 100_000, 1, 1000)
    assert len(flood) <= 1000 and flood.endswith("[The command finished with exit code 1.]")
    assert "199" in MARKER.search(flood).group(1)[:3]  # about 199_000 characters cut
    with pytest.raises(ValueError, match="format_bash_observation: max_chars=220"):
        format_bash_observation("x", 0, 220)


def test_error_observation() -> None:
    assert format_error_observation("  no such file: /a  ") == "ERROR: no such file: /a"
    long = format_error_observation("e" * 10_000, max_chars=300)
    assert long.startswith("ERROR: ") and len(long) <= 300 and MARKER.search(long)
