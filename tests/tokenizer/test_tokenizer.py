"""Tests for dagger_jax.tokenizer: BPE training, the ChatML template, loading and saving."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import transformers

from dagger_jax.tokenizer.sample_corpus import sample_texts
from dagger_jax.tokenizer import (
    CHATML_TEMPLATE,
    ensure_default_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_bpe_tokenizer,
)
from dagger_jax.tokenizer import train_bpe as train_bpe_module

VOCAB = 512


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return sample_texts(200, seed=0)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    return train_bpe_tokenizer(corpus, VOCAB, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> transformers.PreTrainedTokenizerBase:
    return load_tokenizer(tok_dir)


def _ids(encoded: object) -> list[int]:
    """apply_chat_template returns a BatchEncoding in transformers 5, a list before."""
    if isinstance(encoded, list):
        return encoded
    return list(encoded["input_ids"])  # type: ignore[index]


ROUND_TRIP_TEXTS = [
    "def f(x):\n    return x + 1\n",
    "  leading spaces and trailing  \t\n",
    "naïve café, Straße, ÅÆØ, ﬁ ligature, e\u0301 combining",
    "日本語のテキスト、中文，한국어 🎉🤖👩‍👩‍👧",
    "\r\nwindows\r\nlines\x00nul \x7f del \u200b zero-width",
    "x  = 'a' ; y . , !! ?? 12345678901234567890",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip_is_exact(tok: transformers.PreTrainedTokenizerBase, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_special_tokens(tok: transformers.PreTrainedTokenizerBase) -> None:
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    # Special-token strings inside text are single tokens, never byte pieces.
    assert tok.encode("a<|im_end|>b", add_special_tokens=False) == [
        *tok.encode("a", add_special_tokens=False),
        2,
        *tok.encode("b", add_special_tokens=False),
    ]
    # Encoding adds nothing by itself (no BOS/EOS).
    assert tok.encode("abc") == tok.encode("abc", add_special_tokens=False)


def test_vocab_and_qwen_style_pre_tokenization(tok: transformers.PreTrainedTokenizerBase) -> None:
    assert len(tok) == VOCAB
    # Digits are split one by one, as in Qwen's tokenizer.
    assert len(tok.encode("2024", add_special_tokens=False)) == 4
    # The chat markers in the corpus must not have been learned as ordinary merges.
    pieces = [tok.convert_tokens_to_string([t]) for t in tok.get_vocab() if tok.get_vocab()[t] > 2]
    assert not [p for p in pieces if "im_start" in p or "im_end" in p or "<|" in p]


def test_chat_template_renders_chatml_exactly(tok: transformers.PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Fix it."},
        {"role": "assistant", "content": "<function=finish>\n</function>"},
        {"role": "tool", "content": "ok"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nFix it.<|im_end|>\n"
        "<|im_start|>assistant\n<function=finish>\n</function><|im_end|>\n"
        "<|im_start|>tool\nok<|im_end|>\n"
    )
    assert tok.chat_template == CHATML_TEMPLATE
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == expected + "<|im_start|>assistant\n"
    ids = _ids(tok.apply_chat_template(messages, tokenize=True))
    assert ids == tok.encode(expected, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(2) == 4


def test_chat_template_rejects_unknown_role(tok: transformers.PreTrainedTokenizerBase) -> None:
    with pytest.raises(Exception, match="Unsupported chat role: robot"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_files_load_with_plain_auto_tokenizer(tok_dir: Path) -> None:
    names = {p.name for p in tok_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHATML_TEMPLATE
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    special = json.loads((tok_dir / "special_tokens_map.json").read_text())
    assert special == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    plain = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    assert plain.chat_template == CHATML_TEMPLATE


def test_training_is_deterministic(tmp_path: Path, tok_dir: Path, corpus: list[str]) -> None:
    again = train_bpe_tokenizer(iter(corpus), VOCAB, tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (tok_dir / name).read_bytes()
    other = train_bpe_tokenizer(corpus[:50], VOCAB, tmp_path / "other")
    assert (other / "tokenizer.json").read_bytes() != (tok_dir / "tokenizer.json").read_bytes()


def test_vocab_size_too_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_bpe_tokenizer(["abc"], 100, tmp_path)


def test_load_errors_name_the_path(tmp_path: Path, tok_dir: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_tokenizer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"no tokenizer files in {empty}")):
        load_tokenizer(empty)

    no_template = tmp_path / "no_template"
    shutil.copytree(tok_dir, no_template)
    config_path = no_template / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    message = re.escape(f"tokenizer in {no_template} has no chat template")
    with pytest.raises(ValueError, match=message):
        load_tokenizer(no_template)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        load_tokenizer(broken)


def test_save_tokenizer_round_trips(
    tmp_path: Path, tok: transformers.PreTrainedTokenizerBase
) -> None:
    out = save_tokenizer(tok, tmp_path / "export")
    reloaded = load_tokenizer(out)
    text = ROUND_TRIP_TEXTS[3] + "<|im_start|>user\nhi<|im_end|>\n"
    assert reloaded.encode(text) == tok.encode(text)
    assert reloaded.chat_template == tok.chat_template
    assert reloaded.eos_token_id == tok.eos_token_id and reloaded.pad_token_id == tok.pad_token_id
    assert not (out / "chat_template.jinja").exists()  # lives in tokenizer_config.json


def test_save_tokenizer_refuses_without_template(
    tmp_path: Path, tok_dir: Path
) -> None:
    bare = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    with pytest.raises(ValueError, match="without a chat template"):
        save_tokenizer(bare, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_ensure_default_tokenizer_builds_once(
    tmp_path: Path, corpus: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = corpus[:40]
    first = ensure_default_tokenizer(tmp_path, texts, 300)
    assert load_tokenizer(first).chat_template == CHATML_TEMPLATE
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dirs left

    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("retrained although the tokenizer is cached")

    monkeypatch.setattr(train_bpe_module, "train_bpe_tokenizer", fail)
    assert ensure_default_tokenizer(tmp_path, iter(texts), 300) == first
    # Another corpus or size is another tokenizer, not the stale one.
    with pytest.raises(AssertionError, match="retrained"):
        ensure_default_tokenizer(tmp_path, texts[:-1], 300)
    with pytest.raises(AssertionError, match="retrained"):
        ensure_default_tokenizer(tmp_path, texts, 301)


def test_ensure_default_tokenizer_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(texts: object, vocab_size: int, out_dir: Path) -> Path:
        (Path(out_dir) / "tokenizer.json").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(train_bpe_module, "train_bpe_tokenizer", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_default_tokenizer(tmp_path / "cache", ["abc"], 300)
    assert list((tmp_path / "cache").iterdir()) == []
