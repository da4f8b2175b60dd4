"""Writes tasks as JSONL (and, with --sandbox docker, builds each task's image).

    python tools/make_tasks.py --source synthetic --n 100 --seed 0 --out tasks.jsonl \
        [--split train|heldout] [--files 2 --functions-per-file 3 --distractors 1 --hide-location] \
        [--sandbox bwrap|docker]
    python tools/make_tasks.py --source pypi --package toolz [--package inflection==0.5.1 ...] \
        --n 5 --seed 0 --out tasks.jsonl [--sandbox bwrap|docker] [--failures failures.jsonl]
    python tools/make_tasks.py --source swebench --instances instances.jsonl|DATASET \
        [--split test] [--n N] --out tasks.jsonl

`--source pypi` injects bugs into real packages' sdists (`--n` tasks per package), running their
tests in the sandbox; a task that cannot be built is written to the failures file with its
reason (default: next to --out) and the others are kept. With `--sandbox docker` every
generated task also gets its own image (base image + repo at /testbed, tagged by content);
bubblewrap runs the same tasks from their files. `--source swebench` reads harness-format
instances (a JSONL file, or a `datasets` name where the hub or its cache is reachable); their
images are the harness's own (`sweb.eval.*`), which this tool does not fetch or build.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from dagger_jax.envs.sandbox import BACKENDS, SandboxError, make_backend
from dagger_jax.envs.task_images import TaskImageError, with_image
from dagger_jax.envs.tasks.pypi import BuildFailure, build_tasks
from dagger_jax.envs.tasks.swebench_source import read_instances
from dagger_jax.envs.tasks.synthetic import Difficulty, generate_tasks
from dagger_jax.envs.tasks.task import SPLITS, BadTaskLine, Task, write_tasks

SOURCES = ("synthetic", "pypi", "swebench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--n", type=int, help="tasks (per package for pypi; at most N for swebench)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--functions-per-file", type=int, default=2)
    parser.add_argument("--distractors", type=int, default=0)
    parser.add_argument("--hide-location", action="store_true",
                        help="the problem statement does not name the buggy file")
    parser.add_argument("--templates", type=int, default=0,
                        help="synthetic: draw functions from the first N templates only (0: all)")
    parser.add_argument("--bug-kinds", default="",
                        help="synthetic: comma-separated mutation operators (compare, arith, "
                             "constant, boolop, variable); empty: all")
    parser.add_argument("--packages", type=int, default=0,
                        help="synthetic: package names from the first N only (0: all)")
    parser.add_argument("--unnumbered-packages", action="store_true",
                        help="synthetic: `ledger/core.py`, not `ledger_37/core.py`")
    parser.add_argument("--modules", type=int, default=0,
                        help="synthetic: module names from the first N only (0: all)")
    parser.add_argument("--decoys", type=int, default=0,
                        help="synthetic: modules holding only constants, beside the files")
    parser.add_argument("--package", action="append", default=[],
                        help="pypi: NAME, NAME==VERSION or an sdist path; repeat for several")
    parser.add_argument("--sandbox", "--backend", dest="sandbox", choices=BACKENDS, default="bwrap",
                        help="where the tasks will run: docker builds each task's image; "
                             "pypi: also where the packages' tests run")
    parser.add_argument("--instances", help="swebench: a JSONL file of harness-format instances "
                                            "or a `datasets` name")
    parser.add_argument("--failures", type=Path,
                        help="pypi: where tasks that could not be built are recorded "
                             "(default: OUT with .failures.jsonl)")
    args = parser.parse_args(argv)
    if args.n is not None and args.n <= 0:
        parser.error("--n must be positive")
    if args.source == "swebench":
        if not args.instances:
            parser.error("--source swebench needs --instances FILE|DATASET")
        return _swebench(args)
    if args.n is None:
        parser.error(f"--source {args.source} needs --n")
    try:
        backend = make_backend(args.sandbox)
    except SandboxError as e:
        print(f"make_tasks: no {args.sandbox} sandbox: {e.reason}", file=sys.stderr)
        return 2
    if args.source == "pypi":
        if not args.package:
            parser.error("--source pypi needs at least one --package")
        tasks, failures = _pypi(args, backend)
    else:
        try:
            difficulty = Difficulty.from_settings(
                files=args.files, functions_per_file=args.functions_per_file,
                distractors=args.distractors, hide_location=args.hide_location,
                templates=args.templates, bug_kinds=args.bug_kinds, packages=args.packages,
                numbered_packages=not args.unnumbered_packages, modules=args.modules,
                decoys=args.decoys)
        except ValueError as e:
            parser.error(str(e))
        tasks, failures = list(generate_tasks(args.n, args.seed, args.split, difficulty)), []
    if backend.runs_images:
        tasks, image_failures = _with_images(tasks, backend)
        failures += image_failures
    count = write_tasks(tasks, args.out)
    images = " with images" if backend.runs_images else ""
    print(f"wrote {count} {args.source} tasks ({args.split}){images} to {args.out}")
    if failures:
        path = args.failures or args.out.with_name(args.out.name + ".failures.jsonl")
        path.write_text("".join(json.dumps(dataclasses.asdict(f)) + "\n" for f in failures))
        print(f"{len(failures)} task(s) could not be built; reasons in {path}", file=sys.stderr)
    return 0 if count else 1


def _with_images(tasks: list[Task], backend) -> tuple[list[Task], list[BuildFailure]]:
    """Each task with its docker image built; a task whose build fails is recorded, not fatal."""
    built, failures = [], []
    for index, task in enumerate(tasks):
        try:
            built.append(with_image(backend.client, task))
        except TaskImageError as e:
            print(f"make_tasks: {e}", file=sys.stderr)
            failures.append(BuildFailure(task.metadata.get("package", task.instance_id), index, str(e)))
    return built, failures


def _swebench(args: argparse.Namespace) -> int:
    """Converts harness-format instances; a bad instance is reported and skipped."""
    try:
        items = read_instances(args.instances, split=args.split)
        tasks, bad = [], 0
        for item in items:
            if isinstance(item, BadTaskLine):
                bad += 1
                print(f"make_tasks: skipped {item.reason}", file=sys.stderr)
                continue
            tasks.append(item)
            if args.n is not None and len(tasks) >= args.n:
                break
    except FileNotFoundError as e:
        print(f"make_tasks: {e}", file=sys.stderr)
        return 2
    count = write_tasks(tasks, args.out)
    print(f"wrote {count} swebench tasks ({args.split}) to {args.out}"
          + (f"; {bad} bad instance(s) skipped" if bad else ""))
    return 0 if count else 1


def _pypi(args: argparse.Namespace, backend) -> tuple[list[Task], list[BuildFailure]]:
    """Builds --n tasks per package; failures are recorded, never fatal to the batch."""
    tasks: list[Task] = []
    failures: list[BuildFailure] = []
    for package in args.package:
        outcomes = build_tasks(package, args.n, args.seed, backend, split=args.split)
        tasks += [o for o in outcomes if not isinstance(o, BuildFailure)]
        failed = [o for o in outcomes if isinstance(o, BuildFailure)]
        failures += failed
        for reason in dict.fromkeys(f.reason for f in failed):  # a package-wide reason once
            indices = [f.index for f in failed if f.reason == reason]
            print(f"make_tasks: {package}: task(s) {indices} not built: {reason}", file=sys.stderr)
    return tasks, failures


if __name__ == "__main__":
    sys.exit(main())
