"""Runs a student on SWE-bench-style instances, writes harness predictions, grades them with swebench.

    python tools/eval_swebench.py --instances FILE_OR_DATASET --out OUT_DIR \\
        (--student HF_DIR | --student-endpoints URL,... --tokenizer DIR | --policy expert) \\
        [--model-name NAME] [--max-turns 30] [--stuck-repeats 3] [--max-new-tokens 1024] \\
        [--context-budget 32768] [--concurrency 4] [--limit N] [--run-id ID] [--split test] [--grade-timeout 1800]
    python tools/eval_swebench.py --instances FILE_OR_DATASET --out OUT_DIR --grade-only PREDICTIONS

Episodes are greedy and the student acts every turn (beta 0). Each finished episode appends
`{"instance_id", "model_name_or_path", "model_patch"}` (its final `git diff`) to
OUT_DIR/predictions.jsonl; a rerun skips the ids already there. Then the predictions are graded
by swebench's own per-instance evaluation (`harness.run_evaluation.run_instance`: the instance's
local image, the harness's patch application and eval script, `get_eval_report`); see
dagger_jax/rollout/swebench_eval.py for exactly which parts and why. Writes OUT_DIR/report.json
and prints a summary. The instances' images must be present locally (nothing is pulled).

Exit status: 0 done; 1 some instance got no prediction (an episode fault: rerun to retry) or
docker is unreachable; 2 bad input (missing instances file, a bad instance line, an instance
without its image, a student directory without config.json, ...), with one line saying which.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from dagger_jax.envs.sandbox import SandboxError, make_backend
from dagger_jax.envs.sandbox.docker_backend import connect
from dagger_jax.envs.tasks.swebench_source import read_instance_pairs
from dagger_jax.envs.tasks.task import BadTaskLine
from dagger_jax.rollout import swebench_eval as se
from dagger_jax.rollout.faults import CollectionIncomplete
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.tokenizer.default import default_tokenizer

PROG = "eval_swebench"


class BadInput(Exception):
    """Exit 2 with this message."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", required=True,
                        help="SWE-bench harness-format instances: a JSONL file or a `datasets` name")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", type=Path, help="HF-format student export, run in-process")
    who.add_argument("--student-endpoints", help="comma-separated SGLang URLs serving the student")
    who.add_argument("--policy", choices=["expert"], help="the scripted expert (pipeline check)")
    who.add_argument("--grade-only", type=Path, metavar="PREDICTIONS",
                     help="grade an existing predictions file (.jsonl or .json); run no episodes")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="the student's tokenizer dir (default: the student export's own)")
    parser.add_argument("--model-name", default=None, help="model_name_or_path of the predictions")
    parser.add_argument("--max-turns", type=int, default=30)
    parser.add_argument("--stuck-repeats", type=int, default=3,
                        help="end an episode after this many identical action+observation turns "
                             "in a row (0: off)")
    parser.add_argument("--edit-miss-hint", action="store_true",
                        help="a refused str_replace also shows the file's closest lines (as the "
                             "run that trained the student had with loop.edit_miss_hint)")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--context-budget", type=int, default=32768,
                        help="tokens per conversation (capped by a local student's context)")
    parser.add_argument("--concurrency", type=int, default=4, help="episodes / gradings at once")
    parser.add_argument("--limit", type=int, default=None, help="only the first N instances")
    parser.add_argument("--run-id", default=None, help="harness run id (default: from --out)")
    parser.add_argument("--split", default="test", help="split of a `datasets` name")
    parser.add_argument("--grade-timeout", type=int, default=1800, help="seconds per instance's tests")
    return parser.parse_args(argv)


def load_instances(args: argparse.Namespace) -> tuple[list, dict[str, dict]]:
    source = args.instances
    if source.endswith((".jsonl", ".json")) and not Path(source).is_file():
        raise BadInput(f"instances file {source} does not exist")
    try:
        items = list(read_instance_pairs(source, args.split))
    except FileNotFoundError as e:
        raise BadInput(str(e)) from None
    bad = [i for i in items if isinstance(i, BadTaskLine)]
    if bad:
        more = f" (and {len(bad) - 1} more bad instance lines)" if len(bad) > 1 else ""
        raise BadInput(f"{bad[0].reason}{more}")
    if not items:
        raise BadInput(f"no instances in {source}")
    pairs = items[:args.limit] if args.limit is not None else items
    return [task for task, _ in pairs], {task.instance_id: raw for task, raw in pairs}


def default_model_name(args: argparse.Namespace) -> str:
    if args.model_name:
        return args.model_name
    if args.student is not None:
        return args.student.resolve().name
    return "sglang-student" if args.student_endpoints else "scripted-expert"


async def produce(args: argparse.Namespace, tasks: list, model_name: str) -> se.PredictionRun:
    tokenizer = args.tokenizer
    if tokenizer is None and args.policy == "expert":  # it only measures the context
        tokenizer = default_tokenizer(args.out / ".tokenizer")
    try:
        acting = se.eval_actor(
            student_dir=args.student,
            endpoints=[u for u in (args.student_endpoints or "").split(",") if u],
            policy=args.policy, tokenizer_dir=tokenizer, max_new_tokens=args.max_new_tokens,
            max_batch=args.concurrency)
    except (FileNotFoundError, ValueError) as e:
        raise BadInput(str(e)) from None
    budget = min(args.context_budget, acting.context_limit or args.context_budget)
    try:
        settings = EpisodeSettings(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                                   context_budget=budget, grading_timeout_s=args.grade_timeout,
                                   stuck_repeats=args.stuck_repeats,
                                   edit_miss_hint=args.edit_miss_hint)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if args.max_new_tokens >= budget:
        raise BadInput(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in a "
                       f"context of {budget} tokens")
    print(f"{PROG}: {len(tasks)} instances, {acting.description}, greedy, up to {args.max_turns} "
          f"turns, context {budget}", file=sys.stderr, flush=True)
    try:
        return await se.run_predictions(
            tasks, actor=acting.actor, chat=acting.chat,
            backend=make_backend("docker", run_id=args.run_id), out_dir=args.out,
            model_name=model_name, settings=settings, concurrency=args.concurrency,
            progress=sys.stderr.isatty())
    except ValueError as e:  # predictions of another model in --out
        raise BadInput(str(e)) from None
    finally:
        await acting.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for name in ("max_turns", "max_new_tokens", "concurrency", "grade_timeout"):
            if getattr(args, name) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be at least 1")
        if args.limit is not None and args.limit < 1:
            raise BadInput("--limit must be at least 1")
        try:
            run_id = se.check_run_id(args.run_id or se.default_run_id(args.out))
        except ValueError as e:
            raise BadInput(str(e)) from None
        tasks, instances = load_instances(args)
        try:
            client = connect()
        except SandboxError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 1
        problems = se.check_images(tasks, client)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BadInput(problems[0] + more)
        args.out.mkdir(parents=True, exist_ok=True)
        args.run_id = run_id
        run = None
        if args.grade_only is not None:
            predictions_path = args.grade_only
        else:
            run = asyncio.run(produce(args, tasks, default_model_name(args)))
            predictions_path = args.out / se.PREDICTIONS_FILE
            print(f"{PROG}: {len(run.written)} predictions written, {len(run.skipped)} already "
                  f"in {predictions_path}, {len(run.failed)} episodes failed", file=sys.stderr)
            for iid, why in sorted(run.failed.items()):
                print(f"{PROG}: no prediction for {iid}: {why}", file=sys.stderr)
        try:
            predictions = se.read_predictions(predictions_path) if predictions_path.exists() else {}
            if args.grade_only is None or args.limit is not None:  # ids beyond this set
                predictions = {k: v for k, v in predictions.items() if k in instances}
            report = se.grade_predictions(predictions, instances, out_dir=args.out, run_id=run_id,
                                          timeout_s=args.grade_timeout,
                                          max_workers=args.concurrency, client=client)
        except (FileNotFoundError, ValueError) as e:
            raise BadInput(str(e)) from None
    except BadInput as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except CollectionIncomplete as e:  # endpoints or docker were down too long: rerun later
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    path = se.write_report(report, args.out)
    print(se.summary_table(report))
    print(f"report: {path}")
    return 1 if report.missing_ids and run is not None else 0


if __name__ == "__main__":
    sys.exit(main())
