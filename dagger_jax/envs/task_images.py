"""Per-task docker images: the base image with a generated task's repo committed at /testbed.

SWE-bench and SWE-Gym ship one image per instance; generated tasks (synthetic, PyPI) get the
same shape here, so the docker backend starts an episode from the task's image as it would at
scale, instead of copying the repo into a base container each time. The tag carries a hash of
the base image and the repo's files: an unchanged task reuses its image, a changed one
rebuilds. Nothing of the task runs at build time (a COPY only), so building is safe on the host
daemon.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile
import tempfile
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from dagger_jax.envs.base_image import DEFAULT_RECIPE
from dagger_jax.envs.sandbox.docker_sandbox import owned_by_root
from dagger_jax.envs.tasks.repo import materialize_repo
from dagger_jax.envs.tasks.task import Task

IMAGE_REPOSITORY_PREFIX = "dagger-jax/task"
LABEL_TASK = "dagger_jax.task"
_API_ERRORS = (docker.errors.APIError, docker.errors.BuildError, requests.exceptions.RequestException)


class TaskImageError(RuntimeError):
    """A task's image could not be built; the message names the task and the docker error."""


def task_image_name(task: Task, base_image: str = DEFAULT_RECIPE.image) -> str:
    """`dagger-jax/task.<source>.<id>:<hash>`: docker's name rules (lowercase, [a-z0-9._-])."""
    if task.repo_files is None:
        raise ValueError(f"task {task.instance_id!r} has no repo_files to build an image from")
    content = json.dumps({"base": base_image, "files": dict(sorted(task.repo_files.items()))})
    digest = hashlib.sha256(content.encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9._-]+", "-", task.instance_id.lower()).strip("-._")[:96] or "task"
    return f"{IMAGE_REPOSITORY_PREFIX}.{task.source}.{slug}:{digest}"


def _build_context(repo_dir: Path, base_image: str) -> io.BytesIO:
    """A tar build context: the Dockerfile and the repo (owned by root, as the container's user)."""
    dockerfile = f"FROM {base_image}\nCOPY testbed /testbed\nWORKDIR /testbed\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(str(repo_dir), arcname="testbed", filter=owned_by_root)
    buffer.seek(0)
    return buffer


def build_task_image(client: docker.DockerClient, task: Task,
                     base_image: str = DEFAULT_RECIPE.image) -> str:
    """Builds (or finds) the task's image and returns its tag."""
    name = task_image_name(task, base_image)
    try:
        client.images.get(name)
        return name
    except docker.errors.ImageNotFound:
        pass
    except _API_ERRORS as e:
        raise TaskImageError(f"task {task.instance_id}: docker failed looking up {name}: {e}") from e
    try:
        client.images.get(base_image)
    except docker.errors.ImageNotFound:
        raise TaskImageError(f"task {task.instance_id}: base image {base_image} not found; build "
                             "it with python tools/build_base_image.py") from None
    with tempfile.TemporaryDirectory(prefix="dagger_jax-image-") as tmp:
        repo = materialize_repo(task, Path(tmp) / "testbed")
        try:
            client.images.build(fileobj=_build_context(repo, base_image), custom_context=True,
                                tag=name, rm=True, forcerm=True, network_mode="none",
                                labels={LABEL_TASK: task.instance_id})
        except _API_ERRORS as e:
            raise TaskImageError(f"task {task.instance_id}: building image {name} failed: {e}") from e
    return name


def with_image(client: docker.DockerClient, task: Task,
               base_image: str = DEFAULT_RECIPE.image) -> Task:
    """The task with its image built and named (its repo_files stay, for bubblewrap)."""
    return dataclasses.replace(task, image=build_task_image(client, task, base_image))
