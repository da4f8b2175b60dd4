"""Collector throughput against the stand-in SGLang server with injected latency, and the
training tokens each labelled turn costs.

    .venv/bin/python benchmarks/collector.py [--latency-ms 200] [--concurrency 1,4,16,64]
        [--turns 8] [--sandbox bwrap] [--json out.json]

Part 1 (`student_only`): a tiny random student served by tools/serve_local.py (its own process,
each request delayed by --latency-ms), beta = 0 and no labels, so a turn is one model call (the
random student's text never parses as a tool call: nothing runs in the sandbox). With c
episodes in flight the ideal is c / latency turns/s; the ratio measured / ideal shows what the
collector, the HTTP client and the server's batching cost. Each concurrency level runs c
episodes of --turns turns twice: once to compile the sampler's shapes, then timed (sandbox
set-up and grading included in the wall time).

Part 2 (`dagger`): beta = 0.5 with the scripted expert labelling every state at concurrency 4,
the real workload. Reported: turns/s, and the training tokens per labelled turn of the
examples built from those episodes (teacher turns share one sequence, each student turn is
prompt + label) against one example per labelled turn (prompt + label for every turn).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagger_jax.agent import ChatTokenizer  # noqa: E402
from dagger_jax.data.examples import examples_from_records  # noqa: E402
from dagger_jax.tokenizer.sample_corpus import sample_texts  # noqa: E402
from dagger_jax.data.shards import iter_records  # noqa: E402
from dagger_jax.envs.sandbox import make_backend  # noqa: E402
from dagger_jax.envs.tasks.synthetic import generate_tasks  # noqa: E402
from dagger_jax.models.config import Qwen3Config  # noqa: E402
from dagger_jax.models.hf_export import export_hf  # noqa: E402
from dagger_jax.models.qwen3 import init_params  # noqa: E402
from dagger_jax.policies.actors import ExpertActor, TokenActor  # noqa: E402
from dagger_jax.policies.generation import SamplingParams  # noqa: E402
from dagger_jax.policies.scripted_expert import ScriptedExpert  # noqa: E402
from dagger_jax.policies.sglang_client import SGLangClient  # noqa: E402
from dagger_jax.rollout.collector import CollectionJob, collect  # noqa: E402
from dagger_jax.rollout.mixed_episode import EpisodeSettings  # noqa: E402
from dagger_jax.rollout.mixing import RolloutRule  # noqa: E402
from dagger_jax.tokenizer import train_bpe_tokenizer  # noqa: E402


def tiny_student(root: Path) -> tuple[Path, ChatTokenizer]:
    tok_dir = train_bpe_tokenizer(sample_texts(200, seed=0), 512, root / "tokenizer")
    chat = ChatTokenizer.from_path(tok_dir)
    config = Qwen3Config(vocab_size=len(chat.tokenizer), hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=8192, tie_word_embeddings=True)
    model_dir = export_hf(init_params(config, jax.random.key(0)), config, root / "student",
                          tokenizer_dir=tok_dir)
    return model_dir, chat


def serve(model_dir: Path, latency_ms: float, log: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(ROOT / "tools" / "serve_local.py"), "--model",
                                str(model_dir), "--port", "0", "--max-batch", "64",
                                "--latency-ms", str(latency_ms)],
                               stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        raise SystemExit(f"stand-in server did not start: {log.read_text()[-2000:]}")
    return process, url


async def run_job(job, tasks, student, teacher, chat, backend, concurrency):
    start = time.perf_counter()
    report = await collect(job, tasks, student=student, teacher=teacher, chat=chat,
                           backend=backend, concurrency=concurrency, records_per_shard=64)
    return report, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--sandbox", default="bwrap")
    parser.add_argument("--dagger-episodes", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict = {"latency_ms": args.latency_ms, "turns_per_episode": args.turns,
                     "student_only": [], "dagger": None}
    with tempfile.TemporaryDirectory(prefix="dagger_jax-bench-") as tmp:
        root = Path(tmp)
        model_dir, chat = tiny_student(root)
        server, url = serve(model_dir, args.latency_ms, root / "server.log")
        backend = make_backend(args.sandbox)
        all_tasks = generate_tasks(max(levels + [args.dagger_episodes]), seed=99)
        tasks = {t.instance_id: t for t in all_tasks}
        settings = EpisodeSettings(max_turns=args.turns, max_new_tokens=args.max_new_tokens,
                                   context_budget=16384)
        params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens)

        async def measure():
            client = SGLangClient(url, vocab_size=len(chat.tokenizer))
            student = TokenActor("student", client, chat, params)
            try:
                await client.generate([1, 2, 3], params)  # compile the common shapes first
                for c in levels:
                    ids = tuple(t.instance_id for t in all_tasks[:c])
                    # The first pass compiles the sampler's shapes for this batch size and
                    # these prompt lengths; the second, timed, pass reuses them.
                    for attempt in ("warm", "timed"):
                        job = CollectionJob(job_id=f"c{c}-{attempt}", iteration=0, task_ids=ids,
                                            rule=RolloutRule(beta=0.0, label="none"),
                                            out_dir=str(root / f"c{c}-{attempt}"), settings=settings)
                        report, seconds = await run_job(job, tasks, student, None, chat, backend, c)
                    turns = report.stats["turns"]
                    ideal = c / (args.latency_ms / 1000.0)
                    row = {"concurrency": c, "episodes": report.episodes_written, "turns": turns,
                           "seconds": round(seconds, 2), "turns_per_s": round(turns / seconds, 3),
                           "ideal_turns_per_s": round(ideal, 3),
                           "ratio_to_ideal": round(turns / seconds / ideal, 3)}
                    results["student_only"].append(row)
                    print(json.dumps(row), flush=True)
                ids = tuple(t.instance_id for t in all_tasks[:args.dagger_episodes])
                job = CollectionJob(job_id="dagger", iteration=0, task_ids=ids,
                                    rule=RolloutRule(beta=0.5), out_dir=str(root / "dagger"),
                                    settings=settings)
                report, seconds = await run_job(job, tasks, student, ExpertActor(ScriptedExpert()),
                                                chat, backend, 4)
                return report, seconds
            finally:
                await client.aclose()

        try:
            report, seconds = asyncio.run(measure())
        finally:
            server.kill()
            server.wait()
        records = list(iter_records(root / "dagger"))
        _, stats = examples_from_records(records, max_len=16384)
        labelled = [(r, t) for r in records for t in r.turns if t.label_ids]
        per_turn = sum(t.prompt_len + len(t.label_ids) for _, t in labelled) / max(len(labelled), 1)
        results["dagger"] = {
            "episodes": report.episodes_written, "turns": report.stats["turns"],
            "teacher_calls": report.stats["teacher_calls"], "seconds": round(seconds, 2),
            "turns_per_s": round(report.stats["turns"] / seconds, 3),
            "tokens_per_labelled_turn": round(stats.tokens_per_labelled_turn, 1),
            "tokens_per_labelled_turn_one_example_each": round(per_turn, 1),
            "packing_saving": round(per_turn / max(stats.tokens_per_labelled_turn, 1e-9), 3)}
        print(json.dumps({"dagger": results["dagger"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
