"""The embedded default tokenizer: a small BPE trained on the sample corpus, the one every run
and tool without a tokenizer of its own uses (built once per cache directory)."""

from __future__ import annotations

from pathlib import Path

from dagger_jax.tokenizer.sample_corpus import sample_texts
from dagger_jax.tokenizer.train_bpe import ensure_default_tokenizer

# Fixed, so the vocabulary is reproducible: the same corpus always trains the same merges.
CORPUS_TEXTS, CORPUS_SEED = 400, 1_000_003
DEFAULT_VOCAB_SIZE = 1024


def default_tokenizer(cache_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """The directory of the default tokenizer of `vocab_size`, trained into cache_dir once."""
    return ensure_default_tokenizer(cache_dir, sample_texts(CORPUS_TEXTS, seed=CORPUS_SEED),
                                    vocab_size)
