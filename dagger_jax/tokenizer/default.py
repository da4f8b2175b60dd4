"""The embedded default tokenizer: a small BPE trained on the sample corpus, the one every run
and tool without a tokenizer of its own uses (built once per cache directory)."""

from __future__ import annotations

import os
from pathlib import Path

from dagger_jax.tokenizer.sample_corpus import sample_texts
from dagger_jax.tokenizer.train_bpe import ensure_default_tokenizer

# Fixed, so the vocabulary is reproducible: the same corpus always trains the same merges.
CORPUS_TEXTS, CORPUS_SEED = 400, 1_000_003
DEFAULT_VOCAB_SIZE = 1024


def user_cache_dir() -> Path:
    """Where tools keep the default tokenizer between runs ($XDG_CACHE_HOME or ~/.cache)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "dagger_jax" / "tokenizer"


def default_tokenizer(cache_dir: str | Path | None = None,
                      vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """The directory of the default tokenizer of `vocab_size`, trained into cache_dir (default:
    user_cache_dir()) once."""
    return ensure_default_tokenizer(cache_dir or user_cache_dir(),
                                    sample_texts(CORPUS_TEXTS, seed=CORPUS_SEED), vocab_size)
