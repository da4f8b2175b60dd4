"""The train-step benchmark runs end to end on a minuscule model; its FLOPs count is right.

No wall-clock assertions: only that every measured number is positive and finite.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import ml_collections
import pytest

from dagger_jax.models.config import Qwen3Config

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# h=4, i=8, L=2, H_q=2, H_kv=1, d=2, V=10, tied embeddings.
HAND = Qwen3Config(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=2,
                   tie_word_embeddings=True)


def test_flops_formula_hand_count(bench):
    # Per layer: q 4*4=16, k 4*2=8, v 8, o 4*4=16, gate/up/down 3*4*8=96 -> 144; two layers 288.
    # LM head (the tied embedding, still a matmul) 4*10=40 -> N = 328.
    assert bench.matmul_params(HAND) == 328
    # 6*328 = 1968; attention 12 * L=2 * H_q=2 * d=2 * T=16 = 1536.
    assert bench.train_flops_per_token(HAND, 16) == 1968 + 1536 == 3504
    # Untied adds the separate head's params to num_params, not to N (the head is counted once).
    untied = Qwen3Config(**{**HAND.to_dict(), "tie_word_embeddings": False})
    assert bench.matmul_params(untied) == 328
    assert untied.num_params == HAND.num_params + 40


def test_benchmark_runs_on_a_tiny_model(bench, tmp_path):
    model = Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                        rope_theta=10_000.0, max_position_embeddings=64)
    cases = {"tiny": bench.BenchCase("tiny", model, batch_size=2, seq_len=8)}
    train = ml_collections.ConfigDict(dict(steps=10, lr=1e-3, warmup_steps=1, schedule="cosine",
                                           end_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
                                           weight_decay=0.01, clip_grad_norm=1.0, loss_chunk=4))
    result = bench.run_benchmark(["tiny"], steps=2, warmup=1, peak_sizes=(128,), peak_repeats=2,
                                 cases=cases, train_config=train)

    def positive_finite(x):
        return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

    assert positive_finite(result["jax_peak"]["flops"])
    assert positive_finite(result["torch_peak"]["flops"])
    (row,) = result["rows"]
    assert row["tokens_per_step"] == 16
    assert row["flops_per_token"] == bench.train_flops_per_token(model, 8)
    for side in ("jax", "torch"):
        timing = row[side]
        assert len(timing["step_s"]) == 2 and all(map(positive_finite, timing["step_s"]))
        for key in ("median_s", "min_s", "tokens_per_s", "mfu"):
            assert positive_finite(timing[key]), (side, key, timing[key])
        assert all(map(positive_finite, timing["losses"]))  # a CE loss over 64 tokens is ~ln 64
    assert positive_finite(row["ratio_jax_over_torch"])
    assert positive_finite(row["ratio_jax_over_torch_min"])

    table = bench.format_table(result)
    assert "tiny" in table and "6*N + 12*L*H_q*head_dim*T" in table
    json.dumps(result, default=str)  # what --json writes


def test_local_config_case_matches_configs_local(bench):
    local = bench.load_local_config()
    case = bench.bench_cases(local)["local"]
    assert case.model.hidden_size == local.model.hidden_size
    assert (case.batch_size, case.seq_len) == (local.train.batch_size, local.train.seq_len)


def test_decode_benchmark_runs_and_the_cache_changes_no_token():
    """benchmarks/decode.py on a minuscule model: it checks itself that both ways generate the
    same tokens; here, that every later turn reused the whole earlier context."""
    spec = importlib.util.spec_from_file_location(
        "_bench_decode", Path(__file__).resolve().parents[2] / "benchmarks" / "decode.py")
    decode = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decode)
    model = Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                        rope_theta=10_000.0, max_position_embeddings=256)
    result = decode.run(model, rows=2, turns=3, prompt=40, new=4, observation=6, batch=2)
    assert result["cache_hits"] == 4 and result["cache_misses"] == 2
    # Turns 2 and 3 skip the whole previous prompt + output: (40 + 4), (40 + 4 + 6 + 4) for
    # row 0, 7 tokens fewer for row 1.
    assert result["prompt_tokens_skipped"] == (44 + 54) + (37 + 47)
    assert result["final_prompt_tokens"] == 40 + 3 * (4 + 6)
    assert all(s > 0 for way in result["seconds"].values() for s in way) and result["speedup"] > 0
    assert decode.model_config("configs/local.py:dagger").hidden_size == 128


def test_attention_block_benchmark_runs(tmp_path):
    """benchmarks/attention_block.py on a minuscule config: every block's step is timed, the
    splash kernel's (in interpret mode) too."""
    repo = SCRIPT.parents[1]
    config = tmp_path / "tiny.py"
    config.write_text(
        "from dagger_jax.config_base import load_config_file\n"
        "def get_config(arg=None):\n"
        f"    c = load_config_file({str(repo / 'configs' / 'local.py')!r})\n"
        "    c.model.update(dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
        "                        num_attention_heads=2, num_key_value_heads=1, head_dim=8))\n"
        "    c.train.update(dict(batch_size=1, seq_len=128))\n"
        "    return c\n")
    spec = importlib.util.spec_from_file_location("_bench_attention_block", SCRIPT.parent / "attention_block.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.run(str(config), [0, 32, "splash"], steps=1)
    assert [r["attention_block"] for r in result["rows"]] == [0, 32, "splash"]
    assert result["seq_len"] == 128 and result["rows"][0]["relative_to_first"] == 1.0
    for row in result["rows"]:
        assert row["median_step_s"] > 0 and math.isfinite(row["relative_to_first"])
    with pytest.raises(ValueError, match="does not divide"):
        module.run(str(config), [48], steps=1)


def test_shard_transfer_benchmark_moves_every_shard_each_way():
    """benchmarks/shard_transfer.py on two small shards (it checks itself that the pulled
    manifest equals the pushed one); here, that every way was timed."""
    spec = importlib.util.spec_from_file_location(
        "_bench_transfer", Path(__file__).resolve().parents[2] / "benchmarks" / "shard_transfer.py")
    transfer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transfer)
    result = transfer.run(shards=2, shard_bytes=4096, rounds=1)
    assert set(result["ways"]) == {"copy", "sha256", "push", "pull"}
    assert all(row["mb_per_s"] > 0 and len(row["seconds"]) == 1 for row in result["ways"].values())
    assert result["ways"]["copy"]["ratio_to_copy"] == 1.0
