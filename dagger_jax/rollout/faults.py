"""What ends an episode as the agent's outcome, and what is the machinery's fault.

An episode's record says what the agent did: it finished, ran out of turns or context, got
stuck, or produced a turn that cannot be used. None of that depends on whether a server or a
sandbox host happened to be up. So an infrastructure fault (no endpoint answered after the
client's own retries, a sandbox that could not be started or was lost from outside) is never
written as an outcome: a model call waits for its endpoints and is made again, a lost sandbox
runs its episode again from the start, both within a bounded patience that the whole job
shares. When the patience runs out the episode is left unwritten, so a rerun of the job
collects it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import aiohttp

from dagger_jax.envs.sandbox.base import SandboxError
from dagger_jax.policies.endpoint_pool import AllEndpointsDown
from dagger_jax.policies.sglang_client import EndpointError

log = logging.getLogger(__name__)

# Recorded end reasons that are a fault of an actor's turn (an unusable reply) or of our own
# tools (internal_error), rather than the agent's ordinary ends (finish, turn_limit, ...).
FAULT_REASONS = ("policy_error", "teacher_error", "internal_error")


class InfrastructureFault(RuntimeError):
    """An episode could not be run because of the machinery; it is not written."""

    def __init__(self, what: str, cause: BaseException):
        super().__init__(f"{what}: {type(cause).__name__}: {cause}")
        self.what = what
        self.cause = cause


class CollectionIncomplete(RuntimeError):
    """A job ended with episodes not collected because of infrastructure faults. What was
    collected is stored; running the same job again collects the rest."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


def is_infrastructure(error: BaseException) -> bool:
    """Whether `error` is the machinery's fault rather than the request's or the agent's."""
    if isinstance(error, (AllEndpointsDown, SandboxError)):
        return True
    if isinstance(error, EndpointError):
        return error.retryable  # a 4xx is the request's fault: sending it again would not help
    # A model client outside our own (an actor written for a test or another API).
    return isinstance(error, (ConnectionError, TimeoutError, aiohttp.ClientConnectionError))


@dataclasses.dataclass
class Patience:
    """The job's patience with one outage: from the first infrastructure fault after the last
    success, calls wait with exponential backoff until `patience_s` has passed; then every
    waiter gives up at once. Shared by all the job's episodes, so a fleet that is down is
    waited for once, not once per episode."""

    patience_s: float = 600.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    report_every_s: float = 15.0
    clock: object = time.monotonic
    outage_since: float | None = None
    waits: int = 0
    last_report: float = -1e18
    exhausted: InfrastructureFault | None = None

    def __post_init__(self) -> None:
        if not self.patience_s >= 0:
            raise ValueError(f"infrastructure patience must be >= 0 s, got {self.patience_s}")

    def succeeded(self) -> None:
        """Something worked: the outage (if any) is over."""
        if self.outage_since is not None and self.exhausted is None:
            log.warning("infrastructure back after %.0f s", self.clock() - self.outage_since)
            self.outage_since = None

    async def wait(self, what: str, error: BaseException, attempt: int) -> None:
        """Waits before attempt `attempt` + 1 of something that failed with `error`; raises
        InfrastructureFault once the outage has outlasted the patience."""
        now = self.clock()
        if self.exhausted is not None:
            raise InfrastructureFault(what, error) from error
        if self.outage_since is None:
            self.outage_since = now
        waited = now - self.outage_since
        if waited >= self.patience_s:
            self.exhausted = InfrastructureFault(what, error)
            raise self.exhausted from error
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(attempt, 16),
                    self.patience_s - waited)
        if now - self.last_report >= self.report_every_s:
            self.last_report = now
            log.warning("waiting for %s (%s: %s): %.0f of %.0f s of patience spent, next try "
                        "in %.0f s", what, type(error).__name__, _short(error), waited,
                        self.patience_s, delay)
        self.waits += 1
        await asyncio.sleep(delay)


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."
