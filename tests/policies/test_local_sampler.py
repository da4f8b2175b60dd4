"""LocalSampler: batching of concurrent requests, weight swaps, stops, and its errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from dagger_jax.models import sampling
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.models.qwen3 import init_params
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.local_sampler import LocalSampler
from dagger_jax.tokenizer import train_bpe_tokenizer

TINY = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   max_position_embeddings=64)
CORPUS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.",
          "<function=execute_bash>\n<parameter=command>\nls -la\n</parameter>\n</function>"] * 4
# Up to 8 prompt tokens and 8 new ones: every request here compiles to prompt/cache bucket 16.
PROMPTS = [[5, 17, 250], [9, 9, 31, 299, 140, 2], [100], [7, 8, 9, 10, 11, 12, 13, 14]]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)


_init = jax.jit(init_params, static_argnums=0)  # compiled once: far faster than eager init


def export_tiny_model(out_dir: Path, seed: int, tokenizer_dir: Path | None = None) -> Path:
    """A random tiny Qwen3 written as a Hugging Face directory (what export_hf.py writes)."""
    params = _init(TINY, jax.random.key(seed))
    # Sharper logits than the 0.02 init gives, so greedy choices are far from ties.
    params = {**params, "lm_head": params["lm_head"] * 25.0}
    return export_hf(params, TINY, out_dir, tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("local_sampler")
    tok = train_bpe_tokenizer(CORPUS, 300, root / "tok")
    return {"a": export_tiny_model(root / "a", 0, tok), "b": export_tiny_model(root / "b", 1, tok),
            "tok": tok}


@pytest.fixture(scope="module")
def sampler(dirs):
    s = LocalSampler.from_hf_dir(dirs["a"], max_batch=4)
    yield s
    asyncio.run(s.aclose())


def test_concurrent_requests_share_a_batch_and_match_their_solo_results(sampler):
    async def main():
        solo = [await sampler.generate(p, GREEDY) for p in PROMPTS]
        before = sampler.batches_run
        together = await asyncio.gather(*(sampler.generate(p, GREEDY) for p in PROMPTS))
        return solo, together, sampler.batches_run - before

    solo, together, batches = asyncio.run(main())
    assert batches < len(PROMPTS)
    for s, t in zip(solo, together):
        assert t.output_ids == s.output_ids and len(t.output_ids) == 8
        np.testing.assert_allclose(t.logprobs, s.logprobs, atol=1e-5)
        assert t.finish_reason == "length" and t.weight_version == "default"
        assert t.prompt_tokens == len(PROMPTS[together.index(t)])


def test_requests_arriving_during_a_batch_form_the_next_one(sampler, monkeypatch):
    release, sizes = threading.Event(), []
    real = sampling.generate

    def held_generate(params, config, requests, **kw):
        sizes.append(len(requests))
        if len(sizes) == 1:
            release.wait(timeout=60)  # hold the first batch until the others have queued
        return real(params, config, requests, **kw)

    monkeypatch.setattr(sampling, "generate", held_generate)

    async def main():
        first = asyncio.create_task(sampler.generate(PROMPTS[0], GREEDY))
        while not sizes:
            await asyncio.sleep(0.005)
        rest = [asyncio.create_task(sampler.generate(p, GREEDY)) for p in PROMPTS[1:]]
        while sampler.pending < len(rest):
            await asyncio.sleep(0.005)
        release.set()
        return await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert sizes == [1, 3]


def test_load_weights_swaps_outputs_and_version_and_survives_a_bad_path(sampler, dirs, tmp_path):
    async def main():
        old = await sampler.generate(PROMPTS[1], GREEDY)
        await sampler.load_weights(dirs["b"], "v2")
        new = await sampler.generate(PROMPTS[1], GREEDY)
        with pytest.raises(FileNotFoundError, match="no config.json"):
            await sampler.load_weights(tmp_path / "missing", "v3")
        still = await sampler.generate(PROMPTS[1], GREEDY)
        await sampler.load_weights(dirs["a"])  # no version given: the version stays
        back = await sampler.generate(PROMPTS[1], GREEDY)
        return old, new, still, back

    old, new, still, back = asyncio.run(main())
    assert new.output_ids != old.output_ids and new.weight_version == "v2"
    assert still.output_ids == new.output_ids and still.weight_version == "v2"
    assert back.output_ids == old.output_ids and back.weight_version == "v2"
    assert sampler.model_info() == {"model_path": str(dirs["a"]), "tokenizer_path": str(dirs["a"]),
                                    "is_generation": True, "preferred_sampling_params": None,
                                    "weight_version": "v2"}


def test_stop_strings_cut_at_the_first_token_completing_them(sampler, dirs):
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(str(dirs["tok"]))
    base = asyncio.run(sampler.generate(PROMPTS[3], GREEDY))
    ids = list(base.output_ids)
    decode = lambda n: tok.decode(ids[:n], skip_special_tokens=True)  # noqa: E731
    assert base.text == decode(8)
    # A stop string that first appears once token k is out: the tail of the text at k.
    k = next(n for n in range(2, 8) if decode(n)[-1:] and decode(n)[-1:] not in decode(n - 1))
    stop = decode(k)[-1]
    params = SamplingParams(temperature=0.0, max_new_tokens=8, stop=("never there", stop))
    sampled = asyncio.run(sampler.sample(PROMPTS[3], params))
    assert sampled.generation.output_ids == tuple(ids[:k])
    assert (sampled.generation.finish_reason, sampled.matched) == ("stop", stop)
    assert sampled.generation.text == decode(k)[:decode(k).find(stop)]


def test_stop_token_and_eos(sampler, dirs):
    base = asyncio.run(sampler.generate(PROMPTS[0], GREEDY))
    stop = base.output_ids[2]
    k = base.output_ids.index(stop) + 1
    out = asyncio.run(sampler.sample(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=8,
                                                                stop_token_ids=(stop,))))
    assert out.generation.output_ids == base.output_ids[:k] and out.matched == stop
    eos = LocalSampler(sampler._model.params, TINY, eos_token_ids=(stop,))
    out = asyncio.run(eos.sample(PROMPTS[0], GREEDY))
    assert out.generation.output_ids == base.output_ids[:k]
    assert (out.generation.finish_reason, out.matched) == ("stop", stop)


def test_score_equals_the_model_and_needs_no_sampling(sampler):
    context, targets = PROMPTS[1], [3, 200, 41]
    got = asyncio.run(sampler.score(context, targets))
    model = sampler._model
    np.testing.assert_allclose(got, sampling.score(model.params, model.config, context, targets),
                               atol=1e-6)
    assert asyncio.run(sampler.score(context, [])) == ()


def test_bad_requests_name_what_is_wrong(sampler):
    before = sampler.batches_run
    with pytest.raises(ValueError, match=r"input_ids\[1\] = 300 is outside the vocabulary \[0, 300\)"):
        asyncio.run(sampler.generate([1, 300], GREEDY))
    with pytest.raises(ValueError, match=r"target_ids\[0\] = -1"):
        asyncio.run(sampler.score([1], [-1]))
    with pytest.raises(ValueError, match="input_ids is empty"):
        asyncio.run(sampler.generate([], GREEDY))
    with pytest.raises(ValueError, match="exceed the context length 64"):
        asyncio.run(sampler.generate([1] * 60, SamplingParams(max_new_tokens=5)))
    no_tokenizer = LocalSampler(sampler._model.params, TINY)
    with pytest.raises(ValueError, match="stop strings .* need a tokenizer"):
        asyncio.run(no_tokenizer.generate([1], SamplingParams(stop=("x",))))
    empty = asyncio.run(sampler.generate([1, 2], SamplingParams(max_new_tokens=0)))
    assert (empty.output_ids, empty.finish_reason, empty.prompt_tokens) == ((), "length", 2)
    assert sampler.batches_run == before  # none of these reached the model


def test_a_token_actor_samples_each_turn_with_the_turns_seed(sampler, dirs):
    """A rerun of a killed episode asks with the same turn seeds and gets the same tokens."""
    from dagger_jax.agent import ChatTokenizer
    from dagger_jax.policies.actors import TokenActor, TurnState
    from dagger_jax.rollout.mixed_episode import turn_seed
    chat = ChatTokenizer.from_path(dirs["a"])
    actor = TokenActor("student", sampler, chat, SamplingParams(temperature=1.0, max_new_tokens=8))

    def state(seed):
        return TurnState(task=None, messages=(), prompt_ids=tuple(PROMPTS[1]), sandbox=None,
                         session="ep", seed=seed)

    async def sample(seeds):
        return [(await actor.act(state(s))).token_ids for s in seeds]

    seeds = [turn_seed(1234, turn) for turn in range(4)]
    first, again = asyncio.run(sample(seeds)), asyncio.run(sample(seeds))
    assert first == again
    assert len(set(first)) > 1  # the seeds differ per turn, and so do the samples


def test_prefix_cache_serves_growing_prompts_and_is_dropped_with_old_weights(dirs):
    """A prompt that extends an earlier prompt + output reuses its K/V (same outputs as a
    sampler without the cache); new weights start a new, empty cache."""
    long_prompt = [int(t) for t in np.random.default_rng(5).integers(1, TINY.vocab_size, 40)]

    async def main(s: LocalSampler, reload_to: Path | None):
        first = await s.generate(long_prompt, GREEDY)
        grown = long_prompt + list(first.output_ids) + [3, 4]
        second = await s.generate(grown, GREEDY)
        hits = s.prefix_cache.hits if s.prefix_cache else None
        after = None
        if reload_to is not None:
            await s.load_weights(reload_to, "v2")
            after = await s.generate(grown, GREEDY)
        await s.aclose()
        return first, second, hits, after, s.prefix_cache

    cached = LocalSampler.from_hf_dir(dirs["a"], max_batch=2)
    first, second, hits, after, cache = asyncio.run(main(cached, dirs["b"]))
    plain = LocalSampler.from_hf_dir(dirs["a"], max_batch=2, prefix_cache_entries=0)
    p_first, p_second, p_hits, _, p_cache = asyncio.run(main(plain, None))
    assert hits == 1 and p_hits is None and p_cache is None
    assert (first.output_ids, second.output_ids) == (p_first.output_ids, p_second.output_ids)
    np.testing.assert_allclose(second.logprobs, p_second.logprobs, atol=1e-5)
    # After the reload the old K/V are gone: b's answer, computed from scratch.
    fresh_b = LocalSampler.from_hf_dir(dirs["b"], max_batch=2, prefix_cache_entries=0)
    grown = long_prompt + list(first.output_ids) + [3, 4]

    async def solo():
        out = await fresh_b.generate(grown, GREEDY)
        await fresh_b.aclose()
        return out

    assert after.output_ids == asyncio.run(solo()).output_ids
    assert cache.hits == 0 and cache.misses == 1
    with pytest.raises(ValueError, match="prefix_cache_entries"):
        LocalSampler.from_hf_dir(dirs["a"], prefix_cache_entries=-1)
