"""Issue 4's end to end, with real parts only: two stand-in SGLang servers serving a tiny student
(each its own process), the scripted expert as teacher, synthetic tasks in bubblewrap, the
rollout service in its own process -> ArrayRecord shards -> reader -> packed batches. One run
checks all of it: one of the two student servers is killed mid-collection, the pool fails over
and every episode completes, and the episodes it wrote are then checked as in a run without
faults (mixture, labels, the served tokens, the loss mask). (A train step on a service's shards
is the loop's: tests/recipes/test_loop_service.py.)"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dagger_jax.agent import ChatTokenizer
from dagger_jax.data.examples import build_examples
from dagger_jax.data.shards import EpisodeSource
from dagger_jax.data.trajectory_pipeline import TrajectoryPipeline
from dagger_jax.envs.tasks.synthetic import generate_tasks
from dagger_jax.envs.tasks.task import write_tasks
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.models.qwen3 import init_params
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.sglang_client import SGLangClient
from dagger_jax.rollout.collector import CollectionJob
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.rollout.mixing import RolloutRule
from dagger_jax.rollout.service import ServiceJob
from dagger_jax.rollout.service_client import RolloutServiceClient
from tests.rollout.test_service import free_port, start_service

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BETA = 0.5
MAX_NEW = 24
TASKS = generate_tasks(3, seed=33)
EPISODES = len(TASKS)


def tiny_config(vocab: int) -> Qwen3Config:
    return Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       max_position_embeddings=4096, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, chat_dir, chat):
    config = tiny_config(len(chat.tokenizer))
    params = init_params(config, jax.random.key(0))
    return export_hf(params, config, tmp_path_factory.mktemp("student") / "hf", tokenizer_dir=chat_dir)


def start_student_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(ROOT / "tools" / "serve_local.py"), "--model",
                                str(model_dir), "--port", "0", "--max-batch", "8"],
                               stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    url = process.stdout.readline().strip()
    assert url.startswith("http://"), log.read_text()
    return process, url


def service_job(tmp_path, chat_dir, endpoints) -> ServiceJob:
    tasks_path = tmp_path / "tasks.jsonl"
    write_tasks(TASKS, tasks_path)
    job = CollectionJob(job_id="iter0", iteration=0, rule=RolloutRule(beta=BETA),
                        task_ids=tuple(t.instance_id for t in TASKS),
                        out_dir=str(tmp_path / "data" / "iter_000"), episodes_per_task=1, seed=7,
                        student_version="step0", teacher_id="scripted-expert",
                        settings=EpisodeSettings(max_turns=6, max_new_tokens=MAX_NEW, context_budget=4096))
    return ServiceJob(job=job, tasks_path=str(tasks_path), tokenizer_path=str(chat_dir), sandbox="bwrap",
                      student={"kind": "sglang", "endpoints": endpoints,
                               "sampling": {"temperature": 0.0, "max_new_tokens": MAX_NEW}},
                      teacher={"kind": "expert"}, concurrency=4, records_per_shard=4)


def test_served_students_one_killed_expert_teacher_service_shards_batches(
        tmp_path, chat_dir, chat: ChatTokenizer, student_dir, bwrap_backend):
    first, url_a = start_student_server(student_dir, tmp_path / "a.log")
    second, url_b = start_student_server(student_dir, tmp_path / "b.log")
    port = free_port()
    service = start_service(port, tmp_path / "service.log")
    try:
        job = service_job(tmp_path, chat_dir, [url_a, url_b])
        seen = []

        def on_status(status):
            seen.append(status["stats"].get("student_calls", 0))
            if first.poll() is None and seen[-1] >= 2:
                os.kill(first.pid, signal.SIGKILL)

        report = asyncio.run(RolloutServiceClient(f"http://127.0.0.1:{port}", poll_s=0.2)
                             .run(job, on_status=on_status))

        # One of the two student servers was killed mid-collection: the pool failed over to
        # the other and every episode completed.
        assert first.poll() is not None, "the first server was never killed"
        assert report["failed"] == {} and report["episodes_written"] == EPISODES
        pool = report["endpoints"]["student"]
        assert pool["failovers"] >= 1 and report["stats"]["retries"] >= 1
        assert [e["up"] for e in pool["endpoints"]] == [False, True]
        records = list(EpisodeSource(job.job.out_dir)[i] for i in range(EPISODES))
        assert all(r.outcome.end_reason in ("finish", "turn_limit") for r in records)
        turns = [t for r in records for t in r.turns]
        student_turns = [(r, t) for r in records for t in r.turns if t.executor == "student"]

        # The executed-by-student fraction is 1 - beta (a binomial, 3.5 sigma).
        n = len(turns)
        assert abs(len(student_turns) - n * (1 - BETA)) <= 3.5 * math.sqrt(n * BETA * (1 - BETA))
        # Every visited state has a label; one teacher call per visited state.
        assert all(t.label_text is not None and t.label_ids for t in turns)
        assert report["stats"]["teacher_calls"] == n == report["stats"]["turns"]

        # The recorded student ids are what a server returned (both serve the same weights;
        # greedy: ask the survivor again and compare).
        async def regenerate():
            client = SGLangClient(url_b, vocab_size=len(chat.tokenizer))
            params = SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW,
                                    stop_token_ids=(chat.end_of_turn_id,))
            try:
                return [await client.generate(r.trunk_ids[:t.prompt_len], params) for r, t in student_turns[:6]]
            finally:
                await client.aclose()

        for (r, t), again in zip(student_turns, asyncio.run(regenerate())):
            executed = r.trunk_ids[t.prompt_len:t.executed_end]
            if again.finish_reason == "length":  # closed with an end-of-turn the model did not emit
                assert executed == [*again.output_ids, chat.end_of_turn_id]
            else:
                assert executed == list(again.output_ids)
            assert len(t.sample_logprobs) == len(again.output_ids)
            np.testing.assert_allclose(t.sample_logprobs, again.logprobs, atol=1e-4)

        # Loss mask = exactly the label tokens.
        for r in records:
            examples, _ = build_examples(r, max_len=4096)
            for ex in examples:
                masked = [int(i) for i, m in zip(ex.ids, ex.loss_mask) if m]
                labels = [i for t in r.turns if t.label_ids for i in t.label_ids]
                assert masked and _is_subsequence_of_labels(masked, r)
                assert len(masked) <= len(labels)

        # Reader -> packed batches: every label token of every episode is a target once.
        pipeline = TrajectoryPipeline([job.job.out_dir], seq_len=4096, batch_size=2, seed=0,
                                      process_index=0, process_count=1)
        batches = [pipeline.batch(step) for step in range(pipeline.num_steps(1))]
        assert all(b["input_ids"].shape == (2, 4096) for b in batches)
        label_tokens = sum(len(t.label_ids) for r in records for t in r.turns)
        assert sum(int(b["loss_mask"].sum()) for b in batches) == label_tokens
    finally:
        for process in (first, second, service):
            process.kill()
            process.wait()


def _is_subsequence_of_labels(masked: list[int], record) -> bool:
    """The masked tokens are the concatenation of some turns' label ids, in turn order."""
    remaining = list(masked)
    for t in record.turns:
        if t.label_ids and remaining[:len(t.label_ids)] == t.label_ids:
            remaining = remaining[len(t.label_ids):]
    return not remaining
