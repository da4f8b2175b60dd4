"""EndpointPool over real HTTP servers (tests/policies/fake_sglang.py): sticky sessions,
least-loaded placement, failover that sticks, re-probes after a cool-down, the all-down
listing, fleet-wide weight reloads, and a server process killed in the middle of a request."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from dagger_jax.policies.endpoint_pool import AllEndpointsDown, EndpointPool, WeightUpdateFailed
from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.sglang_client import RequestRejected, RetryPolicy, SGLangClient
from tests.policies.fake_sglang import FakeSGLang

FAST = RetryPolicy(max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02, jitter_s=0.01)
PARAMS = SamplingParams(max_new_tokens=4)
FAKE_SERVER = Path(__file__).with_name("fake_sglang.py")


class FakeClock:
    """Cool-downs are measured on this clock, so tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_pool(test: Callable[..., Awaitable[Any]], n: int = 2, *, cooldown_s: float = 30.0,
              timeout_s: float = 10.0) -> Any:
    async def main() -> Any:
        servers = [await FakeSGLang().start() for _ in range(n)]
        clock = FakeClock()
        pool = EndpointPool([SGLangClient(s.url, vocab_size=1000, retry=FAST, timeout_s=timeout_s)
                             for s in servers], cooldown_s=cooldown_s, clock=clock)
        try:
            return await test(servers, pool, clock)
        finally:
            await pool.aclose()
            for s in servers:
                await s.stop()
    return asyncio.run(main())


def served_sessions(server: FakeSGLang) -> list[int]:
    """Which requests a server got, by their first input token (the tests encode the session)."""
    return [b["input_ids"][0] for b in server.generate_bodies]


def test_sessions_stick_to_one_endpoint_and_new_sessions_spread():
    async def t(servers, pool, clock):
        for turn in range(3):
            for s in range(6):
                gen = await pool.generate([s, turn + 1], PARAMS, session=f"ep-{s}")
                assert gen.endpoint == pool.endpoint_of(f"ep-{s}")
        a, b = (set(served_sessions(srv)) for srv in servers)
        assert a and b and not a & b  # each episode on one server, both servers used
        assert len(a) == len(b) == 3  # least-loaded placement alternates
        assert pool.stats()["sessions"] == 6
        await pool.score([0, 1], [2, 3], session="ep-0")
        assert servers[0 if 0 in a else 1].generate_bodies[-1]["sampling_params"][
            "max_new_tokens"] == 0  # scoring follows the session too
    with_pool(t)


def test_failover_moves_the_session_and_it_stays_moved():
    async def t(servers, pool, clock):
        a, b = servers
        await pool.generate([7], PARAMS, session="ep")
        assert pool.endpoint_of("ep") == a.url
        await a.stop()
        gen = await pool.generate([7, 8], PARAMS, session="ep")
        assert gen.endpoint == b.url and pool.endpoint_of("ep") == b.url
        assert pool.failovers == 1
        info = pool.stats()["endpoints"][0]
        assert not info["up"] and "POST /generate failed" in info["last_failure"]
        assert info["client"]["retries"] == 1  # the client retried before the pool moved on
        # A comes back and passes its re-probe; the moved episode stays where it is.
        await a.start()
        clock.now += 31
        assert await pool.reprobe() == [a.url, b.url]
        for _ in range(3):
            assert (await pool.generate([7, 9], PARAMS, session="ep")).endpoint == b.url
        assert pool.endpoint_of("ep") == b.url
    with_pool(t)


def test_rejected_request_is_raised_without_failover():
    async def t(servers, pool, clock):
        a, b = servers
        await pool.generate([1], PARAMS, session="ep")
        a.faults = ["400"]
        with pytest.raises(RequestRejected, match="context length"):
            await pool.generate([1, 2], PARAMS, session="ep")
        assert pool.endpoint_of("ep") == a.url and pool.failovers == 0
        assert pool.stats()["endpoints"][0]["up"] and b.generate_bodies == []
    with_pool(t)


def test_malformed_output_marks_the_endpoint_down_and_fails_over():
    async def t(servers, pool, clock):
        a, b = servers
        await pool.generate([1], PARAMS, session="ep")
        a.faults = ["oov", "oov"]
        gen = await pool.generate([1, 2], PARAMS, session="ep")
        assert gen.endpoint == b.url
        info = pool.stats()["endpoints"][0]
        assert not info["up"] and "outside the vocabulary" in info["last_failure"]
        assert info["client"]["faults"] == {"malformed": 2}
    with_pool(t)


def test_all_down_lists_every_endpoint_and_its_last_failure():
    async def t(servers, pool, clock):
        a, b = servers
        a.faults = ["503", "503"]
        await b.stop()
        with pytest.raises(AllEndpointsDown) as info:
            await pool.generate([1], PARAMS, session="ep")
        msg = str(info.value)
        assert f"{a.url} [down" in msg and "HTTP 503: boom 503" in msg
        assert f"{b.url} [down" in msg and "POST /generate failed" in msg
        assert set(info.value.failures) == {a.url, b.url}
        # Still cooling down: the next call fails at once, naming the re-probe time.
        with pytest.raises(AllEndpointsDown, match="re-probe in"):
            await pool.generate([1], PARAMS)
    with_pool(t)


def test_down_endpoint_is_reprobed_only_after_cooldown():
    async def t(servers, pool, clock):
        (a,) = servers
        await a.stop()
        with pytest.raises(AllEndpointsDown):
            await pool.generate([1], PARAMS)
        await a.start()
        clock.now += 10  # within the cool-down: not even probed
        with pytest.raises(AllEndpointsDown):
            await pool.generate([1], PARAMS)
        assert a.health_checks == 0
        a.health_ok = False
        clock.now += 25  # cooled down, but the re-probe fails: down again, reason recorded
        with pytest.raises(AllEndpointsDown, match="re-probe failed: GET /health_generate"):
            await pool.generate([1], PARAMS)
        a.health_ok = True
        clock.now += 31
        assert (await pool.generate([1], PARAMS)).endpoint == a.url
        assert a.health_checks == 2
    with_pool(t, n=1)


def test_update_weights_everywhere_and_the_refusing_endpoint_reloads_before_serving():
    async def t(servers, pool, clock):
        a, b = servers
        done = await pool.update_weights_from_disk("/ckpt/1", "v1")
        assert set(done) == {a.url, b.url} and all("v1" in m for m in done.values())
        b.refuse_weights = "Failed to load: disk quota"
        with pytest.raises(WeightUpdateFailed) as info:
            await pool.update_weights_from_disk("/ckpt/2", "v2")
        err = info.value
        assert set(err.succeeded) == {a.url} and set(err.failed) == {b.url}
        assert "disk quota" in str(err) and f"succeeded: {a.url}" in str(err)
        # b still holds v1: it must not serve until it has v2.
        for s in range(4):
            gen = await pool.generate([s], PARAMS, session=f"ep-{s}")
            assert gen.endpoint == a.url and gen.weight_version == "v2"
        b.refuse_weights = None
        clock.now += 31
        assert await pool.reprobe() == [a.url, b.url]  # b's re-probe reloaded v2 first
        assert [w["weight_version"] for w in b.weight_bodies] == ["v1", "v2", "v2"]
        gen = await pool.generate([9], PARAMS, session="new")
        assert gen.endpoint == b.url and gen.weight_version == "v2"
    with_pool(t)


def test_wait_healthy_polls_until_every_endpoint_passes():
    async def t(servers, pool, clock):
        a, b = servers
        b.health_failures_left = 2
        assert await pool.wait_healthy(timeout_s=30, poll_s=0.01) == [a.url, b.url]
        assert b.health_checks == 3
        await b.stop()
        with pytest.raises(TimeoutError,
                           match=f"(?s)1/2 endpoints healthy.*{b.url}: health check failed"):
            await pool.wait_healthy(timeout_s=0, poll_s=0.01)
        assert await pool.wait_healthy(timeout_s=0, min_healthy=1) == [a.url]
    with_pool(t)


def test_server_process_killed_mid_request_fails_over():
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(FAKE_SERVER), "--hang-generate",
            stdout=asyncio.subprocess.PIPE)
        backup = await FakeSGLang().start()
        pool = None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.startswith(b"PORT "), line
            doomed = f"http://127.0.0.1:{int(line.split()[1])}"
            pool = EndpointPool([SGLangClient(doomed, retry=FAST),
                                 SGLangClient(backup.url, retry=FAST)])
            call = asyncio.ensure_future(pool.generate([4, 2], PARAMS, session="ep"))
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"GENERATE\n"
            assert pool.endpoint_of("ep") == doomed
            proc.kill()  # the server dies while our request is in flight
            await proc.wait()
            gen = await asyncio.wait_for(call, 30)
            assert gen.endpoint == backup.url and pool.endpoint_of("ep") == backup.url
            doomed_stats = pool.stats()["endpoints"][0]
            assert not doomed_stats["up"] and doomed_stats["client"]["retries"] == 1
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if pool is not None:
                await pool.aclose()
            await backup.stop()
    asyncio.run(main())


def test_pool_validation():
    with pytest.raises(ValueError, match="at least one"):
        EndpointPool([])
    with pytest.raises(ValueError, match="listed twice"):
        EndpointPool.from_urls(["http://a:1", "http://a:1"])
