"""OpenAIChatClient against a real HTTP server speaking `/v1/chat/completions`: the request it
sends, what it returns, and the same retry policy as the SGLang client (429 / 5xx / timeouts /
malformed answers retried, other 4xx raised at once)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest
from aiohttp import web

from dagger_jax.policies.openai_client import OpenAIChatClient
from dagger_jax.policies.sglang_client import (EndpointTimeout, EndpointUnavailable,
                                               MalformedResponse, RequestRejected, RetryPolicy)

FAST = RetryPolicy(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02, jitter_s=0.01)
MESSAGES = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "ls"}]


class FakeChatAPI:
    """Faults are consumed one per request: "429", "500", "401", "malformed", "no_content",
    "slow" (hangs until stop())."""

    def __init__(self) -> None:
        self.faults: list[str] = []
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    async def start(self) -> "FakeChatAPI":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        fault = self.faults.pop(0) if self.faults else None
        if fault == "429":
            return web.json_response({"error": {"message": "Rate limit reached"}}, status=429)
        if fault == "500":
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        if fault == "401":
            return web.json_response({"error": {"message": "Incorrect API key provided"}},
                                     status=401)
        if fault == "malformed":
            return web.Response(text="<html>gateway</html>", content_type="text/html")
        if fault == "slow":
            await self._release.wait()
        message: dict[str, Any] = {"role": "assistant", "content": "I will run ls."}
        if fault == "no_content":
            message = {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"] + "-0613",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})


def with_api(test: Callable[[FakeChatAPI, OpenAIChatClient], Awaitable[Any]], *,
             suffix: str = "", api_key: str | None = "sk-test", timeout_s: float = 10.0) -> Any:
    async def main() -> Any:
        api = await FakeChatAPI().start()
        client = OpenAIChatClient(api.url + suffix, "teacher-model", api_key=api_key, retry=FAST,
                                  timeout_s=timeout_s)
        try:
            return await test(api, client)
        finally:
            await client.aclose()
            await api.stop()
    return asyncio.run(main())


def test_chat_sends_openai_request_and_returns_text_and_latency():
    async def t(api: FakeChatAPI, client: OpenAIChatClient) -> None:
        out = await client.chat(MESSAGES, temperature=0.2, top_p=0.95, max_tokens=64,
                                stop=["</function>"], seed=7)
        ((headers, body),) = api.requests
        assert headers["Authorization"] == "Bearer sk-test"
        assert body == {"model": "teacher-model", "messages": MESSAGES, "temperature": 0.2,
                        "top_p": 0.95, "max_tokens": 64, "n": 1, "stream": False,
                        "stop": ["</function>"], "seed": 7}
        assert out.text == "I will run ls." and out.finish_reason == "stop"
        assert out.model == "teacher-model-0613" and out.endpoint == api.url
        assert (out.prompt_tokens, out.completion_tokens) == (12, 5)
        assert out.latency_s > 0
    with_api(t)


def test_base_url_with_v1_suffix_and_no_key():
    async def t(api: FakeChatAPI, client: OpenAIChatClient) -> None:
        assert (await client.chat(MESSAGES)).text
        ((headers, body),) = api.requests
        assert "Authorization" not in headers and "stop" not in body and "seed" not in body
    with_api(t, suffix="/v1/", api_key=None)


def test_rate_limits_server_errors_and_malformed_answers_are_retried():
    async def t(api: FakeChatAPI, client: OpenAIChatClient) -> None:
        api.faults = ["429", "500"]
        assert (await client.chat(MESSAGES)).text
        api.faults = ["malformed"]
        assert (await client.chat(MESSAGES)).text
        assert client.stats.retries == 3 and len(api.requests) == 5
        assert client.stats.faults == {"unavailable": 2, "malformed": 1}
    with_api(t)


def test_retries_run_out_with_a_clear_error():
    async def t(api: FakeChatAPI, client: OpenAIChatClient) -> None:
        api.faults = ["429"] * 3
        with pytest.raises(EndpointUnavailable, match="HTTP 429: Rate limit reached") as info:
            await client.chat(MESSAGES)
        assert api.url in str(info.value)
        api.faults = ["no_content"] * 3
        with pytest.raises(MalformedResponse, match="content is NoneType"):
            await client.chat(MESSAGES)
        assert client.stats.failures == 2
    with_api(t)


def test_auth_error_is_not_retried():
    async def t(api: FakeChatAPI, client: OpenAIChatClient) -> None:
        api.faults = ["401"]
        with pytest.raises(RequestRejected, match=r"HTTP 401\): Incorrect API key"):
            await client.chat(MESSAGES)
        assert len(api.requests) == 1 and client.stats.retries == 0
    with_api(t)


def test_timeout_is_retried():
    async def t(api: FakeChatAPI, client: OpenAIChatClient) -> None:
        api.faults = ["slow", "slow", "slow"]
        with pytest.raises(EndpointTimeout, match="timed out after 0.3s"):
            await client.chat(MESSAGES)
        assert client.stats.faults == {"timeout": 3}
    with_api(t, timeout_s=0.3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="model"):
        OpenAIChatClient("http://127.0.0.1:1", "")

    async def t() -> None:
        client = OpenAIChatClient("http://127.0.0.1:1", "m")
        with pytest.raises(ValueError, match="role"):
            await client.chat([{"content": "hi"}])
        with pytest.raises(ValueError, match="at least one message"):
            await client.chat([])
    asyncio.run(t())
