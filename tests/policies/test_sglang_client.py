"""SGLangClient against a real HTTP server speaking SGLang's wire format (tests/policies/
fake_sglang.py): request shapes, response validation, retries and what is not retried."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Awaitable, Callable

import pytest

from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.sglang_client import (EndpointTimeout, EndpointUnavailable,
                                               MalformedResponse, RequestRejected, RetryPolicy,
                                               SGLangClient, WeightUpdateRefused, parse_endpoints)
from tests.policies.fake_sglang import FakeSGLang, score_logprob

FAST = RetryPolicy(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02, jitter_s=0.01)
PARAMS = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=8, seed=3)


def with_server(test: Callable[[FakeSGLang, SGLangClient], Awaitable[Any]], *,
                vocab_size: int | None = 1000, timeout_s: float = 10.0) -> Any:
    async def main() -> Any:
        server = await FakeSGLang(vocab_size=1000).start()
        client = SGLangClient(server.url, vocab_size=vocab_size, retry=FAST, timeout_s=timeout_s)
        try:
            return await test(server, client)
        finally:
            await client.aclose()
            await server.stop()
    return asyncio.run(main())


def test_generate_sends_sglang_native_request_and_returns_tokens_logprobs_and_provenance():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        gen = await client.generate([5, 6, 7], PARAMS, session="ep-1")
        (body,) = server.generate_bodies
        assert body["input_ids"] == [5, 6, 7]
        assert body["sampling_params"] == PARAMS.to_sglang()
        assert body["return_logprob"] is True and body["logprob_start_len"] == -1
        assert body["stream"] is False and isinstance(body["rid"], str) and body["rid"]
        assert gen.output_ids == (18, 19, 20)
        assert gen.logprobs == pytest.approx((-0.1, -0.2, -0.3))
        assert gen.finish_reason == "stop" and gen.prompt_tokens == 3
        assert gen.text == "t18 t19 t20"
        assert gen.endpoint == server.url and gen.weight_version == "v0"
        assert gen.latency_s > 0
        assert client.stats.as_dict() == {"calls": 1, "attempts": 1, "retries": 0,
                                          "failures": 0, "faults": {}}
    with_server(t)


def test_finish_reasons_length_and_stop_token():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        short = await client.generate([1], SamplingParams(max_new_tokens=2))
        assert short.finish_reason == "length" and len(short.output_ids) == 2
        stopped = await client.generate([1], SamplingParams(max_new_tokens=8, stop_token_ids=(2,)))
        assert stopped.output_ids == (1, 2) and stopped.finish_reason == "stop"
    with_server(t)


def test_score_starts_one_token_early_and_reads_the_target_rows():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        prompt, target = [11, 12, 13], [40, 41]
        scores = await client.score(prompt, target, session="ep-1")
        (body,) = server.generate_bodies
        assert body["input_ids"] == prompt + target
        assert body["sampling_params"]["max_new_tokens"] == 0
        assert body["return_logprob"] is True
        # SGLang leaves the first requested row unscored, so the request starts at the last
        # prompt token (see sglang_client's module doc).
        assert body["logprob_start_len"] == len(prompt) - 1
        assert scores == pytest.approx((score_logprob(3, 40), score_logprob(4, 41)))
        assert await client.score(prompt, []) == ()
        assert len(server.generate_bodies) == 1  # an empty target needs no request
        with pytest.raises(ValueError, match="at least one context token"):
            await client.score([], [1])
    with_server(t)


def test_5xx_is_retried_with_backoff_and_counted():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        server.faults = ["500", "503"]
        gen = await client.generate([1, 2], PARAMS)
        assert gen.output_ids
        assert len(server.generate_bodies) == 3
        # Each attempt carries its own request id (SGLang refuses a rid still in flight).
        assert len({b["rid"] for b in server.generate_bodies}) == 3
        assert client.stats.as_dict() == {"calls": 1, "attempts": 3, "retries": 2,
                                          "failures": 0, "faults": {"unavailable": 2}}
    with_server(t)


def test_5xx_until_retries_run_out_names_endpoint_status_and_message():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        server.faults = ["500"] * 3
        with pytest.raises(EndpointUnavailable) as info:
            await client.generate([1, 2], PARAMS)
        msg = str(info.value)
        assert server.url in msg and "HTTP 500" in msg and "boom 500" in msg
        assert info.value.retryable
        assert client.stats.retries == 2 and client.stats.failures == 1
    with_server(t)


def test_4xx_is_not_retried_and_carries_the_servers_message():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        server.faults = ["400"]
        with pytest.raises(RequestRejected) as info:
            await client.generate([1, 2], PARAMS)
        assert "longer than the model's context length" in str(info.value)
        assert server.url in str(info.value) and not info.value.retryable
        assert len(server.generate_bodies) == 1
        assert client.stats.retries == 0 and client.stats.faults == {"rejected": 1}
    with_server(t)


def test_timeout_is_retried():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        server.faults = ["slow"]
        gen = await client.generate([3], PARAMS)
        assert gen.output_ids == (3, 4, 5)
        assert client.stats.faults == {"timeout": 1} and client.stats.retries == 1
    with_server(t, timeout_s=0.3)


def test_timeouts_until_retries_run_out():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        server.faults = ["slow"] * 3
        with pytest.raises(EndpointTimeout, match="timed out after 0.3s"):
            await client.score([1, 2], [3])
    with_server(t, timeout_s=0.3)


@pytest.mark.parametrize("fault, problem", [
    ("malformed_json", "malformed JSON"),
    ("missing_meta", "no meta_info"),
    ("oov", "outside the vocabulary [0, 1000)"),
    ("count_mismatch", "2 output log-probs for 3 output ids"),
    ("wrong_rid", "answered request id 'someone-else'"),
])
def test_malformed_answers_are_endpoint_faults_retried_then_raised(fault, problem):
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        server.faults = [fault]
        assert (await client.generate([1, 2], PARAMS)).output_ids  # retried, then fine
        assert client.stats.faults == {"malformed": 1}
        server.faults = [fault] * 3
        with pytest.raises(MalformedResponse) as info:
            await client.generate([1, 2], PARAMS)
        assert problem in str(info.value) and server.url in str(info.value)
        assert info.value.retryable  # so the pool fails over
    with_server(t)


def test_out_of_vocab_output_passes_when_vocab_unknown():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        server.faults = ["oov"]
        gen = await client.generate([1, 2], PARAMS)
        assert gen.output_ids[-1] == 1005
    with_server(t, vocab_size=None)


def test_bad_input_ids_are_the_callers_error_and_never_sent():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        with pytest.raises(ValueError, match=r"outside \[0, 1000\)"):
            await client.generate([1, 5000], PARAMS)
        with pytest.raises(ValueError, match="at least one input token"):
            await client.generate([], PARAMS)
        with pytest.raises(TypeError, match="must be ints"):
            await client.score([1], [2.5])
        assert server.generate_bodies == []
    with_server(t)


def test_connection_refused_is_retried_then_raised():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        await server.stop()
        with pytest.raises(EndpointUnavailable) as info:
            await client.generate([1], PARAMS)
        assert server.url in str(info.value) and "POST /generate failed" in str(info.value)
        assert client.stats.attempts == 3 and client.stats.retries == 2
        assert client.stats.faults == {"unavailable": 3}
        assert not await client.health()
    with_server(t)


def test_health_and_model_info():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        assert await client.health()
        server.health_ok = False
        assert not await client.health()
        with pytest.raises(EndpointUnavailable, match="GET /health_generate answered HTTP 503"):
            await client.check_health()
        info = await client.model_info()
        assert info["model_path"] == "/models/fake-student" and info["weight_version"] == "v0"
    with_server(t)


def test_update_weights_from_disk_and_weight_version_in_generations():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        msg = await client.update_weights_from_disk("/ckpt/step_100", "step-100")
        assert server.weight_bodies == [{"model_path": "/ckpt/step_100",
                                         "weight_version": "step-100"}]
        assert "Succeeded" in msg
        assert (await client.model_info())["weight_version"] == "step-100"
        assert (await client.generate([1], PARAMS)).weight_version == "step-100"
    with_server(t)


def test_refused_weight_update_raises_with_sglangs_message_and_is_not_retried():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        server.refuse_weights = "Failed to get weights iterator: /ckpt/missing not found."
        with pytest.raises(WeightUpdateRefused) as info:
            await client.update_weights_from_disk("/ckpt/missing", "v9")
        msg = str(info.value)
        assert server.url in msg and "/ckpt/missing not found" in msg
        assert len(server.weight_bodies) == 1
    with_server(t)


def test_flush_cache():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        await client.flush_cache()
        server.flush_busy = True
        with pytest.raises(RequestRejected, match="POST /flush_cache"):
            await client.flush_cache()
    with_server(t)


def test_score_rejects_misaligned_rows():
    async def t(server: FakeSGLang, client: SGLangClient) -> None:
        # A server that ignored logprob_start_len would return rows for the whole sequence.
        original = client._parse_scores

        def whole_sequence(meta, target, where):
            meta = dict(meta, input_token_logprobs=[[None, 1, None]] * 6)
            return original(meta, target, where)

        client._parse_scores = whole_sequence  # type: ignore[method-assign]
        with pytest.raises(MalformedResponse, match="6 input log-probs for a 2-token target"):
            await client.score([1, 2, 3], [4, 5])
    with_server(t)


def test_null_target_logprob_reads_as_minus_infinity():
    client = SGLangClient("http://127.0.0.1:1", vocab_size=10)
    rows = {"input_token_logprobs": [[None, 3, None], [-0.5, 4, None], [None, 5, None]]}
    assert client._parse_scores(rows, [4, 5], "w") == (-0.5, -math.inf)


def test_constructor_and_endpoint_list_validation():
    with pytest.raises(ValueError, match="http"):
        SGLangClient("localhost:30000")
    assert parse_endpoints("http://a:1, http://b:2,") == ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError, match="no endpoints"):
        parse_endpoints(" , ")
