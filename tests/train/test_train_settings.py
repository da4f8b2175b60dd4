"""Train settings that cannot be right are refused when the config is read, naming the key."""

from __future__ import annotations

import pytest

from dagger_jax.train.settings import TrainSettings


@pytest.mark.parametrize("key, value, rule", [
    ("steps", -5, "must be >= 0"),
    ("lr", -1.0, r"must be in \(0, 1\]"),
    ("lr", 3.0, r"must be in \(0, 1\]"),
    ("batch_size", 0, "must be >= 1"),
    ("seq_len", -512, "must be >= 1"),
    ("warmup_steps", -1, "must be >= 0"),
    ("b2", 1.0, r"must be in \[0, 1\)"),
    ("eps", 0.0, "must be > 0"),
    ("weight_decay", -0.1, "must be >= 0"),
    ("keep_checkpoints", 0, "must be >= 1"),
])
def test_values_that_cannot_be_right_are_refused_with_the_key(key, value, rule):
    with pytest.raises(ValueError, match=rf"config\.train\.{key}={value!r}: {rule}"):
        TrainSettings(**{key: value})
    TrainSettings()  # the defaults are fine
