"""Tokenizers for dagger_jax: the ChatML template, BPE training, local loading and saving.

A leaf layer: imports nothing else from dagger_jax.
"""

from dagger_jax.tokenizer.chat_template import (
    CHAT_ROLES,
    CHATML_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IM_START,
    SPECIAL_TOKENS,
)
from dagger_jax.tokenizer.load import load_tokenizer, save_tokenizer
from dagger_jax.tokenizer.train_bpe import ensure_default_tokenizer, train_bpe_tokenizer

__all__ = [
    "CHAT_ROLES",
    "CHATML_TEMPLATE",
    "ENDOFTEXT",
    "IM_END",
    "IM_START",
    "SPECIAL_TOKENS",
    "ensure_default_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "train_bpe_tokenizer",
]
