"""Writes tasks as JSONL.

    python tools/make_tasks.py --source synthetic --n 100 --seed 0 --out tasks.jsonl \
        [--split train|heldout] [--files 2 --functions-per-file 3 --distractors 1 --hide-location]
    python tools/make_tasks.py --source pypi --package toolz [--package inflection==0.5.1 ...] \
        --n 5 --seed 0 --out tasks.jsonl [--backend bwrap|docker] [--failures failures.jsonl]

`--source pypi` injects bugs into real packages' sdists (`--n` tasks per package), running their
tests in sandboxes; a task that cannot be built is written to the failures file with its reason
(default: next to --out) and the others are kept. SWE-bench instances are not implemented yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from dagger_jax.envs.sandbox import BACKENDS, SandboxError, make_backend
from dagger_jax.envs.tasks.pypi import BuildFailure, build_tasks
from dagger_jax.envs.tasks.synthetic import Difficulty, generate_tasks
from dagger_jax.envs.tasks.task import SPLITS, Task, write_tasks

IMPLEMENTED_SOURCES = ("synthetic", "pypi")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=("synthetic", "pypi"))
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--functions-per-file", type=int, default=2)
    parser.add_argument("--distractors", type=int, default=0)
    parser.add_argument("--hide-location", action="store_true",
                        help="the problem statement does not name the buggy file")
    parser.add_argument("--package", action="append", default=[],
                        help="pypi: NAME, NAME==VERSION or an sdist path; repeat for several")
    parser.add_argument("--backend", choices=BACKENDS, default="bwrap",
                        help="pypi: the sandbox the packages' tests run in")
    parser.add_argument("--failures", type=Path,
                        help="pypi: where tasks that could not be built are recorded "
                             "(default: OUT with .failures.jsonl)")
    args = parser.parse_args(argv)
    if args.source not in IMPLEMENTED_SOURCES:
        print(f"make_tasks: --source {args.source} is not implemented yet "
              f"(implemented: {', '.join(IMPLEMENTED_SOURCES)})", file=sys.stderr)
        return 2
    if args.n <= 0:
        parser.error("--n must be positive")
    if args.source == "pypi":
        if not args.package:
            parser.error("--source pypi needs at least one --package")
        return _pypi(args)
    difficulty = Difficulty(files=args.files, functions_per_file=args.functions_per_file,
                            distractors=args.distractors, name_location=not args.hide_location)
    count = write_tasks(generate_tasks(args.n, args.seed, args.split, difficulty), args.out)
    print(f"wrote {count} {args.source} tasks ({args.split}) to {args.out}")
    return 0


def _pypi(args: argparse.Namespace) -> int:
    """Builds --n tasks per package; failures are recorded, never fatal to the batch."""
    try:
        backend = make_backend(args.backend)
    except SandboxError as e:
        print(f"make_tasks: no {args.backend} sandbox: {e.reason}", file=sys.stderr)
        return 2
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
    count = write_tasks(tasks, args.out)
    print(f"wrote {count} pypi tasks ({args.split}) to {args.out}")
    if failures:
        path = args.failures or args.out.with_name(args.out.name + ".failures.jsonl")
        path.write_text("".join(json.dumps(dataclasses.asdict(f)) + "\n" for f in failures))
        print(f"{len(failures)} task(s) could not be built; reasons in {path}", file=sys.stderr)
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main())
