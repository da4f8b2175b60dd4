"""Unit tests of the sandbox's small parts: output capping, owners, limits, specs, the factory."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from dagger_jax.envs.sandbox import SandboxLimits, SandboxSpec, make_backend
from dagger_jax.envs.sandbox.output import OutputCapture
from dagger_jax.envs.sandbox.owner import Owner, _start_ticks


def test_capture_keeps_everything_under_the_limit():
    capture = OutputCapture(10)
    capture.feed(b"abc")
    capture.feed(b"defg")
    assert capture.text() == "abcdefg" and not capture.truncated and capture.data() == b"abcdefg"


def test_capture_keeps_head_and_tail_and_names_the_dropped_bytes():
    capture = OutputCapture(8)
    for _ in range(1000):
        capture.feed(b"0123456789")
    text = capture.text()
    assert text.startswith("0123") and text.endswith("6789")
    assert "9,992 of 10,000 bytes dropped" in text and capture.dropped_bytes == 9992
    with pytest.raises(ValueError, match="truncated"):
        capture.data()


def test_capture_replaces_invalid_utf8():
    capture = OutputCapture(100)
    capture.feed(b"ok \xff")
    assert capture.text() == "ok \ufffd"


def test_owner_token_roundtrips_and_a_dead_owner_is_dead():
    me = Owner.current()
    assert Owner.from_token(me.token()) == me and me.is_alive() and me.is_local()
    child = subprocess.Popen(["true"])
    child.wait()
    dead = Owner(me.host, me.boot_id, child.pid, me.start_ticks)
    assert not dead.is_alive()
    assert not Owner(me.host, "other-boot", me.pid, me.start_ticks).is_alive()
    assert Owner.from_token("garbage") is None


def test_a_zombie_owner_counts_as_dead():
    child = subprocess.Popen(["sleep", "0.3"])
    me = Owner.current()
    owner = Owner(me.host, me.boot_id, child.pid, _start_ticks(child.pid))
    assert owner.is_alive()
    time.sleep(1.0)  # exited, not yet waited for: a zombie, still in /proc
    assert Path(f"/proc/{child.pid}").exists()
    assert not owner.is_alive()
    child.wait()


@pytest.mark.parametrize("field", ["memory_mb", "pids", "cpus", "command_timeout_s"])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        SandboxLimits(**{field: 0})


def test_spec_needs_something_to_run(tmp_path):
    with pytest.raises(ValueError, match="image, a repo_dir"):
        SandboxSpec()
    with pytest.raises(ValueError, match="not a directory"):
        SandboxSpec(repo_dir=tmp_path / "missing")


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="'local'.*docker, bwrap"):
        make_backend("local")
