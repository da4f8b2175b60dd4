"""Rollout fixtures: the project's ChatML tokenizer and the sandbox backends."""

from __future__ import annotations

import pytest

from dagger_jax.agent import ChatTokenizer
from dagger_jax.tokenizer.sample_corpus import sample_texts
from dagger_jax.tokenizer import train_bpe_tokenizer
from tests.envs.sandbox.conftest import bwrap_backend, docker_backend, sandbox_deps  # noqa: F401


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory):
    return train_bpe_tokenizer(sample_texts(200, seed=0), 512, tmp_path_factory.mktemp("chatml"))


@pytest.fixture(scope="session")
def chat(chat_dir) -> ChatTokenizer:
    return ChatTokenizer.from_path(chat_dir)
