"""Host-side K/V of recently decoded sequences, so a growing prompt is not prefilled again.

An agent's next prompt is its last prompt, plus what it generated, plus the tool's answer: all
but the last few hundred tokens were already run through the model one turn before. SGLang keeps
those K/V in its radix cache; the in-process sampler keeps them here. After each batch the
sampler stores every row's tokens (prompt + generated) with their K/V; before the next batch a
request takes the entry sharing its longest common token prefix and only the rest is prefilled.

An entry belongs to one set of weights: the sampler makes a new cache whenever it loads new
ones. Entries are evicted least recently used first. Everything lives in numpy on the host, so
the cache costs no device memory between batches (per entry 2 x layers x tokens x kv_heads x
head_dim float32: ~4 MB for the demo's student at 2,000 tokens).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class CachedPrefix:
    """The first `length` tokens' K/V, each [layers, length, kv_heads, head_dim]."""

    length: int
    k: np.ndarray
    v: np.ndarray


class PrefixCache:
    """Least-recently-used store of (token ids -> K/V) with longest-common-prefix lookup."""

    def __init__(self, capacity: int = 32, min_tokens: int = 32):
        """capacity: entries kept; min_tokens: shorter matches are not worth a reuse."""
        if capacity < 1:
            raise ValueError(f"PrefixCache.capacity must be >= 1, got {capacity}")
        if min_tokens < 1:
            raise ValueError(f"PrefixCache.min_tokens must be >= 1, got {min_tokens}")
        self.capacity = capacity
        self.min_tokens = min_tokens
        self._entries: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = (
            collections.OrderedDict())
        self._next_key = 0
        self.hits = 0           # lookups that reused a prefix
        self.misses = 0
        self.reused_tokens = 0  # prompt tokens not prefilled thanks to the cache

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: Sequence[int]) -> CachedPrefix | None:
        """The longest cached prefix of `prompt`, at most len(prompt) - 1 tokens long (the last
        prompt token always runs: its logits pick the first new token), or None."""
        ids = np.asarray(prompt, np.int64)
        best_key, best = None, 0
        for key, (tokens, _, _) in self._entries.items():
            n = _common_prefix(tokens, ids)
            if n > best:
                best_key, best = key, n
        best = min(best, len(ids) - 1)
        if best_key is None or best < self.min_tokens:
            self.misses += 1
            return None
        self._entries.move_to_end(best_key)
        _, k, v = self._entries[best_key]
        self.hits += 1
        self.reused_tokens += best
        return CachedPrefix(best, k[:, :best], v[:, :best])

    def store(self, tokens: Sequence[int], k: np.ndarray, v: np.ndarray) -> None:
        """Keeps `tokens` with their K/V ([layers, len(tokens), kv_heads, head_dim] each).

        Entries that are a prefix of the new one are dropped: it answers everything they did."""
        ids = np.asarray(tokens, np.int64)
        if len(ids) < self.min_tokens:
            return
        if k.shape[1] != len(ids) or v.shape != k.shape:
            raise ValueError(f"PrefixCache.store: K {k.shape} / V {v.shape} do not match "
                             f"{len(ids)} tokens")
        for key in [key for key, (t, _, _) in self._entries.items()
                    if len(t) <= len(ids) and _common_prefix(t, ids) == len(t)]:
            del self._entries[key]
        self._entries[self._next_key] = (ids, np.array(k), np.array(v))
        self._next_key += 1
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n
