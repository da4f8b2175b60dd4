"""A client for API teachers behind an OpenAI-compatible `/v1/chat/completions`.

Messages in, assistant text out. Such APIs do not return the student's token ids (and their
tokenizer is not the student's), so a caller that needs ids re-tokenises `ChatCompletion.text`
with the student tokenizer and chat template, as DESIGN.md prescribes for teacher labels.

Same fault policy as the SGLang client (sglang_client.py): connection errors, timeouts, 5xx,
408 and 429 (rate limits) are retried with exponential backoff and jitter; other 4xx raise
RequestRejected at once with the API's message; a malformed 200 (bad JSON, no choices, no text)
is retried, then raised as MalformedResponse. Errors name the endpoint.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

from dagger_jax.policies.sglang_client import HTTPEndpoint, MalformedResponse, RetryPolicy


@dataclasses.dataclass(frozen=True)
class ChatCompletion:
    text: str
    finish_reason: str | None     # "stop", "length", ... as the API says
    latency_s: float              # the whole call, retries included
    endpoint: str
    model: str                    # the model the API says answered
    prompt_tokens: int | None = None      # the API's own tokenizer: not the student's
    completion_tokens: int | None = None


class OpenAIChatClient(HTTPEndpoint):
    """`base_url` is the server root (`http://host:port`) or its `/v1` prefix
    (`https://api.example.com/v1`); either way requests go to `.../v1/chat/completions`."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 timeout_s: float = 600.0, retry: RetryPolicy | None = None,
                 extra_body: Mapping[str, Any] | None = None, max_connections: int = 64):
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        super().__init__(root, timeout_s=timeout_s, retry=retry, api_key=api_key,
                         max_connections=max_connections)
        if not model:
            raise ValueError("OpenAIChatClient needs a model name")
        self.model = model
        self.name = f"{model}@{self.base_url}"
        # Provider-specific request fields (e.g. {"chat_template_kwargs": {...}}).
        self.extra_body = dict(extra_body or {})

    async def chat(self, messages: Sequence[Mapping[str, Any]], *, temperature: float = 0.0,
                   top_p: float = 1.0, max_tokens: int = 1024, stop: Sequence[str] = (),
                   seed: int | None = None) -> ChatCompletion:
        _check_messages(messages)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        payload: dict[str, Any] = {
            **self.extra_body, "model": self.model, "messages": [dict(m) for m in messages],
            "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "n": 1,
            "stream": False}
        if stop:
            payload["stop"] = list(stop)
        if seed is not None:
            payload["seed"] = seed
        where = "POST /v1/chat/completions"

        async def attempt() -> tuple[dict[str, Any], str, str | None]:
            _, body = await self._send("POST", "/v1/chat/completions", payload, self.timeout_s)
            data = self._json_object(body, where)
            text, finish = self._parse(data, where)
            return data, text, finish

        start = time.perf_counter()
        data, text, finish = await self._call(attempt)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return ChatCompletion(
            text=text, finish_reason=finish, latency_s=time.perf_counter() - start,
            endpoint=self.base_url, model=str(data.get("model") or self.model),
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")))

    def _parse(self, data: dict[str, Any], where: str) -> tuple[str, str | None]:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise MalformedResponse(self.base_url, f"{where}: no choices in the response "
                                    f"(keys {sorted(data)})")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedResponse(self.base_url, f"{where}: choices[0] has no message object")
        content = message.get("content")
        if not isinstance(content, str):
            # e.g. an API that answered with tool_calls only: our agents act in text.
            raise MalformedResponse(self.base_url, f"{where}: choices[0].message.content is "
                                    f"{type(content).__name__}, expected text "
                                    f"(message keys {sorted(message)})")
        finish = choice.get("finish_reason")
        return content, None if finish is None else str(finish)


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    if not messages:
        raise ValueError("chat needs at least one message")
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{k}] must be a mapping with 'role' and 'content', "
                             f"got {m!r}")


def _int_or_none(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None
