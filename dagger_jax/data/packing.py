"""Packing tokenized examples into fixed-shape rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dagger_jax.names import FLOAT_KEYS, PACKED_KEYS


def pack_examples(
    examples: Sequence[tuple[np.ndarray, ...]], seq_len: int
) -> dict[str, np.ndarray]:
    """Pack (ids, loss mask[, weights, old log-probs]) examples into rows of exactly seq_len
    tokens, first fit.

    Each example goes whole into the first row with room for it (examples are never
    split across rows), in the order given. Returns arrays of shape [rows, seq_len]:

    - input_ids (int32): the tokens; 0 in padding.
    - target_ids (int32): input_ids[t + 1] when t + 1 is in the same example, else 0.
    - loss_mask (float32): 1 where target_ids[t] is a trainable token (the example's
      mask at t + 1), else 0. An example's first token is never a target.
    - segment_ids (int32): 1, 2, 3, ... per example within a row; 0 in padding.
    - positions (int32): 0, 1, 2, ... restarting in each example; 0 in padding.
    - loss_weights (float32): the example's per-token weight at t + 1 (the recipe's w: see
      data/examples.py); without one, 1.0 exactly where loss_mask is 1 (weight-one recipes).
    - old_logprobs (float32): the sampling log-prob of target_ids[t] (GRPO's ratio); 0 without.

    An example longer than seq_len is truncated to its first seq_len tokens; the loss
    on whatever was cut off is lost, so callers whose targets sit at the end of long
    contexts must shorten the context themselves first. Empty examples are dropped.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (one input and one target), got {seq_len}")
    clipped: list[tuple[np.ndarray, ...]] = []
    for index, example in enumerate(examples):
        if len(example) not in (2, 4):
            raise ValueError(f"example {index}: expected (ids, mask) or (ids, mask, weights, "
                             f"old_logprobs), got {len(example)} arrays")
        ids, mask = np.asarray(example[0]), np.asarray(example[1])
        if len(example) == 4:
            weights = np.asarray(example[2], np.float32)
            old = np.asarray(example[3], np.float32)
        else:
            weights, old = mask.astype(np.float32), np.zeros(mask.shape, np.float32)
        if ids.ndim != 1 or any(a.shape != ids.shape for a in (mask, weights, old)):
            raise ValueError(
                f"example {index}: ids, mask (and weights, old_logprobs) must be 1-D and of "
                f"equal length, got shapes {ids.shape} and {mask.shape}"
            )
        if len(ids):
            clipped.append((ids[:seq_len].astype(np.int32), mask[:seq_len].astype(bool),
                            weights[:seq_len], old[:seq_len]))

    # First fit: free[r] is the room left in row r. A capacity array grown by
    # doubling keeps the search one vectorised scan per example.
    free = np.zeros(16, dtype=np.int64)
    num_rows = 0
    placement: list[tuple[int, int]] = []  # (row, offset) per clipped example
    for ids, *_ in clipped:
        fits = np.flatnonzero(free[:num_rows] >= len(ids))
        if len(fits):
            row = int(fits[0])
        else:
            if num_rows == len(free):
                free = np.concatenate([free, np.zeros_like(free)])
            row, num_rows = num_rows, num_rows + 1
            free[row] = seq_len
        placement.append((row, seq_len - int(free[row])))
        free[row] -= len(ids)

    packed = {key: np.zeros((num_rows, seq_len),
                            dtype=np.float32 if key in FLOAT_KEYS else np.int32)
              for key in PACKED_KEYS}
    segments_in_row = np.zeros(num_rows, dtype=np.int32)
    for (ids, mask, weights, old), (row, start) in zip(clipped, placement):
        end = start + len(ids)
        segments_in_row[row] += 1
        packed["input_ids"][row, start:end] = ids
        packed["target_ids"][row, start : end - 1] = ids[1:]
        packed["loss_mask"][row, start : end - 1] = mask[1:]
        # Weights sit on the target like the mask; off the mask they carry no loss.
        packed["loss_weights"][row, start : end - 1] = np.where(mask[1:], weights[1:], 0.0)
        packed["old_logprobs"][row, start : end - 1] = old[1:]
        packed["segment_ids"][row, start:end] = segments_in_row[row]
        packed["positions"][row, start:end] = np.arange(len(ids), dtype=np.int32)
    return packed
