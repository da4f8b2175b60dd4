"""KV-cache decoding and scoring against transformers' generate and our own full forward."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch

from dagger_jax.models import sampling
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_import import load_hf_params
from dagger_jax.models.qwen3 import Qwen3ForCausalLM, params_shape
from dagger_jax.models.sampling import Request, bucket, generate, score, token_logprobs
from tests.models.hf_fixtures import make_hf_qwen3

NEW = 12
# Lengths 3, 9 and 17 share one compiled shape (batch 4, prompt 32, cache 32) in every test.
PROMPTS = [(5, 77, 12), (3, 140, 9, 9, 61, 2, 88, 150, 31),
           tuple(int(t) for t in np.random.default_rng(4).integers(0, 160, 17))]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    hf_dir = tmp_path_factory.mktemp("sampling") / "hf"
    hf_model = make_hf_qwen3(hf_dir, seed=3)
    config = Qwen3Config.from_hf_dir(hf_dir)
    shape = params_shape(config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = load_hf_params(hf_dir, config, shape, jax.tree_util.tree_map(lambda _: device, shape))
    return hf_model, config, params


@pytest.fixture(scope="module")
def greedy(model):
    _, config, params = model
    return generate(params, config, [Request(p, NEW) for p in PROMPTS])


@functools.partial(jax.jit, static_argnames="config")
def _log_softmax_forward(params, tokens, config):
    return jax.nn.log_softmax(Qwen3ForCausalLM(config).apply({"params": params}, tokens), axis=-1)


def full_forward_logprobs(config, params, prompt, generated) -> np.ndarray:
    """log_softmax of one un-cached forward over prompt + generated, at the generated tokens."""
    seq = list(prompt) + list(generated)
    # Right padding to one length: causal attention keeps it out of the real positions.
    logp = np.asarray(_log_softmax_forward(params, np.asarray([seq + [0] * (32 - len(seq))]), config))[0]
    start = len(prompt) - 1
    return np.array([logp[start + i, t] for i, t in enumerate(generated)])


def test_greedy_batch_equals_transformers_generate_per_prompt(model, greedy):
    hf_model, _, _ = model
    for prompt, out in zip(PROMPTS, greedy):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                                    do_sample=False, max_new_tokens=NEW, pad_token_id=0)
        assert list(out.tokens) == ref[0, len(prompt):].tolist()
        assert out.finish_reason == "length" and out.matched is None and len(out.tokens) == NEW


def test_a_row_alone_equals_the_same_row_in_a_batch(model, greedy):
    _, config, params = model
    alone = generate(params, config, [Request(PROMPTS[0], NEW)])[0]
    assert alone.tokens == greedy[0].tokens
    np.testing.assert_allclose(alone.logprobs, greedy[0].logprobs, atol=1e-5)
    padded = generate(params, config, [Request(PROMPTS[0], NEW)], min_batch=8)  # rows of padding
    assert len(padded) == 1 and padded[0].tokens == greedy[0].tokens
    np.testing.assert_allclose(padded[0].logprobs, greedy[0].logprobs, atol=1e-5)


def test_sampled_logprobs_and_score_equal_a_full_forward(model, greedy):
    _, config, params = model
    sampled = generate(params, config, [Request(p, NEW, temperature=1.3, top_p=0.9, seed=i)
                                        for i, p in enumerate(PROMPTS)])
    for prompt, out in [*zip(PROMPTS, greedy), *zip(PROMPTS, sampled)]:
        ref = full_forward_logprobs(config, params, prompt, out.tokens)
        # Untempered: the model's own log-prob whatever the temperature / top_p.
        np.testing.assert_allclose(out.logprobs, ref, atol=1e-5)
        np.testing.assert_allclose(score(params, config, prompt, out.tokens), ref, atol=1e-5)


def test_token_logprobs_batches_sequences_of_different_lengths(model):
    _, config, params = model
    seqs = [list(PROMPTS[1]), list(PROMPTS[2]), list(PROMPTS[0])]
    for seq, lp in zip(seqs, token_logprobs(params, config, seqs)):
        np.testing.assert_allclose(lp, full_forward_logprobs(config, params, seq[:1], seq[1:]),
                                   atol=1e-5)


def test_sampling_is_reproducible_from_the_seed(model, greedy):
    _, config, params = model
    run = lambda seed, **kw: generate(  # noqa: E731
        params, config, [Request(p, NEW, temperature=1.0, seed=seed + i, **kw)
                         for i, p in enumerate(PROMPTS)])
    first, again, other = run(10), run(10), run(99)
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert [c.tokens for c in first] != [c.tokens for c in other]
    # A nucleus this small holds only the most likely token: greedy, whatever the seed.
    assert [c.tokens for c in run(7, top_p=1e-6)] == [c.tokens for c in greedy]


def test_stop_token_ends_with_stop_and_is_included(model, greedy):
    _, config, params = model
    tokens = greedy[1].tokens
    stop, at = tokens[4], tokens.index(tokens[4])
    requests = [Request(p, NEW) for p in PROMPTS]
    requests[1] = Request(PROMPTS[1], NEW, stop_token_ids=(stop, 159))
    out = generate(params, config, requests)
    assert out[1].tokens == tokens[:at + 1]
    assert (out[1].finish_reason, out[1].matched) == ("stop", stop)
    assert [out[0].tokens, out[2].tokens] == [greedy[0].tokens, greedy[2].tokens]  # unaffected


def test_stop_token_as_last_allowed_token_finishes_by_length(model, greedy):
    # SGLang checks max_new_tokens before stop tokens.
    _, config, params = model
    tokens = greedy[0].tokens
    n = tokens.index(tokens[3]) + 1
    out = generate(params, config, [Request(PROMPTS[0], n, stop_token_ids=(tokens[3],))])[0]
    assert out.tokens == tokens[:n] and out.finish_reason == "length"


def test_host_stop_check_cuts_rows_between_chunks(model, greedy):
    _, config, params = model
    seen = []

    def stop_after_five(row, tokens, checked):
        seen.append((row, len(tokens), checked))
        return (5, "STOP") if row == 2 and len(tokens) >= 5 else None

    out = generate(params, config, [Request(p, NEW) for p in PROMPTS], stop_check=stop_after_five,
                   chunk_steps=4)
    assert out[2].tokens == greedy[2].tokens[:5] and out[2].logprobs == greedy[2].logprobs[:5]
    assert (out[2].finish_reason, out[2].matched) == ("stop", "STOP")
    assert out[0].tokens == greedy[0].tokens and out[1].tokens == greedy[1].tokens
    assert (2, 8, 4) in seen  # called again only with new tokens, told how many it saw


def test_zero_new_tokens_and_bad_input(model):
    _, config, params = model
    out = generate(params, config, [Request((1, 2), 0)])[0]
    assert (out.tokens, out.finish_reason) == ((), "length")
    with pytest.raises(ValueError, match=r"token id 160 is outside the vocabulary \[0, 160\)"):
        generate(params, config, [Request((1, 160), 3)])
    with pytest.raises(ValueError, match="prompt is empty"):
        Request((), 3)
    assert score(params, config, [1, 2], []).shape == (0,)


def test_buckets():
    assert [bucket(n, 16) for n in (1, 16, 17, 512, 513, 1500, 9000)] == [16, 16, 32, 512, 1024, 2048, 16384]
    assert bucket(3) == 4 and bucket(0) == 1
    assert sampling.MIN_SEQ_BUCKET == 16


def test_vocab_limit_keeps_sampling_below_it(model):
    _, config, params = model
    limit = 40
    out = generate(params, config, [Request(p, NEW, temperature=1.5, seed=i, vocab_limit=limit)
                                    for i, p in enumerate(PROMPTS)])
    assert all(t < limit for o in out for t in o.tokens)
    free = generate(params, config, [Request(p, NEW, temperature=1.5, seed=i) for i, p in enumerate(PROMPTS)])
    assert any(t >= limit for o in free for t in o.tokens)  # without it the model goes past 40
    with pytest.raises(ValueError, match="vocab_limit must be >= 0"):
        Request(PROMPTS[0], NEW, vocab_limit=-1)


@pytest.mark.slow
def test_prefix_cache_reuses_earlier_turns_and_changes_nothing(model):
    """Three 'turns' per row, each prompt = last prompt + its output + new tokens (an agent's
    growing context): with the cache, turns 2-3 prefill only their new part, and tokens and
    log-probs equal a cache-free run; a stop-string cut stores only the kept tokens."""
    from dagger_jax.models.prefix_cache import PrefixCache
    _, config, params = model
    rng = np.random.default_rng(11)
    cache = PrefixCache(capacity=8, min_tokens=4)
    prompts = [list(p) for p in PROMPTS]
    reused = 0
    for turn in range(3):
        requests = [Request(p, 6) for p in prompts]
        cut = lambda row, tokens, checked: (3, "X") if row == 1 and len(tokens) >= 3 else None  # noqa: E731
        cached = generate(params, config, requests, prefix_cache=cache, stop_check=cut, chunk_steps=2)
        plain = generate(params, config, requests, stop_check=cut, chunk_steps=2)
        for c, p, prompt in zip(cached, plain, prompts):
            assert c.tokens == p.tokens and c.finish_reason == p.finish_reason
            np.testing.assert_allclose(c.logprobs, p.logprobs, atol=1e-5)
            np.testing.assert_allclose(c.logprobs, full_forward_logprobs(config, params, prompt, c.tokens),
                                       atol=1e-5)
        assert len(cached[1].tokens) == 3
        prompts = [p + list(c.tokens) + rng.integers(0, 160, 2).tolist() for p, c in zip(prompts, cached)]
        reused += sum(len(p) - 2 for p in prompts) if turn < 2 else 0
    # Turn 1 misses (empty cache); every later lookup reuses all of the last prompt + output,
    # so only the 2 new tokens run.
    assert cache.hits == 6 and cache.misses == 3
    assert cache.reused_tokens == reused
    # Each row's last sequence replaced its earlier prefixes.
    assert len(cache) == 3


def test_prefix_cache_lookup_and_store_rules():
    from dagger_jax.models.prefix_cache import PrefixCache
    kv = lambda n: np.arange(2 * n * 3, dtype=np.float32).reshape(2, n, 1, 3)  # noqa: E731
    cache = PrefixCache(capacity=2, min_tokens=2)
    cache.store([1, 2, 3, 4], kv(4), kv(4))
    hit = cache.lookup([1, 2, 3, 4])          # the whole prompt: the last token still runs
    assert hit.length == 3 and hit.k.shape == (2, 3, 1, 3)
    np.testing.assert_array_equal(hit.k, kv(4)[:, :3])
    assert cache.lookup([1, 2, 9, 9, 9]).length == 2       # longest common prefix
    assert cache.lookup([1, 9, 9]) is None                 # under min_tokens
    cache.store([5, 6, 7], kv(3), kv(3))
    cache.store([8, 9, 10], kv(3), kv(3))                  # capacity 2: [1, 2, 3, 4] evicted
    assert cache.lookup([1, 2, 3, 4, 5]) is None and len(cache) == 2
    with pytest.raises(ValueError, match="do not match"):
        cache.store([1, 2, 3], kv(2), kv(2))
    with pytest.raises(ValueError, match="capacity"):
        PrefixCache(capacity=0)
