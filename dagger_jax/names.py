"""The names that cross layers, defined once: what a teacher gives for a state (label), how a
trained token is weighted (weight) and the arrays of a training batch. A recipe names one of each (recipes/recipes.py); the rollout
rule asks the teacher for the label (rollout/mixing.py), the examples weight their targets
(data/examples.py) and the train step picks its objective (train/loss.py) by the weight.

A leaf: it imports nothing of ours, so every layer may import it.
"""

from __future__ import annotations

# What the teacher gives at a visited state: its own action (DAgger, SFT, AggreVaTe), its
# log-probs of the student's sampled tokens (on-policy distillation), or nothing (GRPO).
LABELS = ("action", "logprobs", "none")

# How a trained token is weighted, which is also the train objective (train/loss.py):
# one: cross-entropy on the teacher's label; reverse_kl: the teacher-minus-sampler log-ratio on
# the student's own tokens; group_advantage: GRPO's clipped ratio times the episode's advantage.
WEIGHTS = ("one", "reverse_kl", "group_advantage")


# The arrays of a packed training batch, each [rows, seq_len] (data/packing.py writes them, the
# train step reads those its objective needs); the float ones are float32, the rest int32.
PACKED_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions",
               "loss_weights", "old_logprobs")
FLOAT_KEYS = ("loss_mask", "loss_weights", "old_logprobs")


def check_weight(weight: str, where: str) -> str:
    """`weight` if it is one of WEIGHTS, else a ValueError naming `where` it came from."""
    if weight not in WEIGHTS:
        raise ValueError(f"{where}: weight {weight!r} not in {WEIGHTS}")
    return weight


def check_label(label: str, where: str) -> str:
    """`label` if it is one of LABELS, else a ValueError naming `where` it came from."""
    if label not in LABELS:
        raise ValueError(f"{where}: label {label!r} not in {LABELS}")
    return label
