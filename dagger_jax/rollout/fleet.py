"""Keeping the served student current: every student endpoint serves the latest export.

The loop exports the student after each round and tells the fleet to load it
(`/update_weights_from_disk`, idempotent); a refusal stops the run, which resumes from there.
Before any collection that samples the served student, endpoints whose `/get_model_info`
weight version differs from the run's (a fleet started on another model, or restarted since)
are told to load the latest export too.

The URLs here are the servers themselves (one filesystem: they read the workdir's path), or
export sidecars beside them (config.loop.student_loaders), which take a gs:// export from the
store to their host and answer for their server (rollout/export_sidecar.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Sequence

from dagger_jax.policies.endpoint_pool import EndpointPool
from dagger_jax.policies.sglang_client import SGLangClient
from dagger_jax.storage.store import PathLike, is_remote

log = logging.getLogger(__name__)


async def load_export(urls: Sequence[str], export_dir: PathLike, version: str) -> None:
    """Every endpoint in `urls` loads `export_dir` as weight version `version`."""
    pool = EndpointPool.from_urls(list(urls))
    # A local path absolute (the servers resolve it in their own working directory); gs://
    # for sidecars, as it is.
    where = str(export_dir) if is_remote(export_dir) else str(Path(export_dir).resolve())
    try:
        await pool.update_weights_from_disk(where, version)
    finally:
        await pool.aclose()


async def sync_student_fleet(urls: Sequence[str], export_dir: PathLike, version: str) -> None:
    """Makes the endpoints that do not serve `version` (or do not answer) load `export_dir`."""
    if not urls:
        return
    clients = [SGLangClient(u) for u in urls]
    try:
        infos = await asyncio.gather(*(c.model_info() for c in clients), return_exceptions=True)
    finally:
        for c in clients:
            await c.aclose()
    stale = [u for u, info in zip(urls, infos)
             if isinstance(info, BaseException) or str(info.get("weight_version")) != version]
    if stale:
        log.info("student endpoints %s do not serve version %s: loading %s", stale, version,
                 export_dir)
        await load_export(stale, export_dir, version)
