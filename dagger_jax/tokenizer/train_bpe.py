"""Training the embedded default tokenizer: a small byte-level BPE with ChatML specials."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from dagger_jax.tokenizer.chat_template import CHATML_TEMPLATE, ENDOFTEXT, IM_END, SPECIAL_TOKENS
from dagger_jax.tokenizer.load import save_tokenizer

# Qwen2/Qwen3's pre-tokenizer split: contractions, letter runs, single digits,
# punctuation runs, newline runs, other whitespace. Reusing it makes the tiny
# student's tokenization behave like the real one's (e.g. digits one by one).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = _BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
_SPECIALS_RE = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE on texts and save it in Hugging Face format in out_dir.

    The result has the special tokens <|endoftext|> (id 0, also the pad token),
    <|im_start|> (1) and <|im_end|> (2, the eos token) and CHATML_TEMPLATE as its chat
    template. vocab_size counts the 256 byte tokens and the specials; a small corpus
    may yield fewer tokens than asked for. Training is deterministic for the same texts.
    Returns out_dir.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    # No normalizer: byte-level BPE must round-trip any text exactly.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # Keeps character offsets exact (no whitespace trimming), as Qwen's tokenizer does.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_without_specials(texts), trainer=trainer)

    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        # The default clean-up would turn " ." into "." on decode and break round trips.
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    return save_tokenizer(hf_tokenizer, out_dir)


def _without_specials(texts: Iterable[str]) -> Iterator[str]:
    """Yield the pieces of texts between special-token strings.

    Encoding splits text at special tokens before BPE runs, but the trainer does not,
    so rendered chats would otherwise spend merges on '<|im_start|>' fragments.
    """
    for text in texts:
        for piece in _SPECIALS_RE.split(text):
            if piece:
                yield piece


def ensure_default_tokenizer(cache_dir: str | Path, texts: Iterable[str], vocab_size: int) -> Path:
    """Return the directory of the default tokenizer for (texts, vocab_size), training it once.

    The tokenizer lives in cache_dir/bpe<vocab_size>-<hash of texts>, so changing the
    corpus or the size builds a new one instead of silently reusing a stale one. It is
    built in a temporary directory and renamed into place, so a crash or a concurrent
    builder (another JAX process on the same host) never leaves a half-written one.
    """
    cache_dir = Path(cache_dir)
    corpus = list(texts)
    digest = hashlib.sha256()
    for text in corpus:
        encoded = text.encode("utf-8")
        # Length-prefixing keeps ["ab", "c"] and ["a", "bc"] apart.
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    final = cache_dir / f"bpe{vocab_size}-{digest.hexdigest()[:16]}"
    if (final / "tokenizer.json").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
    try:
        train_bpe_tokenizer(corpus, vocab_size, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        try:
            tmp.rename(final)
        except OSError:
            # Another process finished first; its result is identical (deterministic).
            if not (final / "tokenizer.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
