"""Evaluation metrics from episode records, and the covariate-shift measure.

Episode metrics (held-out tasks, beta = 0, greedy): resolve rate, submission rate (the agent
called `finish`), parse-error rate (turns whose text was not one valid tool call), mean turns,
and the rate of repeated-action loops (the same action executed LOOP_REPEATS times in a row).

Covariate shift, as the paper measures it: the student's mean per-token negative log-likelihood
of the teacher's labels on states the student itself visits, against the same on states the
teacher visits. A student that only learned the teacher's states does worse on its own.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Sequence

from dagger_jax.data.records import EpisodeRecord
from dagger_jax.policies.local_sampler import LocalSampler
from dagger_jax.rollout.faults import FAULT_REASONS

LOOP_REPEATS = 3
Scorer = Callable[[Sequence[int], Sequence[int]], Awaitable[Sequence[float]]]


def has_loop(record: EpisodeRecord, repeats: int = LOOP_REPEATS) -> bool:
    run, last = 0, None
    for turn in record.turns:
        run = run + 1 if turn.executed_text == last else 1
        last = turn.executed_text
        if run >= repeats:
            return True
    return False


def episode_metrics(records: Iterable[EpisodeRecord]) -> dict[str, float]:
    records = list(records)
    n = len(records)
    if n == 0:
        raise ValueError("episode_metrics: no episodes to evaluate")
    turns = [t for r in records for t in r.turns]
    return {
        "episodes": n,
        "resolve_rate": sum(r.outcome.resolved for r in records) / n,
        "submission_rate": sum(r.outcome.end_reason == "finish" for r in records) / n,
        "parse_error_rate": (sum(not t.parse_ok for t in turns) / len(turns)) if turns else 0.0,
        "mean_turns": len(turns) / n,
        "loop_rate": sum(has_loop(r) for r in records) / n,
        "fault_rate": sum(r.outcome.end_reason in FAULT_REASONS for r in records) / n,
    }


def labelled_states(records: Iterable[EpisodeRecord], executor: str) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, label ids) of every labelled turn that `executor` executed."""
    return [(r.trunk_ids[:t.prompt_len], list(t.label_ids)) for r in records for t in r.turns
            if t.executor == executor and t.label_ids]


async def label_nll(score: Scorer, states: Sequence[tuple[list[int], list[int]]],
                    max_states: int, seed: int = 0) -> float | None:
    """Mean per-token NLL of the labels under the scorer (a sample of max_states states)."""
    if not states:
        return None
    chosen = random.Random(seed).sample(list(states), min(max_states, len(states)))
    total, count = 0.0, 0
    for prompt, label in chosen:
        logprobs = await score(prompt, label)
        total -= sum(logprobs)
        count += len(logprobs)
    return total / max(count, 1)


async def covariate_shift(score: Scorer, student_records: Iterable[EpisodeRecord],
                          teacher_records: Iterable[EpisodeRecord], max_states: int = 32,
                          seed: int = 0) -> dict[str, float | None]:
    """The student's label NLL on its own states and on the teacher's, and their difference."""
    own = await label_nll(score, labelled_states(student_records, "student"), max_states, seed)
    teacher = await label_nll(score, labelled_states(teacher_records, "teacher"), max_states, seed)
    gap = own - teacher if own is not None and teacher is not None else None
    return {"nll_student_states": own, "nll_teacher_states": teacher, "shift_gap": gap}


async def export_covariate_shift(export_dir: Path, student_records: Sequence[EpisodeRecord],
                                 teacher_records: Sequence[EpisodeRecord], max_states: int = 32,
                                 seed: int = 0) -> dict[str, float]:
    """covariate_shift scored by the exported student itself (in-process JAX sampler), with the
    measures that have no states left out."""
    sampler = LocalSampler.from_hf_dir(export_dir, tokenizer=None)
    try:
        shift = await covariate_shift(sampler.score, student_records, teacher_records, max_states,
                                      seed=seed)
    finally:
        await sampler.aclose()
    return {k: v for k, v in shift.items() if v is not None}
