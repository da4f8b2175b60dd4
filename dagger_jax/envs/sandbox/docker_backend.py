"""Makes docker sandboxes for one run, and removes containers that dead runs left behind."""

from __future__ import annotations

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

    def labels(self) -> dict[str, str]:
        return {LABEL_SANDBOX: "1", LABEL_RUN: self.run_id,
                LABEL_OWNER_PID: str(self.owner.pid), LABEL_OWNER: self.owner.token()}

    def open(self, spec: SandboxSpec) -> DockerSandbox:
        name = f"dagger-jax-{self.run_id}-{secrets.token_hex(4)}"
        return DockerSandbox(self.client, spec.image or self.default_image, spec.repo_dir,
                             self.limits, name, self.labels())

    def reap_orphans(self) -> int:
        """Removes labelled containers whose owner (on this host) is dead."""
        try:
            containers = self.client.containers.list(all=True,
                                                     filters={"label": f"{LABEL_SANDBOX}=1"})
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise SandboxError(f"listing sandbox containers to reap failed: {e}") from e
        reaped = 0
        for container in containers:
            owner = Owner.from_token(container.labels.get(LABEL_OWNER, ""))
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
                    raise SandboxError(f"reaping container {container.name} failed: {e}") from e
        return reaped
