"""Runs one episode per task and prints a JSON line each, then a summary line.

    python tools/run_episode.py --tasks tasks.jsonl --policy expert|noop --sandbox docker|bwrap \
        [--max-turns 30] [--limit N] [--corrupt K --seed S]
    python tools/run_episode.py --instances swebench_instances.jsonl --policy expert --sandbox docker

`--corrupt K` starts each episode from K random wrong edits (to watch the expert recover).
A malformed task line or a sandbox fault is reported for that task; the run goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

from dagger_jax.envs.corruption import corrupt
from dagger_jax.envs.sandbox import BACKENDS, SandboxError, make_backend
from dagger_jax.envs.tasks.swebench_source import read_instances
from dagger_jax.envs.tasks.task import BadTaskLine, read_tasks
from dagger_jax.agent import ChatTokenizer
from dagger_jax.policies.actors import ExpertActor, NoopActor
from dagger_jax.policies.scripted_expert import ScriptedExpert
from dagger_jax.rollout.faults import InfrastructureFault
from dagger_jax.rollout.mixed_episode import EpisodeSettings, episode_summary, run_actor_episode
from dagger_jax.tokenizer.default import default_tokenizer

POLICIES = {"expert": lambda: ExpertActor(ScriptedExpert()), "noop": NoopActor}
# The conversation is kept in the default tokenizer's ids (the episode loop's record); no model
# reads it, so the context budget does not bind.
UNBOUNDED = EpisodeSettings(context_budget=1 << 30, max_new_tokens=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tasks", type=Path, help="our task JSONL (tools/make_tasks.py)")
    source.add_argument("--instances", help="SWE-bench harness-format instances: JSONL or a "
                                            "`datasets` name (their images must be present)")
    parser.add_argument("--policy", choices=sorted(POLICIES), required=True)
    parser.add_argument("--sandbox", choices=BACKENDS, required=True)
    parser.add_argument("--max-turns", type=int, default=30)
    parser.add_argument("--limit", type=int, default=None, help="run only the first N tasks")
    parser.add_argument("--corrupt", type=int, default=0, help="random wrong edits before turn 1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        backend = make_backend(args.sandbox)
        items = list(read_tasks(args.tasks) if args.tasks else read_instances(args.instances))
    except (SandboxError, FileNotFoundError) as e:
        print(f"run_episode: {e}", file=sys.stderr)
        return 1
    policy = POLICIES[args.policy]()
    chat = ChatTokenizer.from_path(default_tokenizer())
    settings = dataclasses.replace(UNBOUNDED, max_turns=args.max_turns)
    rng = random.Random(args.seed)
    resolved = episodes = bad = not_run = 0
    start = time.perf_counter()
    for item in items[:args.limit]:
        if isinstance(item, BadTaskLine):
            bad += 1
            print(json.dumps({"bad_task_line": item.line_number, "reason": item.reason}), flush=True)
            continue
        setup = (lambda sandbox, task=item: corrupt(sandbox, task, rng, args.corrupt)) if args.corrupt else None
        try:
            record = run_actor_episode(item, policy, backend=backend, chat=chat, settings=settings,
                                       setup=setup)
        except InfrastructureFault as fault:  # not the policy's outcome: said, and the run goes on
            not_run += 1
            print(json.dumps({"instance_id": item.instance_id, "not_run": str(fault)}), flush=True)
            continue
        episodes += 1
        resolved += record.outcome.resolved
        print(json.dumps(episode_summary(record)), flush=True)
    seconds = time.perf_counter() - start
    print(json.dumps({"summary": True, "policy": args.policy, "sandbox": args.sandbox,
                      "episodes": episodes, "resolved": resolved,
                      "resolve_rate": round(resolved / max(episodes, 1), 4), "bad_task_lines": bad,
                      "not_run": not_run,
                      "seconds_per_episode": round(seconds / max(episodes, 1), 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
