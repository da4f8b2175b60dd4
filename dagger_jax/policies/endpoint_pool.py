"""Several SGLang servers behind one TokenGenerator: sticky sessions, failover, weight reloads.

Routing. A `session` (one episode) is assigned to an endpoint on its first call and keeps it,
so every turn of the episode lands where its prefix is already cached. New sessions (and calls
without a session) go to the least-loaded endpoint that is up: fewest requests in flight, then
fewest sessions assigned. An assignment table rather than a hash ring: load-aware placement
and explicit moves on failover are both simple with a table, and its size is bounded (LRU).

Failover. When a call fails with a retryable error (the client has already spent its own
retries), the endpoint is marked down with that error, the session moves to another endpoint
and the call is made there; the session stays on its new endpoint afterwards. A 4xx
(RequestRejected) is the request's fault, not the endpoint's: it is raised as is. A down
endpoint comes back only after a cool-down and a passing `/health_generate` re-probe (done in
the background while other endpoints serve, inline when none is up). When every endpoint is
down, AllEndpointsDown lists each one with its last failure.

Weights. `update_weights_from_disk` asks every endpoint. One that fails, or is unreachable,
would serve stale weights; it is marked down and "stale", and its re-probe reloads the last
requested weights before it takes traffic again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from dagger_jax.policies.generation import Generation, SamplingParams
from dagger_jax.policies.sglang_client import EndpointError, SGLangClient

T = TypeVar("T")


class AllEndpointsDown(RuntimeError):
    """No endpoint could take the call. `failures` maps endpoint -> its last failure."""

    def __init__(self, message: str, failures: dict[str, str]):
        super().__init__(message)
        self.failures = failures


class WeightUpdateFailed(RuntimeError):
    """Some endpoints did not load the new weights. `succeeded` maps endpoint -> SGLang's
    message, `failed` endpoint -> the error."""

    def __init__(self, message: str, succeeded: dict[str, str], failed: dict[str, str]):
        super().__init__(message)
        self.succeeded = succeeded
        self.failed = failed


@dataclasses.dataclass(eq=False)
class _Endpoint:
    client: SGLangClient
    up: bool = True
    down_since: float | None = None
    last_failure: str | None = None
    stale_weights: bool = False  # missed the last weight update: must reload before serving
    inflight: int = 0
    sessions: int = 0
    served: int = 0
    failures: int = 0
    probe_task: asyncio.Task | None = None
    probe_lock: asyncio.Lock | None = None

    @property
    def url(self) -> str:
        return self.client.base_url


class EndpointPool:
    """A TokenGenerator over several SGLangClients (see module doc). `clock` is injectable so
    cool-downs can be tested without sleeping."""

    def __init__(self, clients: Sequence[SGLangClient], *, cooldown_s: float = 15.0,
                 max_sessions: int = 100_000, name: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not clients:
            raise ValueError("EndpointPool needs at least one client")
        urls = [c.base_url for c in clients]
        dupes = sorted({u for u in urls if urls.count(u) > 1})
        if dupes:
            raise ValueError(f"EndpointPool: endpoints listed twice: {dupes}")
        self._eps = [_Endpoint(c) for c in clients]
        self.cooldown_s = float(cooldown_s)
        self.max_sessions = int(max_sessions)
        self.name = name or "pool(" + ",".join(urls) + ")"
        self._clock = clock
        self._assign: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._weights: tuple[str, str | None] | None = None
        self.failovers = 0

    @classmethod
    def from_urls(cls, urls: Sequence[str], **client_kwargs: Any) -> "EndpointPool":
        return cls([SGLangClient(u, **client_kwargs) for u in urls])

    @property
    def endpoints(self) -> list[str]:
        return [ep.url for ep in self._eps]

    def endpoint_of(self, session: str) -> str | None:
        """Where `session` is assigned now (None if it is not)."""
        i = self._assign.get(session)
        return None if i is None else self._eps[i].url

    def release(self, session: str) -> None:
        """Forgets a finished episode's assignment (optional: the table is bounded anyway)."""
        i = self._assign.pop(session, None)
        if i is not None:
            self._eps[i].sessions -= 1

    # -- TokenGenerator --------------------------------------------------------------------

    async def generate(self, input_ids: Sequence[int], params: SamplingParams,
                       session: str | None = None) -> Generation:
        return await self._route(session, lambda c: c.generate(input_ids, params, session))

    async def score(self, input_ids: Sequence[int], target_ids: Sequence[int],
                    session: str | None = None) -> tuple[float, ...]:
        return await self._route(session, lambda c: c.score(input_ids, target_ids, session))

    async def _route(self, session: str | None,
                     call: Callable[[SGLangClient], Awaitable[T]]) -> T:
        tried: set[int] = set()
        while True:
            i = await self._pick(session, tried)
            ep = self._eps[i]
            tried.add(i)
            ep.inflight += 1
            try:
                result = await call(ep.client)
            except EndpointError as e:
                if not e.retryable:
                    raise
                self._mark_down(ep, str(e.problem))
                self.failovers += 1
                continue
            finally:
                ep.inflight -= 1
            ep.served += 1
            return result

    # -- choosing an endpoint --------------------------------------------------------------

    def _cooled(self, ep: _Endpoint) -> bool:
        return not ep.up and (ep.down_since is None
                              or self._clock() - ep.down_since >= self.cooldown_s)

    async def _pick(self, session: str | None, tried: set[int]) -> int:
        self._schedule_probes()
        if session is not None:
            i = self._assign.get(session)
            if i is not None:
                self._assign.move_to_end(session)
                if i not in tried and self._eps[i].up:
                    return i
        candidates = [i for i, ep in enumerate(self._eps) if ep.up and i not in tried]
        if not candidates:
            # Nothing up: give each cooled-down endpoint its re-probe now rather than failing.
            for i, ep in enumerate(self._eps):
                if i not in tried and self._cooled(ep) and await self._probe(i):
                    candidates.append(i)
        if not candidates:
            raise self._all_down(tried)
        best = min(candidates, key=lambda k: (self._eps[k].inflight, self._eps[k].sessions, k))
        if session is not None:
            self._assign_session(session, best)
        return best

    def _assign_session(self, session: str, i: int) -> None:
        old = self._assign.pop(session, None)
        if old is not None:
            self._eps[old].sessions -= 1
        self._assign[session] = i
        self._eps[i].sessions += 1
        while len(self._assign) > self.max_sessions:
            _, evicted = self._assign.popitem(last=False)
            self._eps[evicted].sessions -= 1

    def _all_down(self, tried: set[int]) -> AllEndpointsDown:
        now = self._clock()
        failures, lines = {}, []
        for ep in self._eps:
            why = ep.last_failure or "no failure recorded"
            failures[ep.url] = why
            if ep.up:
                state = "up"
            elif ep.down_since is None:
                state = "down"
            else:
                left = self.cooldown_s - (now - ep.down_since)
                state = f"down {now - ep.down_since:.1f}s" + (
                    f", re-probe in {left:.1f}s" if left > 0 else "")
            lines.append(f"  {ep.url} [{state}]: {why}")
        msg = (f"{self.name}: all {len(self._eps)} endpoints are down or failed this call:\n"
               + "\n".join(lines))
        return AllEndpointsDown(msg, failures)

    def _mark_down(self, ep: _Endpoint, why: str) -> None:
        ep.up = False
        ep.down_since = self._clock()
        ep.last_failure = why
        ep.failures += 1

    # -- re-probing ------------------------------------------------------------------------

    def _schedule_probes(self) -> None:
        """Starts a background re-probe for each cooled-down endpoint that has none running."""
        for i, ep in enumerate(self._eps):
            if self._cooled(ep) and (ep.probe_task is None or ep.probe_task.done()):
                ep.probe_task = asyncio.get_running_loop().create_task(self._probe(i))

    async def _probe(self, i: int, *, force: bool = False) -> bool:
        """Health check (plus a reload of the last weights if this endpoint missed them);
        marks the endpoint up on success, restarts its cool-down on failure. Without `force`
        an endpoint still cooling down is not probed (another probe just failed)."""
        ep = self._eps[i]
        if ep.probe_lock is None:
            ep.probe_lock = asyncio.Lock()
        async with ep.probe_lock:
            if ep.up:
                return True
            if not force and not self._cooled(ep):
                return False
            try:
                await ep.client.check_health()
                if ep.stale_weights and self._weights is not None:
                    await ep.client.update_weights_from_disk(*self._weights)
            except EndpointError as e:
                prefix = "re-probe (weight reload) failed" if ep.stale_weights else \
                    "re-probe failed"
                self._mark_down(ep, f"{prefix}: {e.problem}")
                return False
            ep.up = True
            ep.down_since = None
            ep.stale_weights = False
            return True

    async def reprobe(self) -> list[str]:
        """Re-probes every cooled-down endpoint now (instead of on the next call) and returns
        the endpoints that are up."""
        await asyncio.gather(*(self._probe(i) for i, ep in enumerate(self._eps)
                               if self._cooled(ep)))
        return [ep.url for ep in self._eps if ep.up]

    # -- fleet operations ------------------------------------------------------------------

    async def wait_healthy(self, timeout_s: float, *, poll_s: float = 2.0,
                           min_healthy: int | None = None) -> list[str]:
        """Polls `/health_generate` until `min_healthy` endpoints (default: all) pass; returns
        the healthy ones. Raises TimeoutError listing the others and why."""
        need = len(self._eps) if min_healthy is None else int(min_healthy)
        if not 1 <= need <= len(self._eps):
            raise ValueError(f"min_healthy must be in [1, {len(self._eps)}], got {min_healthy}")
        deadline = self._clock() + timeout_s
        while True:
            # Up endpoints are checked too ("up" may only mean "never failed yet"); down ones
            # get a forced re-probe, cool-down or not.
            await asyncio.gather(*(self._check_up(ep) if ep.up else self._probe(i, force=True)
                                   for i, ep in enumerate(self._eps)))
            healthy = [ep.url for ep in self._eps if ep.up]
            if len(healthy) >= need:
                return healthy
            remaining = deadline - self._clock()
            if remaining <= 0:
                bad = "\n".join(f"  {ep.url}: {ep.last_failure}" for ep in self._eps if not ep.up)
                raise TimeoutError(f"{self.name}: {len(healthy)}/{len(self._eps)} endpoints "
                                   f"healthy after {timeout_s:g}s (needed {need}); not "
                                   f"healthy:\n{bad}")
            await asyncio.sleep(min(poll_s, remaining))

    async def _check_up(self, ep: _Endpoint) -> None:
        try:
            await ep.client.check_health()
        except EndpointError as e:
            self._mark_down(ep, f"health check failed: {e.problem}")

    async def update_weights_from_disk(self, path: str,
                                       weight_version: str | None = None) -> dict[str, str]:
        """Loads `path` on every endpoint at once. Returns endpoint -> SGLang's message when all
        succeed; otherwise raises WeightUpdateFailed naming which succeeded and which did not
        (those are taken out of service until a re-probe reloads them)."""
        self._weights = (str(path), None if weight_version is None else str(weight_version))
        results = await asyncio.gather(
            *(ep.client.update_weights_from_disk(path, weight_version) for ep in self._eps),
            return_exceptions=True)
        succeeded: dict[str, str] = {}
        failed: dict[str, str] = {}
        for ep, result in zip(self._eps, results):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation and the like are not an endpoint's verdict
                why = result.problem if isinstance(result, EndpointError) else repr(result)
                failed[ep.url] = why
                ep.stale_weights = True
                self._mark_down(ep, f"missed weight update to {path!r} "
                                    f"(version {weight_version}): {why}")
            else:
                succeeded[ep.url] = result
                ep.stale_weights = False
        if failed:
            lines = "\n".join(f"  {u}: {why}" for u, why in failed.items())
            ok = ", ".join(succeeded) or "none"
            raise WeightUpdateFailed(
                f"{self.name}: weight update to {path!r} failed on {len(failed)} of "
                f"{len(self._eps)} endpoints (they stay out of service until they reload):\n"
                f"{lines}\nsucceeded: {ok}", succeeded, failed)
        return succeeded

    async def flush_cache(self) -> None:
        await asyncio.gather(*(ep.client.flush_cache() for ep in self._eps if ep.up))

    def stats(self) -> dict[str, Any]:
        return {
            "failovers": self.failovers,
            "sessions": len(self._assign),
            "endpoints": [{
                "endpoint": ep.url, "up": ep.up, "stale_weights": ep.stale_weights,
                "inflight": ep.inflight, "sessions": ep.sessions, "served": ep.served,
                "failures": ep.failures, "last_failure": ep.last_failure,
                "client": ep.client.stats.as_dict(),
            } for ep in self._eps],
        }

    async def aclose(self) -> None:
        tasks = [ep.probe_task for ep in self._eps if ep.probe_task and not ep.probe_task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ep in self._eps:
            await ep.client.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
