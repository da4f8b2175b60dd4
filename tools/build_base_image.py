"""Builds (or finds cached) the sandbox base image `dagger-jax/base:bookworm` and its rootfs.

    python tools/build_base_image.py [--rootfs-only] [--cache-dir DIR]

Needs root, debootstrap and a running docker daemon (tools/ensure_sandbox_deps.sh sets them
up). Runs with any Python >= 3.11: it needs only the standard library.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Runs before the package (or its venv) is installed, with the system python3.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagger_jax.envs.base_image import (  # noqa: E402
    DEFAULT_CACHE_DIR, DEFAULT_RECIPE, BaseImageError, ensure_image, ensure_rootfs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rootfs-only", action="store_true",
                        help="build the debootstrap rootfs (for bubblewrap) but no docker image")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        if args.rootfs_only:
            print(ensure_rootfs(DEFAULT_RECIPE, args.cache_dir))
        else:
            print(ensure_image(DEFAULT_RECIPE, args.cache_dir))
    except BaseImageError as e:
        print(f"build_base_image: {e}", file=sys.stderr)
        return 1
    print(f"build_base_image: done in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
