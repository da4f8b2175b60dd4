"""The rollout service in its own process: jobs over HTTP, idempotent ids, and a SIGKILL in the
middle of a job after which a new service finishes the iteration with nothing lost or doubled
(through a bucket: the service and the trainer share no path)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from dagger_jax.data.shard_sync import SyncedShardDir
from dagger_jax.data.shards import EpisodeSource, read_manifest
from dagger_jax.envs.tasks.synthetic import generate_tasks
from dagger_jax.envs.tasks.task import tasks_jsonl, write_tasks
from dagger_jax.rollout.collector import CollectionJob
from dagger_jax.rollout.mixed_episode import EpisodeSettings
from dagger_jax.rollout.mixing import RolloutRule
from dagger_jax.rollout.service import ServiceJob
from dagger_jax.rollout.service_client import RolloutServiceClient, RolloutServiceError
from dagger_jax.storage.store import staged_dir, store_path

# Real sandboxes, servers or whole runs: left out of make test-fast.
pytestmark = pytest.mark.slow

TASKS = generate_tasks(10, seed=21)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(port: int, log: Path, tmp: Path | None = None) -> subprocess.Popen:
    """The service on `port`; with `tmp`, its temp dir (its working copies of shards) there."""
    env = None
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp)}
    process = subprocess.Popen([sys.executable, "-m", "dagger_jax.rollout.service", "--port", str(port)],
                               stdout=log.open("a"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
    raise AssertionError(f"service did not start: {log.read_text()}")


def service_job(tmp_path, chat_dir, job_id="iter0", tasks: int = len(TASKS), **kw) -> ServiceJob:
    """A job over the first `tasks` of TASKS (the task file holds all of them)."""
    tasks_path = tmp_path / "tasks.jsonl"
    if not tasks_path.exists():
        write_tasks(TASKS, tasks_path)
    job = CollectionJob(job_id=job_id, iteration=0, rule=RolloutRule(beta=0.5),
                        task_ids=tuple(t.instance_id for t in TASKS[:tasks]),
                        out_dir=str(tmp_path / "iter_000"),
                        episodes_per_task=kw.pop("k", 1), seed=1, student_version="v0",
                        teacher_id="expert", settings=EpisodeSettings(max_turns=12))
    return ServiceJob(job=job, tasks_path=str(tasks_path), tokenizer_path=str(chat_dir),
                      sandbox="bwrap", student={"kind": "expert"}, teacher={"kind": "expert"},
                      concurrency=2, records_per_shard=2, **kw)


def test_jobs_over_http_are_idempotent_and_bad_jobs_are_refused(tmp_path, chat_dir, bwrap_backend):
    port = free_port()
    service = start_service(port, tmp_path / "service.log")
    try:
        client = RolloutServiceClient(f"http://127.0.0.1:{port}", poll_s=0.2)
        job = service_job(tmp_path, chat_dir, tasks=4)
        report = asyncio.run(client.run(job))
        assert report["episodes_written"] == 4 and report["resolved"] == 4
        again = asyncio.run(client.run(job))  # a retried job: its status, nothing new
        assert again == report
        assert len(EpisodeSource(tmp_path / "iter_000")) == 4

        async def post(payload):
            async with aiohttp.ClientSession() as session:
                async with session.post(f"http://127.0.0.1:{port}/jobs", json=payload) as r:
                    return r.status, await r.json()

        other = ServiceJob(**{**job.__dict__, "concurrency": 3})
        status, body = asyncio.run(post(other.to_json()))
        assert status == 409 and "different job" in body["error"]

        # Another run's job under the same id (every run names its jobs iter001, ...): a job of
        # its own, with its own shards; a status request must then say which out_dir it means.
        second_dir = tmp_path / "run2" / "iter_000"
        second = ServiceJob(**{**job.__dict__, "job": dataclasses.replace(job.job, out_dir=str(second_dir))})
        second_report = asyncio.run(client.run(second))
        assert second_report["episodes_written"] == 4 and second_report["episodes_skipped"] == 0
        assert len(EpisodeSource(second_dir)) == 4 and len(EpisodeSource(tmp_path / "iter_000")) == 4

        async def get(path, **params):
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}{path}", params=params) as r:
                    return r.status, await r.json()

        status, body = asyncio.run(get(f"/jobs/{job.job.job_id}"))
        assert status == 400 and "2 jobs are named" in body["error"] and str(second_dir) in body["error"]
        status, body = asyncio.run(get(f"/jobs/{job.job.job_id}", out_dir=str(second_dir)))
        assert status == 200 and body["out_dir"] == str(second_dir) and body["report"] == second_report
        status, body = asyncio.run(get(f"/jobs/{job.job.job_id}", out_dir=str(tmp_path / "nowhere")))
        assert status == 404 and "nowhere" in body["error"]
        status, body = asyncio.run(post({**job.to_json(), "surprise": 1}))
        assert status == 400 and "unknown keys ['surprise']" in body["error"]
        bad_tasks = service_job(tmp_path, chat_dir, job_id="iter0x")
        bad = bad_tasks.to_json()
        bad["job"]["task_ids"] = ["no-such-task"]
        status, body = asyncio.run(post(bad))
        assert status == 400 and "no-such-task" in body["error"]
        with pytest.raises(RolloutServiceError, match="refused"):
            asyncio.run(client.run(ServiceJob.from_json(bad)))
    finally:
        service.kill()
        service.wait()


def test_a_killed_service_loses_and_doubles_nothing(tmp_path, chat_dir, bwrap_backend, gcs):
    """The service and the trainer share nothing but the bucket (the GCS emulator): the job
    names the task file, tokenizer and shard directory by gs:// URL, each service process has a
    temp dir of its own, and the trainer reads the shards through its own copy. Killed once its
    first shards are published, a new service (on another temp dir: another machine) finishes
    the job: every episode stored once."""
    from tests.gcs_emulator import create_bucket
    bucket = store_path(create_bucket(gcs, "service-kill"))
    (bucket / "tasks.jsonl").write_text(tasks_jsonl(TASKS))
    with staged_dir(bucket / "tokenizer") as staged:
        shutil.copytree(chat_dir, staged, dirs_exist_ok=True)
    local = service_job(tmp_path, chat_dir, k=2)
    job = ServiceJob(**{**local.__dict__, "tasks_path": str(bucket / "tasks.jsonl"),
                        "tokenizer_path": str(bucket / "tokenizer"),
                        "job": dataclasses.replace(local.job, out_dir=str(bucket / "iter_000"))})
    trainer_copy = SyncedShardDir(job.job.out_dir, cache=tmp_path / "trainer")
    port = free_port()
    log = tmp_path / "service.log"
    service = start_service(port, log, tmp_path / "service-a")
    client = RolloutServiceClient(f"http://127.0.0.1:{port}", poll_s=0.2)

    async def submit_and_wait_for_some_shards():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/jobs", json=job.to_json()) as r:
                assert r.status == 202, await r.text()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if len(read_manifest(trainer_copy.pull())) >= 2:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("no shards appeared")

    asyncio.run(submit_and_wait_for_some_shards())
    os.kill(service.pid, signal.SIGKILL)
    service.wait()
    before = len(EpisodeSource(trainer_copy.pull()))
    assert 4 <= before < 20
    service = start_service(port, log, tmp_path / "service-b")  # a new process, same port
    try:
        report = asyncio.run(client.run(job))
    finally:
        service.kill()
        service.wait()
    source = EpisodeSource(trainer_copy.pull())
    ids = source.episode_ids()
    assert sorted(ids) == sorted(eid for eid, _ in job.job.episode_ids())  # all, once each
    assert report["episodes_skipped"] >= before and report["episodes_written"] == 20 - report["episodes_skipped"]
    manifest_ids = [eid for shard in read_manifest(trainer_copy.local) for eid in shard.episode_ids]
    assert len(manifest_ids) == len(set(manifest_ids)) == 20
    # No shard was written where the trainer keeps its files.
    assert not (tmp_path / "iter_000").exists()
