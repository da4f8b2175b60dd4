"""Builds the local sandbox base: a debootstrap'd Debian rootfs, imported as a docker image.

The rootfs directory is kept under the cache dir (bubblewrap uses it as its read-only root);
the docker image carries the recipe's version as a label, so a changed recipe rebuilds both
and an unchanged one costs one `docker image inspect`. Only the standard library is used, so
this runs before the project's virtualenv exists.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Bump when the build steps below change in a way the recipe's fields do not show.
BUILD_STEPS_VERSION = 1
RECIPE_LABEL = "dagger_jax.recipe"
DEFAULT_CACHE_DIR = Path(os.environ.get("DAGGER_JAX_CACHE_DIR", "/var/cache/dagger_jax"))


class BaseImageError(RuntimeError):
    """The base rootfs or image could not be built; the message says which step and why."""


@dataclass(frozen=True)
class BaseImageRecipe:
    """What goes into the base image; its hash is the cache key of the rootfs and the image."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "python3-pip", "python3-pytest", "git",
                                 "ca-certificates")
    mirror: str = "http://deb.debian.org/debian"
    repository: str = "dagger-jax/base"

    @property
    def version(self) -> str:
        fields = dataclasses.asdict(self) | {"build_steps": BUILD_STEPS_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def image(self) -> str:
        """The tag tasks and tests name, e.g. `dagger-jax/base:bookworm`."""
        return f"{self.repository}:{self.suite}"

    @property
    def versioned_image(self) -> str:
        return f"{self.repository}:{self.suite}-{self.version}"


DEFAULT_RECIPE = BaseImageRecipe()


def rootfs_dir(recipe: BaseImageRecipe = DEFAULT_RECIPE,
               cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    return Path(cache_dir) / f"rootfs-{recipe.suite}-{recipe.version}"


def cached_rootfs(recipe: BaseImageRecipe = DEFAULT_RECIPE,
                  cache_dir: Path = DEFAULT_CACHE_DIR) -> Path | None:
    """The finished rootfs of `recipe`, or None. Finished dirs appear only by an atomic rename."""
    path = rootfs_dir(recipe, cache_dir)
    return path if (path / "usr" / "bin" / "python3").exists() else None


def _log(message: str) -> None:
    print(f"base_image: {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], step: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    except FileNotFoundError as e:
        raise BaseImageError(f"{step}: {argv[0]} is not installed "
                             "(run tools/ensure_sandbox_deps.sh)") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise BaseImageError(f"{step}: `{' '.join(argv)}` exited {done.returncode}: {tail}")
    return done


class _BuildLock:
    """Serialises builds between processes (parallel test sessions, CI jobs on one host)."""

    def __init__(self, cache_dir: Path):
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(cache_dir / ".build.lock", "w")

    def __enter__(self) -> "_BuildLock":
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def ensure_rootfs(recipe: BaseImageRecipe = DEFAULT_RECIPE,
                  cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Returns the recipe's rootfs dir, running debootstrap first when it is not cached."""
    cache_dir = Path(cache_dir)
    if (found := cached_rootfs(recipe, cache_dir)) is not None:
        return found
    with _BuildLock(cache_dir):
        if (found := cached_rootfs(recipe, cache_dir)) is not None:
            return found  # another process built it while we waited
        final = rootfs_dir(recipe, cache_dir)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # leftovers of a killed build
        shutil.rmtree(final, ignore_errors=True)
        _log(f"debootstrap {recipe.suite} ({recipe.variant}) into {partial}")
        start = time.monotonic()
        _run(["debootstrap", f"--variant={recipe.variant}",
              f"--include={','.join(recipe.packages)}", recipe.suite, str(partial),
              recipe.mirror], step=f"debootstrap of {recipe.suite} from {recipe.mirror}")
        # Downloaded .debs and apt lists only make the image bigger.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (partial / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        # bubblewrap binds the task repo here; a read-only root cannot grow the mount point.
        (partial / "testbed").mkdir(exist_ok=True)
        partial.rename(final)
        _log(f"rootfs ready at {final} after {time.monotonic() - start:.0f} s")
        return final


def image_recipe_version(image: str) -> str | None:
    """The recipe label of a local docker image; None when the image does not exist."""
    done = subprocess.run(["docker", "image", "inspect", "--format",
                           f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}', image],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_image(recipe: BaseImageRecipe = DEFAULT_RECIPE,
                 cache_dir: Path = DEFAULT_CACHE_DIR) -> str:
    """Returns `recipe.image`, importing the rootfs into docker when it is missing or stale."""
    if shutil.which("docker") is None:
        raise BaseImageError("docker CLI not found (run tools/ensure_sandbox_deps.sh)")
    if image_recipe_version(recipe.image) == recipe.version:
        return recipe.image
    rootfs = ensure_rootfs(recipe, cache_dir)
    with _BuildLock(Path(cache_dir)):
        if image_recipe_version(recipe.image) == recipe.version:
            return recipe.image
        _log(f"docker import {rootfs} as {recipe.versioned_image}")
        changes = [f"LABEL {RECIPE_LABEL}={recipe.version}",
                   "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "ENV LANG=C.UTF-8", "WORKDIR /testbed", 'CMD ["sleep", "infinity"]']
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            _run(argv + ["-", recipe.versioned_image], step=f"docker import of {rootfs}",
                 stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar_rc = tar.wait()
        if tar_rc != 0:
            raise BaseImageError(f"tar of {rootfs} exited {tar_rc}")
        _run(["docker", "tag", recipe.versioned_image, recipe.image],
             step=f"docker tag {recipe.image}")
        return recipe.image
