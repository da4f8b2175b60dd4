"""Sandboxes for model-generated commands: one interface, a docker and a bubblewrap backend.

There is no unsandboxed backend. Backends are imported on demand, so code that only needs the
interface does not need the docker SDK.
"""

from __future__ import annotations

from dagger_jax.envs.sandbox.base import (CommandResult, Sandbox, SandboxBackend, SandboxError,
                                          SandboxFileError, SandboxLimits, SandboxSpec)

BACKENDS = ("docker", "bwrap")

__all__ = ["BACKENDS", "CommandResult", "Sandbox", "SandboxBackend", "SandboxError",
           "SandboxFileError", "SandboxLimits", "SandboxSpec", "make_backend"]


def make_backend(kind: str, limits: SandboxLimits = SandboxLimits(), **kwargs) -> SandboxBackend:
    """The backend named `kind` ("docker" or "bwrap"); kwargs go to its constructor."""
    if kind == "docker":
        from dagger_jax.envs.sandbox.docker_backend import DockerBackend
        return DockerBackend(limits, **kwargs)
    if kind == "bwrap":
        from dagger_jax.envs.sandbox.bwrap import BwrapBackend
        return BwrapBackend(limits, **kwargs)
    raise ValueError(f"unknown sandbox backend {kind!r}; choose one of {', '.join(BACKENDS)}")
