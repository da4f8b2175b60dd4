"""Makes docker sandboxes for one run, and removes containers that dead runs left behind."""

from __future__ import annotations

import logging
import os
import secrets

import docker
import docker.errors
import requests.exceptions

from dagger_jax.envs.base_image import DEFAULT_RECIPE
from dagger_jax.envs.sandbox.base import SandboxBackend, SandboxError, SandboxLimits, SandboxSpec
from dagger_jax.envs.sandbox.docker_sandbox import (LABEL_OWNER, LABEL_OWNER_PID, LABEL_RUN,
                                                    LABEL_SANDBOX, DockerSandbox)
from dagger_jax.envs.sandbox.owner import Owner

log = logging.getLogger(__name__)
# Storage drivers whose size option caps what a container references, its image included
# (btrfs and zfs quotas count the snapshot's shared blocks): the image's size is added.
_SIZE_INCLUDES_IMAGE = ("btrfs", "zfs")


def connect(timeout_s: float = 60.0) -> docker.DockerClient:
    """A client for the local docker daemon (DOCKER_HOST honoured), or a SandboxError saying how
    to start one."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise SandboxError(f"docker daemon not reachable at {where}: {e}; start it with "
                           "tools/ensure_sandbox_deps.sh") from e
    return client


class DockerBackend(SandboxBackend):
    """Opens one container per episode; reaps orphans of dead runs when it starts."""

    runs_images = True

    def __init__(self, limits: SandboxLimits = SandboxLimits(), run_id: str | None = None,
                 client: docker.DockerClient | None = None,
                 default_image: str = DEFAULT_RECIPE.image):
        self.limits = limits
        self.run_id = run_id or secrets.token_hex(4)
        self.client = client if client is not None else connect()
        self.default_image = default_image
        self.owner = Owner.current()
        self.reap_orphans()
        self.driver = str(self.client.info().get("Driver", "?"))
        self.disk_quota = bool(limits.disk_mb) and self._sizes_containers()

    def _sizes_containers(self) -> bool:
        """Whether the daemon's storage driver can cap a container's disk (`--storage-opt
        size`: overlay2 on xfs with pquota, btrfs or zfs with quotas); warns once if not."""
        try:
            probe = self.client.containers.create(self.default_image, entrypoint=["true"],
                                                  storage_opt={"size": "1G"}, labels=self.labels())
        except docker.errors.ImageNotFound:
            return False  # nothing to run anyway: open() names the missing image
        except docker.errors.APIError as e:
            log.warning("docker's storage driver %s cannot cap a container's disk (%s): docker "
                        "sandboxes write without a disk quota. tools/ensure_sandbox_deps.sh "
                        "starts a dockerd on btrfs that can; SandboxLimits(disk_mb=0) says that "
                        "no quota is wanted", self.driver, e.explanation or e)
            return False
        probe.remove(force=True)
        return True

    def storage_opt(self, image: str) -> dict[str, str] | None:
        """The size option of a container from `image`: the disk quota on top of the image
        where the driver counts the image too."""
        if not self.disk_quota:
            return None
        size = self.limits.disk_mb * 2**20
        if self.driver in _SIZE_INCLUDES_IMAGE:
            try:
                size += int(self.client.images.get(image).attrs.get("Size", 0))
            except docker.errors.ImageNotFound:
                return None  # open() says so
        return {"size": str(size)}

    def labels(self) -> dict[str, str]:
        return {LABEL_SANDBOX: "1", LABEL_RUN: self.run_id,
                LABEL_OWNER_PID: str(self.owner.pid), LABEL_OWNER: self.owner.token()}

    def open(self, spec: SandboxSpec) -> DockerSandbox:
        name = f"dagger-jax-{self.run_id}-{secrets.token_hex(4)}"
        image = spec.image or self.default_image
        return DockerSandbox(self.client, image, spec.repo_dir, self.limits, name, self.labels(),
                             storage_opt=self.storage_opt(image))

    def reap_orphans(self) -> int:
        """Removes labelled containers whose owner (on this host) is dead."""
        try:
            # sparse: the list's own fields, not an inspect per container, which fails with
            # 404 for one that another run removes meanwhile.
            containers = self.client.containers.list(all=True, sparse=True,
                                                     filters={"label": f"{LABEL_SANDBOX}=1"})
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise SandboxError(f"listing sandbox containers to reap failed: {e}") from e
        reaped = 0
        for container in containers:
            owner = Owner.from_token((container.attrs.get("Labels") or {}).get(LABEL_OWNER, ""))
            # Unparseable labels or other hosts' owners (a shared daemon) are not ours to judge.
            if owner is None or not owner.is_local() or owner.is_alive():
                continue
            try:
                container.remove(force=True, v=True)
                reaped += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                # 409 "removal ... already in progress": another process (a second run's
                # reaper on the same daemon) is removing it; it is going either way.
                if e.status_code != 409:
                    raise SandboxError(f"reaping container {container.short_id} failed: {e}") from e
        return reaped
