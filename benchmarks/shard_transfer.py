"""Shard transfer through a bucket (the GCS emulator over loopback) against a plain local copy.

    .venv/bin/python benchmarks/shard_transfer.py [--shards 8] [--shard-mb 16] [--rounds 3]
        [--json out.json]

A shard directory of --shards incompressible shards of --shard-mb MB, listed in a manifest as
the shard writer lists them (size and sha256), is moved four ways, interleaved in rounds in one
process so that the ratios survive a noisy machine:
- `copy`: shutil.copyfile of every shard into another local directory (the floor: one disk);
- `sha256`: hashing every shard (what each checked transfer adds on top of the bytes);
- `push`: data/shard_sync.py publishing the directory to the bucket (each shard checked
  against its line, uploaded, then the manifest);
- `pull`: another machine's working copy taking it from the bucket (each shard downloaded and
  checked, then the manifest written).
Reported: MB/s of each (median round) and each one's ratio to `copy`. The emulator keeps the
objects in memory, so `push` / `pull` measure the client path (gcsfs, HTTP, checksums), not a
disk on the far side; a real bucket adds the network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dagger_jax.data.shard_sync import SyncedShardDir  # noqa: E402
from dagger_jax.data.shards import MANIFEST  # noqa: E402
from tests.gcs_emulator import create_bucket, gcs_emulator  # noqa: E402

WAYS = ("copy", "sha256", "push", "pull")


def make_shards(directory: Path, shards: int, shard_bytes: int, seed: int = 0) -> int:
    """Random (incompressible) shard files and their manifest lines; returns the total bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(shards):
        data = hashlib.shake_256(f"{seed}-{k}".encode()).digest(shard_bytes)
        name = f"bench-{k:05d}.arecord"
        (directory / name).write_bytes(data)
        lines.append(json.dumps({"shard": name, "num_episodes": 1, "bytes": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest()}) + "\n")
    (directory / MANIFEST).write_text("".join(lines))
    return shards * shard_bytes


def one_round(source: Path, bucket: str, scratch: Path, round_index: int) -> dict[str, float]:
    """Seconds of each way for one round (fresh targets, so nothing is skipped as present)."""
    seconds = {}
    target = scratch / f"copy-{round_index}"
    target.mkdir()
    began = time.perf_counter()
    for shard in sorted(source.glob("*.arecord")):
        shutil.copyfile(shard, target / shard.name)
    seconds["copy"] = time.perf_counter() - began

    began = time.perf_counter()
    for shard in sorted(source.glob("*.arecord")):
        with open(shard, "rb") as f:
            hashlib.file_digest(f, "sha256")
    seconds["sha256"] = time.perf_counter() - began

    remote = f"{bucket}/round-{round_index}"
    writer = SyncedShardDir(remote, cache=scratch / f"writer-{round_index}")
    shutil.copytree(source, writer.local, dirs_exist_ok=True)
    began = time.perf_counter()
    pushed = writer.push()
    seconds["push"] = time.perf_counter() - began
    assert pushed == len(list(source.glob("*.arecord"))), pushed

    reader = SyncedShardDir(remote, cache=scratch / f"reader-{round_index}")
    began = time.perf_counter()
    local = reader.pull()
    seconds["pull"] = time.perf_counter() - began
    assert (local / MANIFEST).read_text() == (source / MANIFEST).read_text()
    return seconds


def run(shards: int, shard_bytes: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="shard_transfer-") as tmp, gcs_emulator() as env:
        scratch = Path(tmp)
        source = scratch / "source"
        total = make_shards(source, shards, shard_bytes)
        bucket = create_bucket(env, "bench-transfer")
        times = {way: [] for way in WAYS}
        for r in range(rounds):
            for way, s in one_round(source, bucket, scratch, r).items():
                times[way].append(s)
            # Keep memory flat: the emulator holds every round's objects, the disk its copies.
            for stale in scratch.glob(f"*-{r}"):
                shutil.rmtree(stale, ignore_errors=True)
    mb = total / 1e6
    result = {"shards": shards, "shard_bytes": shard_bytes, "rounds": rounds, "ways": {}}
    copy_rate = mb / statistics.median(times["copy"])
    for way in WAYS:
        rate = mb / statistics.median(times[way])
        result["ways"][way] = {"mb_per_s": rate, "ratio_to_copy": rate / copy_rate,
                               "seconds": times[way]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mb", type=float, default=16.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.shards, int(args.shard_mb * 1e6), args.rounds)
    print(f"{args.shards} shards x {args.shard_mb:g} MB, median of {args.rounds} rounds")
    print(f"{'way':>8} {'MB/s':>10} {'x copy':>8}")
    for way, row in result["ways"].items():
        print(f"{way:>8} {row['mb_per_s']:>10.1f} {row['ratio_to_copy']:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
