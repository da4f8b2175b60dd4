"""Batched autoregressive decoding with a KV cache over our Qwen3 params, and scoring.

The decoder is `qwen3.Qwen3ForCausalLM` itself (fp32 compute) with its optional KV cache: the
model the trainer trains is the model that samples.

Layout. Each row keeps its sequence contiguous in cache slots: slot p holds the token at
position p. Prompts are right-padded into a [batch, P] prefill; the first generated token of a
row goes to slot len(prompt), overwriting prefill padding, and attention only sees slots <= the
query's own position. So no row ever sees another row's padding, and a row's output is the same
whether it runs alone or in a batch.

With a prefix cache (models/prefix_cache.py) a row's slots [0, n) are copied in from an earlier
sequence sharing its first n tokens, and only the rest of its prompt is prefilled, at
positions n, n + 1, ...: an agent's next turn re-runs only what was appended since its last.

Shapes are bucketed (batch, prompt length, cache length, stop-id count) so that requests of
varied sizes reuse a few compiled programs. Decoding runs as a device-side while loop in chunks
of `chunk_steps` tokens; between chunks the host may end rows early (stop strings need a
tokenizer, which only the host has).

Log-probs. Every returned log-prob is log_softmax of the model's raw logits (temperature 1, no
top-p truncation) at the sampled token: the model's own probability of what was generated,
whatever sampling settings produced it. This is what a trainer or an importance weight wants;
note that it is not the probability under the tempered / truncated sampling distribution.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.prefix_cache import CachedPrefix, PrefixCache
from dagger_jax.models.qwen3 import KVCache, Qwen3ForCausalLM, output_embedding

Array = jax.Array

# Below this, lengths round up to a power of two; above, to a multiple of it (bounded waste).
# Each new shape costs a compile (seconds on CPU) while an episode's prompt grows turn by turn,
# so few buckets beat tight ones: a prompt growing to 8K tokens meets at most 10 shapes.
_POW2_LIMIT = 8192
MIN_SEQ_BUCKET = 16
# Positions per vocabulary projection when scoring, so [T, vocab] logits are never whole.
_SCORE_CHUNK = 128


def bucket(n: int, minimum: int = 1) -> int:
    """The compiled size that holds n: a power of two up to 8192, then a multiple of 8192."""
    n = max(int(n), minimum, 1)
    if n <= _POW2_LIMIT:
        return 1 << (n - 1).bit_length()
    return -(-n // _POW2_LIMIT) * _POW2_LIMIT


@dataclasses.dataclass(frozen=True)
class Request:
    """One row to decode. temperature 0 is greedy; `seed` makes sampling reproducible."""

    prompt: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0
    # Sample only ids below this (0: the whole vocabulary). A model's vocabulary is often padded
    # past its tokenizer's (Qwen3: 151936 vs 151669); an untrained model samples the padding.
    # Log-probs are then over the allowed ids.
    vocab_limit: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
        if self.vocab_limit < 0:
            raise ValueError(f"Request.vocab_limit must be >= 0, got {self.vocab_limit}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not self.prompt:
            raise ValueError("Request.prompt is empty: decoding needs at least one token")
        if self.max_new_tokens < 0:
            raise ValueError(f"Request.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Request.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"Request.temperature must be >= 0, got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class Completion:
    """What one row produced. `matched` is the stop token id or stop string that ended it."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]      # untempered model log-probs of `tokens` (see module doc)
    finish_reason: str               # "stop" | "length"
    matched: int | str | None = None


# Host-side early stop: (row, generated tokens, how many were already checked) ->
# (tokens to keep, matched stop string), or None to go on.
StopCheck = Callable[[int, Sequence[int], int], "tuple[int, str] | None"]


class _Controls(NamedTuple):
    prompt_len: Array   # [B] int32
    max_new: Array      # [B] int32
    temperature: Array  # [B] float32
    top_p: Array        # [B] float32
    stop_ids: Array     # [B, K] int32, -1 = none
    seeds: Array        # [B] uint32
    vocab_limit: Array  # [B] int32: ids at or above it are never sampled


class _State(NamedTuple):
    k: Array            # [layers, B, S, kv_heads, head_dim]
    v: Array
    tokens: Array       # [B, S] prompt then generated tokens, slot = position
    logprobs: Array     # [B, S] log-prob of the generated token in each slot
    logits: Array       # [B, vocab] next-token logits of each row
    length: Array       # [B] tokens so far (prompt + generated)
    done: Array         # [B]
    stopped: Array      # [B] ended by a stop token


# --- the model with a cache -------------------------------------------------------------------

def _forward(params: Any, config: Qwen3Config, tokens: Array, positions: Array,
             k_cache: Array, v_cache: Array) -> tuple[Array, Array, Array]:
    """Runs tokens [B, T] at positions [B, T] through the model (qwen3.py, fp32), writing their
    K/V to those cache slots. Returns the final-norm hidden states [B, T, hidden] and the
    updated caches."""
    hidden, cache = Qwen3ForCausalLM(config).apply(
        {"params": params}, tokens, positions=positions, return_hidden=True,
        cache=KVCache(k_cache, v_cache))
    return hidden, cache.k, cache.v


def _unembed(params: Any, config: Qwen3Config, hidden: Array) -> Array:
    w = output_embedding(params, config).astype(jnp.float32)
    return jnp.einsum("...h,hv->...v", hidden, w, preferred_element_type=jnp.float32)


# --- sampling -------------------------------------------------------------------------------

def _sample(logits: Array, temperature: Array, top_p: Array, keys: Array,
            vocab_limit: Array) -> tuple[Array, Array]:
    """Per-row greedy (temperature 0) or temperature + nucleus sampling; untempered log-probs."""
    allowed = jnp.arange(logits.shape[-1])[None, :] < vocab_limit[:, None]
    logits = jnp.where(allowed, logits, -jnp.inf)
    logp = jax.nn.log_softmax(logits, axis=-1)
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    # Nucleus: keep the most likely tokens until the mass *before* a token reaches top_p (the
    # top token is always kept), expressed as a logit threshold so no scatter is needed.
    ordered = -jnp.sort(-scaled, axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p[:, None]
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    truncated = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    sampled = jax.vmap(jax.random.categorical)(keys, truncated)
    tokens = jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("config", "cache_len"))
def _prefill(params: Any, tokens: Array, controls: _Controls, *, config: Qwen3Config,
             cache_len: int) -> _State:
    b, p = tokens.shape
    shape = (config.num_hidden_layers, b, cache_len, config.num_key_value_heads, config.head_dim)
    k = jnp.zeros(shape, jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(p), (b, p))
    hidden, k, v = _forward(params, config, tokens, positions, k, jnp.zeros_like(k))
    last = hidden[jnp.arange(b), controls.prompt_len - 1]
    seq = jnp.zeros((b, cache_len), jnp.int32).at[:, :p].set(tokens)
    return _State(k, v, seq, jnp.zeros((b, cache_len), jnp.float32), _unembed(params, config, last),
                  controls.prompt_len, controls.max_new <= 0, jnp.zeros((b,), bool))


@functools.partial(jax.jit, static_argnames=("config",))
def _extend(params: Any, k: Array, v: Array, seq: Array, suffix: Array, start: Array,
            controls: _Controls, *, config: Qwen3Config) -> _State:
    """Prefill after cached prefixes: row i's cache already holds slots [0, start[i]); its
    prompt's remaining tokens are suffix[i] (right-padded), run at positions start[i] + j."""
    b, t = suffix.shape
    positions = start[:, None] + jnp.arange(t)[None, :]
    hidden, k, v = _forward(params, config, suffix, positions, k, v)
    last = hidden[jnp.arange(b), controls.prompt_len - start - 1]
    return _State(k, v, seq, jnp.zeros(seq.shape, jnp.float32), _unembed(params, config, last),
                  controls.prompt_len, controls.max_new <= 0, jnp.zeros((b,), bool))


@functools.partial(jax.jit, static_argnames=("config", "steps"))
def _decode(params: Any, controls: _Controls, state: _State, *, config: Qwen3Config,
            steps: int) -> _State:
    """Up to `steps` tokens for every unfinished row (stops early once all rows are done)."""
    b, cache_len = state.tokens.shape
    rows = jnp.arange(b)

    def body(carry):
        i, s = carry
        active = ~s.done
        # A row's key depends only on its seed and position: the same draw in any batch.
        keys = jax.vmap(lambda seed, pos: jax.random.fold_in(jax.random.key(seed), pos))(
            controls.seeds, s.length)
        tok, lp = _sample(s.logits, controls.temperature, controls.top_p, keys, controls.vocab_limit)
        slot = jnp.where(active, s.length, cache_len)  # finished rows write nowhere
        tokens = s.tokens.at[rows, slot].set(tok, mode="drop")
        logprobs = s.logprobs.at[rows, slot].set(lp, mode="drop")
        length = s.length + active
        at_limit = length - controls.prompt_len >= controls.max_new
        # SGLang checks the length limit before stop tokens: a stop token that is also the
        # last allowed token finishes as "length".
        hit = active & jnp.any(tok[:, None] == controls.stop_ids, axis=1) & ~at_limit
        pos = jnp.minimum(s.length, cache_len - 1)[:, None]
        hidden, k, v = _forward(params, config, tok[:, None], pos, s.k, s.v)
        new = _State(k, v, tokens, logprobs, _unembed(params, config, hidden[:, 0]), length,
                     s.done | hit | at_limit, s.stopped | hit)
        return i + 1, new

    _, state = jax.lax.while_loop(lambda c: (c[0] < steps) & ~jnp.all(c[1].done), body, (0, state))
    return state


# --- host side -------------------------------------------------------------------------------

def _controls(requests: Sequence[Request], batch: int, stop_width: int) -> tuple[np.ndarray, _Controls]:
    prompt_bucket = bucket(max(len(r.prompt) for r in requests), MIN_SEQ_BUCKET)
    tokens = np.zeros((batch, prompt_bucket), np.int32)
    plen = np.ones(batch, np.int32)          # padding rows: one token, nothing to generate
    max_new = np.zeros(batch, np.int32)
    temperature = np.zeros(batch, np.float32)
    top_p = np.ones(batch, np.float32)
    stop_ids = np.full((batch, stop_width), -1, np.int32)
    seeds = np.zeros(batch, np.uint32)
    limit = np.full(batch, np.iinfo(np.int32).max, np.int32)
    for i, r in enumerate(requests):
        if r.vocab_limit:
            limit[i] = r.vocab_limit
        tokens[i, :len(r.prompt)] = r.prompt
        plen[i], max_new[i] = len(r.prompt), r.max_new_tokens
        temperature[i], top_p[i] = r.temperature, r.top_p
        stop_ids[i, :len(r.stop_token_ids)] = r.stop_token_ids
        seeds[i] = np.uint32(r.seed & 0xFFFFFFFF)
    return tokens, _Controls(*(jnp.asarray(a) for a in (plen, max_new, temperature, top_p, stop_ids,
                                                        seeds, limit)))


def generate(params: Any, config: Qwen3Config, requests: Sequence[Request], *,
             stop_check: StopCheck | None = None, chunk_steps: int = 64,
             min_batch: int = 1, prefix_cache: PrefixCache | None = None) -> list[Completion]:
    """Decodes all requests as one batch; returns one Completion per request, in order.

    prefix_cache: rows start from the K/V of their longest cached prefix, and every row's
    tokens are stored in it afterwards (it must hold K/V of these same params).

    min_batch pads the batch to at least that many rows: a server whose batches vary in size
    compiles one batch shape instead of one per power of two (each a few seconds on CPU)."""
    if not requests:
        return []
    if chunk_steps < 1:
        raise ValueError(f"generate: chunk_steps must be >= 1, got {chunk_steps}")
    for i, r in enumerate(requests):
        bad = [t for t in r.prompt if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"requests[{i}].prompt: token id {bad[0]} is outside the vocabulary "
                             f"[0, {config.vocab_size})")
    batch = bucket(max(len(requests), min_batch))
    tokens, controls = _controls(requests, batch, bucket(max(len(r.stop_token_ids) for r in requests), 4))
    cache_len = max(tokens.shape[1], bucket(max(len(r.prompt) + r.max_new_tokens for r in requests),
                                            MIN_SEQ_BUCKET))
    reused = [prefix_cache.lookup(r.prompt) for r in requests] if prefix_cache is not None else []
    if any(reused):
        state = _prefill_from_cache(params, config, requests, reused, tokens, controls, cache_len)
    else:
        state = _prefill(params, jnp.asarray(tokens), controls, config=config, cache_len=cache_len)
    plen = [len(r.prompt) for r in requests]
    cut: dict[int, tuple[int, str]] = {}      # rows ended on the host by a stop string
    checked = [0] * len(requests)
    while True:
        done = np.asarray(state.done)
        if done[:len(requests)].all():
            break
        state = _decode(params, controls, state, config=config, steps=chunk_steps)
        if stop_check is not None:
            length, seq = np.asarray(state.length), np.asarray(state.tokens)
            for i in range(len(requests)):
                n = int(length[i]) - plen[i]
                if i in cut or n <= checked[i]:
                    continue
                hit = stop_check(i, seq[i, plen[i]:plen[i] + n].tolist(), checked[i])
                checked[i] = n
                if hit is not None:
                    cut[i] = hit
            if cut:
                ended = np.zeros(batch, bool)
                ended[list(cut)] = True
                state = state._replace(done=state.done | jnp.asarray(ended))
    completions = _completions(requests, state, plen, cut)
    if prefix_cache is not None:
        k, v = np.asarray(state.k), np.asarray(state.v)
        for i, (r, c) in enumerate(zip(requests, completions)):
            n = len(r.prompt) + len(c.tokens)  # every kept token's K/V is in its slot
            prefix_cache.store(r.prompt + c.tokens, k[:, i, :n], v[:, i, :n])
    return completions


def _prefill_from_cache(params: Any, config: Qwen3Config, requests: Sequence[Request],
                        reused: Sequence[CachedPrefix | None], tokens: np.ndarray,
                        controls: _Controls, cache_len: int) -> _State:
    """The prefill, with each row's cached prefix copied in and only the rest of it run."""
    batch = tokens.shape[0]
    shape = (config.num_hidden_layers, batch, cache_len, config.num_key_value_heads,
             config.head_dim)
    k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    start = np.zeros(batch, np.int32)
    for i, hit in enumerate(reused):
        if hit is not None:
            k[:, i, :hit.length], v[:, i, :hit.length] = hit.k, hit.v
            start[i] = hit.length
    rest = [len(r.prompt) - int(start[i]) for i, r in enumerate(requests)]
    suffix = np.zeros((batch, bucket(max(rest), MIN_SEQ_BUCKET)), np.int32)
    for i, r in enumerate(requests):
        suffix[i, :rest[i]] = r.prompt[start[i]:]
    seq = np.zeros((batch, cache_len), np.int32)
    seq[:, :tokens.shape[1]] = tokens
    return _extend(params, jnp.asarray(k), jnp.asarray(v), jnp.asarray(seq), jnp.asarray(suffix),
                   jnp.asarray(start), controls, config=config)


def _completions(requests: Sequence[Request], state: _State, plen: list[int],
                 cut: dict[int, tuple[int, str]]) -> list[Completion]:
    length, seq = np.asarray(state.length), np.asarray(state.tokens)
    logprobs, stopped = np.asarray(state.logprobs), np.asarray(state.stopped)
    out = []
    for i, r in enumerate(requests):
        n = int(length[i]) - plen[i]
        ids = seq[i, plen[i]:plen[i] + n].tolist()
        lps = logprobs[i, plen[i]:plen[i] + n].tolist()
        keep, matched_str = cut.get(i, (n, None))
        if matched_str is not None and not (keep == n and stopped[i]):
            # A stop string ended the row (a stop token on the same last token wins, as in SGLang).
            out.append(Completion(tuple(ids[:keep]), tuple(lps[:keep]), "stop", matched_str))
        elif stopped[i]:
            out.append(Completion(tuple(ids), tuple(lps), "stop", ids[-1]))
        else:
            out.append(Completion(tuple(ids), tuple(lps), "length", None))
    return out


# --- scoring ---------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("config",))
def _next_token_logprobs(params: Any, tokens: Array, *, config: Qwen3Config) -> Array:
    """[B, T] -> [B, T]: entry t is log p(tokens[t + 1] | tokens[:t + 1]); the last is junk."""
    b, t = tokens.shape
    hidden = Qwen3ForCausalLM(config).apply({"params": params}, tokens, return_hidden=True)
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((b, 1), tokens.dtype)], axis=1)
    chunk = min(t, _SCORE_CHUNK)

    def one(args):
        h, tgt = args
        logp = jax.nn.log_softmax(_unembed(params, config, h), axis=-1)
        return jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]

    split = lambda a: jnp.moveaxis(a.reshape(b, t // chunk, chunk, *a.shape[2:]), 1, 0)  # noqa: E731
    out = jax.lax.map(one, (split(hidden), split(targets)))
    return jnp.moveaxis(out, 0, 1).reshape(b, t)


def token_logprobs(params: Any, config: Qwen3Config,
                   sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """For each sequence s: [log p(s[i] | s[:i]) for i in 1..len(s)-1], from one batched forward."""
    if not sequences:
        return []
    longest = max(len(s) for s in sequences)
    if min(len(s) for s in sequences) == 0:
        raise ValueError("token_logprobs: empty sequence")
    tokens = np.zeros((bucket(len(sequences)), bucket(longest, MIN_SEQ_BUCKET)), np.int32)
    for i, s in enumerate(sequences):
        bad = [t for t in s if not 0 <= int(t) < config.vocab_size]
        if bad:
            raise ValueError(f"sequences[{i}]: token id {bad[0]} is outside the vocabulary "
                             f"[0, {config.vocab_size})")
        tokens[i, :len(s)] = s
    lp = np.asarray(_next_token_logprobs(params, jnp.asarray(tokens), config=config))
    return [lp[i, :len(s) - 1] for i, s in enumerate(sequences)]


def score(params: Any, config: Qwen3Config, input_ids: Sequence[int],
          target_ids: Sequence[int]) -> np.ndarray:
    """log p(target_ids[i] | input_ids + target_ids[:i]) for each i, from one forward."""
    if not input_ids:
        raise ValueError("score: input_ids is empty (the first target needs a context)")
    if not target_ids:
        return np.zeros((0,), np.float32)
    return token_logprobs(params, config, [list(input_ids) + list(target_ids)])[0][-len(target_ids):]
