"""Small Python functions (with input generators) that synthetic bug-fix tasks are built from.

Each template renders a function's source under a chosen name and draws argument tuples for
its tests; expected values come from running the correct source (our own generated code,
never a model's) when the task is generated.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable

Args = tuple


@dataclasses.dataclass(frozen=True)
class FunctionTemplate:
    names: tuple[str, ...]          # name pool; one is picked per use
    source: str                     # with {name} and {k} (a small int constant) placeholders
    draw_args: Callable[[random.Random, int], Args]
    summary: str                    # "is supposed to <summary>" in the problem statement


def _ints(rng: random.Random, n: int, lo: int = -9, hi: int = 20) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


TEMPLATES: tuple[FunctionTemplate, ...] = (
    FunctionTemplate(
        ("clamp", "bound", "limit_value"),
        "def {name}(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x\n",
        lambda r, k: (r.randint(-20, 30), r.randint(-5, 3), r.randint(4, 12)),
        "keep a value inside [lo, hi]"),
    FunctionTemplate(
        ("count_above", "num_over", "tally_exceeding"),
        "def {name}(values, threshold):\n    return sum(1 for v in values if v > threshold)\n",
        lambda r, k: (_ints(r, r.randint(3, 8)), r.randint(0, 10)),
        "count the values strictly above a threshold"),
    FunctionTemplate(
        ("running_total", "cumulative", "prefix_sums"),
        "def {name}(values):\n    out = []\n    total = 0\n    for v in values:\n        total += v\n"
        "        out.append(total)\n    return out\n",
        lambda r, k: (_ints(r, r.randint(3, 7)),),
        "return the running totals of a list"),
    FunctionTemplate(
        ("is_sorted", "in_order", "ascending"),
        "def {name}(values):\n    for i in range(len(values) - 1):\n        if values[i] > values[i + 1]:\n"
        "            return False\n    return True\n",
        lambda r, k: (sorted(_ints(r, r.randint(2, 6))) if r.random() < 0.5 else _ints(r, r.randint(2, 6)),),
        "tell whether a list is in non-decreasing order"),
    FunctionTemplate(
        ("dedupe", "unique_in_order", "drop_repeats"),
        "def {name}(values):\n    seen = set()\n    out = []\n    for v in values:\n        if v not in seen:\n"
        "            seen.add(v)\n            out.append(v)\n    return out\n",
        lambda r, k: (_ints(r, r.randint(4, 9), 0, 5),),
        "remove repeated items, keeping the first of each"),
    FunctionTemplate(
        ("chunk", "batches", "split_every"),
        "def {name}(values, size):\n    return [values[i:i + size] for i in range(0, len(values), size)]\n",
        lambda r, k: (_ints(r, r.randint(3, 9)), r.randint(2, 4)),
        "split a list into consecutive pieces of a given size"),
    FunctionTemplate(
        ("weighted_sum", "dot", "score_total"),
        "def {name}(values, weights):\n    total = 0\n    for v, w in zip(values, weights):\n"
        "        total += v * w\n    return total\n",
        lambda r, k: (lambda n: (_ints(r, n), _ints(r, n, 0, 5)))(r.randint(2, 6)),
        "multiply values by weights and adds them up"),
    FunctionTemplate(
        ("label_number", "classify", "tag_multiple"),
        "def {name}(n):\n    if n % {k} == 0 and n % 5 == 0:\n        return 'both'\n    if n % {k} == 0:\n"
        "        return 'first'\n    if n % 5 == 0:\n        return 'second'\n    return str(n)\n",
        lambda r, k: (r.choice([k * 5, k, 5, r.randint(1, 60)]),),
        "label a number by which of two divisors divide it"),
    FunctionTemplate(
        ("mean_or", "average", "safe_mean"),
        "def {name}(values, default):\n    if not values:\n        return default\n"
        "    return sum(values) / len(values)\n",
        lambda r, k: (_ints(r, r.randint(0, 5)), r.randint(-1, 1)),
        "average a list, with a default for an empty one"),
    FunctionTemplate(
        ("last_index", "rfind_item", "find_last"),
        "def {name}(values, target):\n    for i in range(len(values) - 1, -1, -1):\n        if values[i] == target:\n"
        "            return i\n    return -1\n",
        lambda r, k: (lambda vs: (vs, r.choice(vs + [99])))(_ints(r, r.randint(3, 8), 0, 4)),
        "find the last position of an item, or -1"),
    FunctionTemplate(
        ("pairwise_diff", "deltas", "step_changes"),
        "def {name}(values):\n    return [b - a for a, b in zip(values, values[1:])]\n",
        lambda r, k: (_ints(r, r.randint(2, 7)),),
        "return the differences between neighbours"),
    FunctionTemplate(
        ("window_max", "rolling_peak", "sliding_max"),
        "def {name}(values, width):\n    return [max(values[i:i + width]) for i in range(len(values) - width + 1)]\n",
        lambda r, k: (_ints(r, r.randint(4, 8)), r.randint(2, 3)),
        "return the maximum of each window of a given width"),
    FunctionTemplate(
        ("count_long_words", "long_word_count", "words_at_least"),
        "def {name}(text, min_len):\n    return len([w for w in text.split() if len(w) >= min_len])\n",
        lambda r, k: (" ".join(r.choice(["a", "to", "the", "fix", "bug", "tests", "module", "value"])
                               for _ in range(r.randint(2, 8))), r.randint(2, 5)),
        "count the words of at least a given length"),
    FunctionTemplate(
        ("scale_shift", "affine", "rescale"),
        "def {name}(values, factor):\n    return [v * factor + {k} for v in values]\n",
        lambda r, k: (_ints(r, r.randint(2, 6)), r.randint(-3, 4)),
        "scale each value and shift it by a constant"),
)
