"""The trainer's side of the rollout service: submit a job, follow it to the end.

Submitting is idempotent (the job id), so the client simply submits again whenever it cannot
tell how the job stands: after a connection error, or when a restarted service no longer
knows the job. Either way the service resumes the job from the shards already written.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import aiohttp
from tenacity import (AsyncRetrying, retry_if_exception_type, stop_after_delay,
                      wait_exponential_jitter)

from dagger_jax.rollout.service import ServiceJob


class RolloutServiceError(RuntimeError):
    """The service refused the job or the job failed; the message says which and why."""


class RolloutServiceClient:
    def __init__(self, url: str, *, unreachable_timeout_s: float = 120.0, poll_s: float = 1.0):
        self.url = url.rstrip("/")
        self.unreachable_timeout_s = unreachable_timeout_s
        self.poll_s = poll_s

    async def _request(self, session: aiohttp.ClientSession, method: str, path: str,
                       payload: Any = None, params: dict | None = None) -> tuple[int, dict]:
        # Connection faults retry until the service has been unreachable for too long.
        async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((aiohttp.ClientConnectionError, asyncio.TimeoutError)),
                wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
                stop=stop_after_delay(self.unreachable_timeout_s), reraise=True):
            with attempt:
                async with session.request(method, self.url + path, json=payload, params=params,
                                           timeout=aiohttp.ClientTimeout(total=60)) as response:
                    return response.status, await response.json(content_type=None)
        raise AssertionError("unreachable")

    async def run(self, job: ServiceJob,
                  on_status: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Submits the job and waits for it; returns its report, raises RolloutServiceError."""
        job_id = job.job.job_id
        async with aiohttp.ClientSession() as session:
            await self._submit(session, job)
            while True:
                # The out_dir too: other runs sharing the service name their jobs alike.
                code, status = await self._request(session, "GET", f"/jobs/{job_id}",
                                                   params={"out_dir": job.job.out_dir})
                if code == 404:  # the service restarted and forgot the job: submit it again
                    await self._submit(session, job)
                    continue
                if on_status is not None:
                    on_status(status)
                if status["state"] == "done":
                    return status["report"]
                if status["state"] == "failed":
                    raise RolloutServiceError(f"rollout job {job_id} at {self.url} failed: "
                                              f"{status['error']}")
                await asyncio.sleep(self.poll_s)

    async def _submit(self, session: aiohttp.ClientSession, job: ServiceJob) -> None:
        code, body = await self._request(session, "POST", "/jobs", job.to_json())
        if code not in (200, 202):
            raise RolloutServiceError(f"rollout service {self.url} refused job {job.job.job_id} "
                                      f"({code}): {body.get('error', body)}")
