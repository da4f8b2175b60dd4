"""The rollout service: a process that takes collection jobs over HTTP and writes their shards.

    python -m dagger_jax.rollout.service --port 8300 [--host 127.0.0.1]

    POST /jobs        a job (below) -> 202 {job_id, out_dir, state, ...}; the same job again -> its status
    GET  /jobs/<id>?out_dir=DIR   {job_id, out_dir, state: running|done|failed, stats, report | error}
    GET  /health      {"ok": true, "jobs": N}

A job is JSON: {"job": CollectionJob fields, "tasks_path": JSONL of tasks, "tokenizer_path":
the student's tokenizer dir, "sandbox": "bwrap"|"docker", "student": actor spec, "teacher":
actor spec, "concurrency": N, "records_per_shard": N}. The three paths are local paths (storage
shared with the run) or gs:// URLs in the run's bucket: the service then reads the task file
and tokenizer from the bucket and publishes each shard there as it is listed
(data/shard_sync.py), sharing no filesystem with the trainer. A job is known by its id and its out_dir, so several runs (each its own out_dirs) can
share one service although every run names its jobs `iter001`, `iter002`, ...; without
`?out_dir=` a status request names the only job with that id. Submitting is idempotent:
resubmitting a running or finished job returns its status and starts nothing; a different job
under a used id and out_dir is refused (409). Because the collector
skips episodes already listed in out_dir, a job resubmitted to a restarted service (after
the old one was killed) finishes the iteration with no episode lost or collected twice.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from typing import Any, Mapping

from aiohttp import web

from dagger_jax.agent import ChatTokenizer
from dagger_jax.envs.sandbox import make_backend
from dagger_jax.envs.tasks.task import BadTaskLine, read_tasks
from dagger_jax.rollout.actor_specs import build_actor
from dagger_jax.rollout.collector import CollectionJob, collect
from dagger_jax.rollout.serve_app import serve_forever
from dagger_jax.rollout.stats import CollectorStats
from dagger_jax.storage.store import local_dir, store_path

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServiceJob:
    job: CollectionJob
    tasks_path: str
    tokenizer_path: str
    sandbox: str = "bwrap"
    student: Mapping[str, Any] | None = None
    teacher: Mapping[str, Any] | None = None
    concurrency: int = 4
    records_per_shard: int = 16

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["job"] = self.job.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any) -> "ServiceJob":
        if not isinstance(data, dict):
            raise ValueError(f"a service job is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"service job: unknown keys {unknown}")
        for key in ("job", "tasks_path", "tokenizer_path"):
            if key not in data:
                raise ValueError(f"service job: missing {key!r}")
        try:
            return cls(**{**data, "job": CollectionJob.from_json(data["job"])})
        except TypeError as e:
            raise ValueError(f"service job: {e}") from None


class _Running:
    def __init__(self, spec: ServiceJob):
        self.spec = spec
        self.stats = CollectorStats()
        self.state, self.report, self.error = "running", None, None
        self.task: asyncio.Task | None = None

    def status(self) -> dict[str, Any]:
        return {"job_id": self.spec.job.job_id, "out_dir": self.spec.job.out_dir,
                "state": self.state, "stats": self.stats.snapshot(),
                "report": self.report, "error": self.error}


def job_key(spec: ServiceJob) -> tuple[str, str]:
    """What names a job in the service: its id and where its shards go."""
    return spec.job.job_id, spec.job.out_dir


class RolloutService:
    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], _Running] = {}
        self._backends: dict[str, Any] = {}
        self._tokenizers: dict[str, ChatTokenizer] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([web.post("/jobs", self.submit), web.get("/jobs/{job_id}", self.status),
                        web.get("/health", self.health)])
        app.on_shutdown.append(self._cancel_all)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "jobs": len(self.jobs)})

    async def status(self, request: web.Request) -> web.Response:
        job_id, out_dir = request.match_info["job_id"], request.query.get("out_dir")
        named = [r for (i, o), r in self.jobs.items() if i == job_id and out_dir in (None, o)]
        if not named:
            where = f" with out_dir {out_dir!r}" if out_dir is not None else ""
            return web.json_response({"error": f"no job {job_id!r}{where}"}, status=404)
        if len(named) > 1:
            return web.json_response(
                {"error": f"{len(named)} jobs are named {job_id!r} (out_dirs "
                          f"{sorted(r.spec.job.out_dir for r in named)}): add ?out_dir="},
                status=400)
        return web.json_response(named[0].status())

    async def submit(self, request: web.Request) -> web.Response:
        try:
            spec = ServiceJob.from_json(await request.json())
        except json.JSONDecodeError as e:
            return web.json_response({"error": f"body is not JSON: {e}"}, status=400)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        job_id = spec.job.job_id
        existing = self.jobs.get(job_key(spec))
        if existing is not None:
            if existing.spec != spec:
                return web.json_response({"error": f"job id {job_id!r} with out_dir "
                                                   f"{spec.job.out_dir!r} is already used by a "
                                                   "different job"}, status=409)
            if existing.state != "failed":
                return web.json_response(existing.status())
        running = _Running(spec)
        try:
            inputs = await asyncio.to_thread(self._prepare, spec)
        except (ValueError, FileNotFoundError, OSError) as e:
            return web.json_response({"error": f"job {job_id}: {e}"}, status=400)
        self.jobs[job_key(spec)] = running
        running.task = asyncio.get_running_loop().create_task(self._run(running, *inputs))
        return web.json_response(running.status(), status=202)

    def _prepare(self, spec: ServiceJob):
        """Tasks, tokenizer, actors and sandbox backend of a job; errors say which input."""
        tasks, bad = {}, []
        for item in read_tasks(store_path(spec.tasks_path)):
            if isinstance(item, BadTaskLine):
                bad.append(item.reason)
            else:
                tasks[item.instance_id] = item
        missing = [t for t in spec.job.task_ids if t not in tasks]
        if missing:
            raise ValueError(f"task ids not in {spec.tasks_path}: {missing[:5]}"
                             + (f" (bad lines there: {bad[:3]})" if bad else ""))
        if spec.tokenizer_path not in self._tokenizers:
            self._tokenizers[spec.tokenizer_path] = ChatTokenizer.from_path(
                local_dir(spec.tokenizer_path))
        chat = self._tokenizers[spec.tokenizer_path]
        student = build_actor(spec.student, chat, "student")
        teacher = build_actor(spec.teacher, chat, "teacher")
        if spec.sandbox not in self._backends:
            self._backends[spec.sandbox] = make_backend(spec.sandbox)
        return tasks, chat, student, teacher, self._backends[spec.sandbox]

    async def _run(self, running: _Running, tasks, chat, student, teacher, backend) -> None:
        spec = running.spec
        try:
            report = await collect(spec.job, tasks, student=student, teacher=teacher, chat=chat,
                                   backend=backend, concurrency=spec.concurrency,
                                   records_per_shard=spec.records_per_shard, stats=running.stats)
            running.report, running.state = report.to_json(), "done"
        except Exception as e:  # noqa: BLE001 - reported to whoever polls the job
            log.exception("job %s failed", spec.job.job_id)
            running.error, running.state = f"{type(e).__name__}: {e}", "failed"
        finally:
            for actor in (student, teacher):
                close = getattr(getattr(actor, "generator", None), "aclose", None)
                if close is not None:
                    await close()

    async def _cancel_all(self, app: web.Application) -> None:
        for running in self.jobs.values():
            if running.task is not None:
                running.task.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The rollout service: collection jobs over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    return serve_forever(RolloutService().app(), args.host, args.port, "rollout service")

if __name__ == "__main__":
    sys.exit(main())
