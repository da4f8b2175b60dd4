"""The base image recipe: its cache key, and the image and rootfs it produced."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest

from dagger_jax.envs.base_image import (DEFAULT_RECIPE, BaseImageRecipe, cached_rootfs,
                                        ensure_image, image_recipe_version, rootfs_dir)

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow


def test_recipe_version_changes_with_the_recipe():
    more = dataclasses.replace(DEFAULT_RECIPE, packages=DEFAULT_RECIPE.packages + ("make",))
    assert more.version != DEFAULT_RECIPE.version
    assert dataclasses.replace(DEFAULT_RECIPE).version == DEFAULT_RECIPE.version
    assert DEFAULT_RECIPE.image == "dagger-jax/base:bookworm"


def test_built_image_carries_the_recipe_version_and_is_reused(sandbox_deps):
    assert sandbox_deps.ok, sandbox_deps.report
    assert image_recipe_version(DEFAULT_RECIPE.image) == DEFAULT_RECIPE.version
    image_id = _image_id(DEFAULT_RECIPE.image)
    assert ensure_image() == DEFAULT_RECIPE.image
    assert _image_id(DEFAULT_RECIPE.image) == image_id  # cached: not rebuilt


def test_rootfs_is_cached_with_the_tools_tasks_need(sandbox_deps):
    rootfs = cached_rootfs()
    assert rootfs is not None, sandbox_deps.report
    for tool in ("python3", "git", "pytest-3", "bash", "setpriv", "prlimit", "taskset", "timeout"):
        assert (rootfs / "usr" / "bin" / tool).exists(), tool


def test_missing_image_has_no_recipe_version():
    assert image_recipe_version("dagger-jax/never-built:x") is None


def _image_id(image: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_stale_image_is_rebuilt_and_a_current_one_reused(sandbox_deps, tmp_path):
    # A stand-in rootfs in a private cache: exercises import, labels and caching without
    # another debootstrap.
    assert sandbox_deps.ok, sandbox_deps.report
    recipe = BaseImageRecipe(repository="dagger-jax/test-base")
    rootfs = rootfs_dir(recipe, tmp_path)
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "python3").write_text("stand-in")
    try:
        # Stale: an image under the recipe's tag whose label is another recipe's version.
        subprocess.run(["docker", "tag", DEFAULT_RECIPE.image, recipe.image], check=True)
        assert image_recipe_version(recipe.image) == DEFAULT_RECIPE.version
        assert ensure_image(recipe, tmp_path) == recipe.image
        assert image_recipe_version(recipe.image) == recipe.version
        rebuilt = _image_id(recipe.image)
        assert rebuilt != _image_id(DEFAULT_RECIPE.image)
        ensure_image(recipe, tmp_path)
        assert _image_id(recipe.image) == rebuilt
    finally:
        subprocess.run(["docker", "rmi", "-f", recipe.image, recipe.versioned_image],
                       capture_output=True)
