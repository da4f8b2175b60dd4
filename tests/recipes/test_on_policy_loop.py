"""The loop as a user runs it (`python -m dagger_jax.main --config=configs/local.py:<recipe>`) for
the on-policy recipes, one tiny iteration each, with real parts only: synthetic tasks in
bubblewrap, the student sampled in-process, and for OPD an LM teacher (a tiny random Qwen3 in
the student's tokenizer) behind the stand-in SGLang server, scoring the student's tokens."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dagger_jax.data.shards import EpisodeSource
from dagger_jax.storage.layout import iteration_dir
from dagger_jax.models.config import Qwen3Config
from dagger_jax.models.hf_export import export_hf
from dagger_jax.models.qwen3 import init_params
from tests.serving.servers import serve_local
from tests.test_main import env

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# configs/local.py:<recipe> made tiny: a 2-layer student with dense attention (compiles faster
# than blocked), 1 task, 2 turns of 12 tokens, one epoch of one-row batches, no evaluation
# (these tests are about collection and training).
OVERRIDES = [
    "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
    "--config.model.num_hidden_layers=2", "--config.model.num_attention_heads=2",
    "--config.model.num_key_value_heads=1", "--config.model.head_dim=16",
    "--config.loop.iterations=1", "--config.loop.tasks_per_iteration=1",
    "--config.loop.max_turns=2", "--config.loop.max_new_tokens=12", "--config.loop.epochs=1",
    "--config.loop.concurrency=4", "--config.loop.temperature=1.0", "--config.loop.top_p=1.0",
    "--config.train.seq_len=2048", "--config.train.batch_size=1", "--config.train.log_every=1",
    "--config.train.loss_chunk=128", "--config.eval.enabled=False", "--config.progress=False",
    "--config.attention_block=0", "--config.loop.label_budget=0",
]


@pytest.fixture(scope="module")
def tokenizer_dir(chat_dir) -> Path:
    return chat_dir


@pytest.fixture(scope="module")
def teacher_url(tmp_path_factory, tokenizer_dir):
    """A tiny random LM in the student's tokenizer, served by tools/serve_local.py."""
    root = tmp_path_factory.mktemp("teacher")
    config = Qwen3Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=4096, tie_word_embeddings=True)
    model = export_hf(init_params(config, jax.random.key(1)), config, root / "hf",
                      tokenizer_dir=tokenizer_dir)
    with serve_local(model, root / "server.log", "--max-batch", "4", env=env()) as url:
        yield url


def run_loop(recipe: str, workdir: Path, tokenizer_dir: Path, *extra: str):
    command = [sys.executable, "-m", "dagger_jax.main", f"--config=configs/local.py:{recipe}",
               f"--workdir={workdir}", f"--config.tokenizer.dir={tokenizer_dir}", *OVERRIDES, *extra]
    return subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)


def trained(stderr: str) -> tuple[str, dict]:
    """The objective and last train metrics the loop reported for iteration 1."""
    match = re.search(r"iteration 1: trained with objective (\w+): (\{.*\})", stderr)
    assert match, stderr[-4000:]
    return match.group(1), json.loads(match.group(2))


def test_opd_iteration_trains_reverse_kl_on_teacher_scored_student_tokens(
        tmp_path, tokenizer_dir, teacher_url, bwrap_backend):
    done = run_loop("opd", tmp_path / "w", tokenizer_dir, "--config.loop.teacher=sglang",
                    f"--config.loop.teacher_endpoints={teacher_url}")
    assert done.returncode == 0, done.stderr[-4000:]
    objective, metrics = trained(done.stderr)
    assert objective == "reverse_kl"
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["target_tokens"] > 0 and "reverse_kl" in metrics
    # What it trained on: student turns only, every one scored by the teacher token by token.
    records = list(EpisodeSource(iteration_dir(tmp_path / "w", 1)))
    turns = [t for r in records for t in r.turns]
    assert len(records) == 1 and turns and all(t.executor == "student" for t in turns)
    assert all(len(t.teacher_logprobs) == t.num_executed for t in turns)
    assert (tmp_path / "w" / "exports" / "iter_001" / "config.json").exists()


def test_grpo_iteration_from_imported_weights_trains_the_clipped_group_objective(
        tmp_path, tokenizer_dir, bwrap_backend):
    """GRPO's iteration, started as at paper scale: tools/import_hf.py writes checkpoint 0 and
    the loop runs from it (its iteration-0 export is the imported model, not a fresh one)."""
    from safetensors.numpy import load_file
    config = Qwen3Config(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         rope_theta=10_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         max_position_embeddings=4096)
    source = export_hf(init_params(config, jax.random.key(7)), config, tmp_path / "base",
                       tokenizer_dir=tokenizer_dir)
    workdir = tmp_path / "w"
    imported = subprocess.run([sys.executable, "tools/import_hf.py", f"--hf-dir={source}",
                               f"--workdir={workdir}"], cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr[-3000:]
    done = run_loop("grpo", workdir, tokenizer_dir)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resuming from" in done.stderr and "step 0 (params only" in done.stderr
    base = load_file(str(source / "model.safetensors"))
    start = load_file(str(workdir / "exports" / "iter_000" / "model.safetensors"))
    assert base.keys() == start.keys()
    for name in base:
        np.testing.assert_array_equal(start[name], base[name], err_msg=name)

    objective, metrics = trained(done.stderr)
    assert objective == "group_advantage"
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert metrics["target_tokens"] > 0 and {"ratio", "clip_fraction"} <= set(metrics)
    # An untrained student resolves nothing: one group of equal rewards, advantage 0, so the
    # weights never move and the trainer's log-probs of the sampled tokens must be the
    # sampler's (ratio 1; it would be about 512 / 1024 if the trainer normalised over the
    # padded ids the sampler never samples).
    assert metrics["grad_norm"] == 0.0 and abs(metrics["ratio"] - 1.0) < 1e-3, metrics
    records = list(EpisodeSource(iteration_dir(workdir, 1)))
    assert len(records) == 4  # group_size episodes of the task
    assert all(t.executor == "student" and t.sample_logprobs for r in records for t in r.turns)
    assert (workdir / "exports" / "iter_001" / "config.json").exists()
    # Not evaluated (eval.enabled=False, as for iterations before eval.from_iteration): the
    # iteration's row still says what it collected and trained.
    [row] = json.loads((workdir / "state.json").read_text())["history"]
    assert "resolve_rate" not in row and not (workdir / "eval").exists()
    assert row["iteration"] == 1 and row["train_steps"] > 0
