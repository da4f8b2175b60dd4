"""Tests for the sample corpus, its chat encoding with loss masks (the agent's encoder against
the tokenizer's own template), and packing/batching."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import transformers

from dagger_jax.tokenizer import sample_corpus
from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.packing import pack_examples
from dagger_jax.tokenizer.sample_corpus import sample_conversations, sample_texts
from dagger_jax.tokenizer import load_tokenizer, train_bpe_tokenizer

Tok = transformers.PreTrainedTokenizerBase


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tok:
    out = train_bpe_tokenizer(sample_texts(200, seed=0), 512, tmp_path_factory.mktemp("tok"))
    return load_tokenizer(out)


def _template_ids(tok: Tok, messages: list[dict]) -> list[int]:
    """Full-conversation ids; transformers 5 returns a BatchEncoding, older versions a list."""
    encoded = tok.apply_chat_template(messages, tokenize=True)
    return list(encoded if isinstance(encoded, list) else encoded["input_ids"])


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


# ---------------------------------------------------------------- sample corpus


def test_sample_conversations_are_deterministic() -> None:
    assert sample_conversations(30, seed=3) == sample_conversations(30, seed=3)
    assert sample_conversations(30, seed=3) != sample_conversations(30, seed=4)
    assert sample_conversations(30, seed=3)[:10] == sample_conversations(10, seed=3)
    assert sample_conversations(0, seed=3) == []
    with pytest.raises(ValueError):
        sample_conversations(-1, seed=0)


def test_sample_conversations_have_the_agent_shape() -> None:
    conversations = sample_conversations(60, seed=1)
    assert len({c[1]["content"] for c in conversations}) > 30  # varied problems
    call_re = re.compile(r"\n<function=(\w+)>\n(.*?)</function>$", re.S)
    for messages in conversations:
        roles = [m["role"] for m in messages]
        assert roles[:2] == ["system", "user"]
        assert roles[2:] == ["assistant", "tool"] * ((len(roles) - 3) // 2) + ["assistant"]
        assert 4 <= roles.count("assistant") <= 6
        calls = [call_re.search(m["content"]) for m in messages if m["role"] == "assistant"]
        assert all(calls), [m["content"] for m in messages]
        names = [c.group(1) for c in calls]  # type: ignore[union-attr]
        assert names[0] == "execute_bash" and names[-1] == "finish"
        assert "str_replace_editor" in names
        assert messages[-1]["content"].endswith("<function=finish>\n</function>")
        edit = messages[2 + 2 * names.index("str_replace_editor")]["content"]
        params = dict(re.findall(r"<parameter=(\w+)>\n(.*?)\n</parameter>", edit, re.S))
        assert params["command"] == "str_replace"
        source = messages[3]["content"]  # observation of the first `cat`
        assert params["path"].endswith(".py") and params["path"] in messages[2]["content"]
        assert source.count(params["old_str"]) == 1 and params["old_str"] != params["new_str"]


@pytest.mark.parametrize("maker", sample_corpus._BUG_MAKERS)
def test_injected_bugs_are_real_and_fixed_by_the_edit(
    maker: Callable[[random.Random], Any],
) -> None:
    rng = random.Random(7)
    for _ in range(25):
        bug = maker(rng)
        buggy: dict = {}
        exec(bug.source, buggy)
        try:
            assert repr(eval(bug.call, buggy)) != bug.expected
        except IndexError:
            assert bug.error_type == "IndexError"
        fixed: dict = {}
        exec(bug.source.replace(bug.old_line, bug.new_line), fixed)
        assert repr(eval(bug.call, fixed)) == bug.expected


def test_sample_texts_are_the_chat_template_rendering(tok: Tok) -> None:
    texts = sample_texts(5, seed=2)
    for text, messages in zip(texts, sample_conversations(5, seed=2)):
        assert text == tok.apply_chat_template(messages, tokenize=False)


# ---------------------------------------------------------------- chat encoding


def encode(tok: Tok, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return ChatTokenizer(tok).conversation(messages).arrays()


def test_encoded_conversations_match_apply_chat_template(tok: Tok) -> None:
    for messages in sample_conversations(20, seed=5):
        ids, mask = encode(tok, messages)
        assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == mask.shape
        assert ids.tolist() == _template_ids(tok, messages)

        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        runs = _runs(mask)
        assert [tok.decode(ids[a:b]) for a, b in runs] == [c + "<|im_end|>" for c in assistant]
        for a, _ in runs:  # the header right before each run is context, not target
            assert tok.decode(ids[:a]).endswith("<|im_start|>assistant\n")
            assert not mask[a - 3 : a].any()


# ---------------------------------------------------------------- packing


def _example(rng: np.random.Generator, length: int, base: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(base, base + length, dtype=np.int64)  # unique ids identify the example
    return ids, rng.random(length) < 0.5


def test_pack_examples_invariants() -> None:
    rng = np.random.default_rng(0)
    seq_len = 32
    examples = [_example(rng, int(rng.integers(1, 45)), 1000 * (i + 1)) for i in range(60)]
    packed = pack_examples(examples, seq_len)
    rows = packed["input_ids"].shape[0]
    dtypes = {"loss_mask": np.float32}
    for key in ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions"):
        dtype = dtypes.get(key, np.int32)
        assert packed[key].shape == (rows, seq_len) and packed[key].dtype == dtype

    seen = {}
    for r in range(rows):
        seg = packed["segment_ids"][r]
        used = int((seg > 0).sum())
        assert (seg[:used] > 0).all() and (seg[used:] == 0).all()  # padding only at the end
        assert (np.diff(seg[:used]) >= 0).all() and seg[0] == 1
        for s in range(1, int(seg.max()) + 1):
            (where,) = np.nonzero(seg == s)
            assert (np.diff(where) == 1).all()  # contiguous
            ids = packed["input_ids"][r, where]
            key = int(ids[0]) // 1000 - 1
            assert key not in seen  # no example appears twice or split across rows
            seen[key] = r
            src_ids, src_mask = examples[key]
            n = min(len(src_ids), seq_len)
            np.testing.assert_array_equal(ids, src_ids[:n])
            np.testing.assert_array_equal(packed["positions"][r, where], np.arange(n))
            np.testing.assert_array_equal(packed["target_ids"][r, where[:-1]], src_ids[1:n])
            np.testing.assert_array_equal(packed["loss_mask"][r, where[:-1]], src_mask[1:n])
            last = (r, where[-1])
            assert packed["target_ids"][last] == 0 and packed["loss_mask"][last] == 0
        for key in ("input_ids", "target_ids", "loss_mask", "positions"):
            assert not packed[key][r, used:].any()
    assert sorted(seen) == list(range(len(examples)))


def test_pack_examples_is_first_fit_and_truncates() -> None:
    lengths = [6, 7, 4, 3, 40]
    examples = [(np.full(n, i + 1), np.ones(n, bool)) for i, n in enumerate(lengths)]
    packed = pack_examples(examples, 10)
    np.testing.assert_array_equal(
        packed["input_ids"], [[1] * 6 + [3] * 4, [2] * 7 + [4] * 3, [5] * 10]
    )
    np.testing.assert_array_equal(
        packed["segment_ids"], [[1] * 6 + [2] * 4, [1] * 7 + [2] * 3, [1] * 10]
    )
    # The truncated example keeps its beginning and has no target past the cut.
    np.testing.assert_array_equal(packed["loss_mask"][2], [1.0] * 9 + [0.0])


def test_pack_examples_edge_cases() -> None:
    empty = pack_examples([], 8)
    assert all(v.shape == (0, 8) for v in empty.values())
    assert pack_examples([(np.zeros(0, int), np.zeros(0, bool))], 8)["input_ids"].shape == (0, 8)
    with pytest.raises(ValueError, match="example 0"):
        pack_examples([(np.arange(3), np.ones(4, bool))], 8)
    with pytest.raises(ValueError, match="seq_len"):
        pack_examples([(np.arange(3), np.ones(3, bool))], 1)


def test_packing_encoded_chats_trains_on_assistant_tokens(tok: Tok) -> None:
    examples = [encode(tok, m) for m in sample_conversations(8, seed=9)]
    packed = pack_examples(examples, 2048)
    targets = packed["target_ids"][packed["loss_mask"] > 0]
    assert (targets == tok.convert_tokens_to_ids("<|im_end|>")).sum() == sum(
        sum(m["role"] == "assistant" for m in c) for c in sample_conversations(8, seed=9)
    )
