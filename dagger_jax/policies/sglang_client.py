"""A token-in / token-out client for one SGLang server (its native HTTP API).

What it speaks (checked against sgl-project/sglang: `managers/io_struct.py`,
`entrypoints/http_server.py`, `managers/tokenizer_manager.py`, `managers/schedule_batch.py`,
`managers/scheduler_output_processor_mixin.py`, `sampling/sampling_params.py`):

- `POST /generate` with `{"input_ids", "sampling_params", "return_logprob", "logprob_start_len",
  "rid", "stream": false}` answers `{"text", "output_ids", "meta_info": {"id", "finish_reason",
  "prompt_tokens", "completion_tokens", "weight_version", "output_token_logprobs",
  "input_token_logprobs", ...}}`. Each log-prob entry is `[logprob, token_id, text_or_null]`.
  `finish_reason` is `{"type": "stop", "matched": ...}`, `{"type": "length", "length": n}` or
  `{"type": "abort", "message": ...}`. A rejected request is HTTP 400 `{"error": {"message"}}`.
- Prompt scoring: `max_new_tokens: 0` plus `logprob_start_len = s` returns
  `input_token_logprobs` for positions `s .. len(input_ids) - 1`, and SGLang leaves the FIRST of
  those rows unscored (`None`): it only computes the logits of positions >= s, and the token at
  position s is predicted by position s - 1. So to score a target that follows a prompt we start
  one token early (`s = len(prompt) - 1`) and read the last `len(target)` rows.
- `GET /health_generate` runs a one-token generation (200, or 503 while starting / wedged);
  `GET /get_model_info`; `POST /update_weights_from_disk` `{"model_path", "weight_version"}` ->
  `{"success", "message"}` (HTTP 400 with success false when the load fails);
  `POST /flush_cache` (plain text; 400 when requests are still running).

Fault policy. Connection errors, timeouts, HTTP 5xx (and 408 / 429, which mean "try again") are
retried with exponential backoff and jitter. Any other 4xx is the caller's bug or a request the
server cannot serve: raised at once, never retried. A 200 whose body is malformed (bad JSON,
missing fields, a log-prob count that does not match the output, token ids outside the
vocabulary, an answer to another request id) is a fault of the endpoint, not of the request:
it is retried here and, once retries are spent, raised as retryable so the endpoint pool marks
the endpoint down and fails over. Every error names the endpoint and the problem.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from typing import Any, Awaitable, Callable, Sequence

import aiohttp
import tenacity

from dagger_jax.policies.generation import FINISH_REASONS, Generation, SamplingParams

# A log-prob a hair above 0 is float noise; anything clearly positive is not a log-probability.
_LOGPROB_SLACK = 1e-3
# HTTP statuses that say "not now" rather than "never": retry them like a 5xx.
_RETRYABLE_4XX = (408, 429)


class EndpointError(RuntimeError):
    """A call to one endpoint failed. `retryable`: whether another attempt, here or on another
    endpoint, can help (False for a request the server rejected as invalid)."""

    retryable = True
    kind = "error"

    def __init__(self, endpoint: str, problem: str, *, status: int | None = None):
        self.endpoint = endpoint
        self.problem = problem
        self.status = status
        super().__init__(f"{endpoint}: {problem}")


class EndpointUnavailable(EndpointError):
    """Connection refused / reset, a timeout, or HTTP 5xx (408 / 429 too)."""

    kind = "unavailable"


class EndpointTimeout(EndpointUnavailable):
    kind = "timeout"


class MalformedResponse(EndpointError):
    """HTTP 200 with a body we cannot trust: a fault of the endpoint."""

    kind = "malformed"


class RequestRejected(EndpointError):
    """HTTP 4xx: the server refuses this request; sending it again would not help."""

    retryable = False
    kind = "rejected"


class WeightUpdateRefused(EndpointError):
    """`/update_weights_from_disk` answered success: false (SGLang's message is kept)."""

    retryable = False
    kind = "weights_refused"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Attempts per call and the backoff between them: min(max, initial * 2**n) + U(0, jitter)."""

    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    jitter_s: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")


@dataclasses.dataclass
class ClientStats:
    """Counters of one client. `faults` counts failed attempts by kind (timeout, unavailable,
    malformed, rejected, ...); `retries` the attempts made again after a fault; `failures` the
    calls that raised in the end."""

    calls: int = 0
    attempts: int = 0
    retries: int = 0
    failures: int = 0
    faults: dict[str, int] = dataclasses.field(default_factory=dict)

    def count_fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "attempts": self.attempts, "retries": self.retries,
                "failures": self.failures, "faults": dict(self.faults)}


def _server_message(body: bytes) -> str:
    """The human part of an error body: SGLang's `{"error": {"message"}}`, FastAPI's
    `{"detail"}` / `{"message"}`, or the raw text, shortened."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif isinstance(err, str) and err:
            text = err
        elif data.get("message"):
            text = str(data["message"])
        elif data.get("detail"):
            text = str(data["detail"])
    if len(text) > 500:
        text = text[:500] + "..."
    return text or "(empty body)"


class HTTPEndpoint:
    """One base URL, one aiohttp session, and the retry policy above. Shared by the SGLang and
    the OpenAI-compatible clients so both fail the same way."""

    def __init__(self, base_url: str, *, timeout_s: float = 300.0, retry: RetryPolicy | None = None,
                 api_key: str | None = None, max_connections: int = 256):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retry = retry or RetryPolicy()
        self.stats = ClientStats()
        self._api_key = api_key
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def _get_session(self) -> aiohttp.ClientSession:
        # A session belongs to the loop that made it; a client reused from another loop (a
        # second asyncio.run) gets a fresh one instead of failing inside aiohttp.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(limit=self._max_connections))
            self._session_loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            if self._session_loop is asyncio.get_running_loop():
                await self._session.close()
        self._session = None
        self._session_loop = None

    async def _send(self, method: str, path: str, payload: Any, timeout_s: float,
                    accept: tuple[int, ...] = ()) -> tuple[int, bytes]:
        """One HTTP request. Returns (status, body) for 2xx and for statuses in `accept`;
        raises EndpointUnavailable / EndpointTimeout / RequestRejected otherwise."""
        where = f"{method} {path}"
        self.stats.attempts += 1
        try:
            async with self._get_session().request(
                    method, self.base_url + path, json=payload,
                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                body = await resp.read()
                status = resp.status
        except asyncio.TimeoutError:  # also aiohttp's ServerTimeoutError
            raise EndpointTimeout(self.base_url,
                                  f"{where} timed out after {timeout_s:g}s") from None
        except aiohttp.ClientError as e:
            raise EndpointUnavailable(
                self.base_url, f"{where} failed: {type(e).__name__}: {e}") from None
        if 200 <= status < 300 or status in accept:
            return status, body
        message = _server_message(body)
        if status >= 500 or status in _RETRYABLE_4XX:
            raise EndpointUnavailable(self.base_url, f"{where} answered HTTP {status}: {message}",
                                      status=status)
        raise RequestRejected(self.base_url, f"{where} rejected the request (HTTP {status}): "
                              f"{message}", status=status)

    def _json_object(self, body: bytes, where: str) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError as e:
            snippet = body[:120].decode("utf-8", "replace")
            raise MalformedResponse(self.base_url, f"{where} returned malformed JSON ({e}): "
                                    f"{snippet!r}") from None
        if not isinstance(data, dict):
            raise MalformedResponse(self.base_url, f"{where} returned JSON {type(data).__name__}, "
                                    "expected an object")
        return data

    async def _call(self, attempt: Callable[[], Awaitable[Any]], *, retry: bool = True) -> Any:
        """Runs `attempt` under the retry policy; counts calls, retries, faults and failures."""
        self.stats.calls += 1
        policy = self.retry

        def count_retry(state: tenacity.RetryCallState) -> None:
            self.stats.retries += 1

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.max_attempts if retry else 1),
            # Spelled as a sum: wait_exponential_jitter renamed its arguments across tenacity 8/9.
            wait=tenacity.wait_exponential(multiplier=policy.backoff_initial_s,
                                           max=policy.backoff_max_s)
            + tenacity.wait_random(0, policy.jitter_s),
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, EndpointError) and e.retryable),
            before_sleep=count_retry,
            reraise=True,
        )

        async def counted() -> Any:
            try:
                return await attempt()
            except EndpointError as e:
                self.stats.count_fault(e.kind)
                raise

        try:
            return await retrying(counted)
        except EndpointError:
            self.stats.failures += 1
            raise


def _as_int_ids(ids: Sequence[int], what: str) -> list[int]:
    out = []
    for i in ids:
        if isinstance(i, bool) or not hasattr(i, "__index__"):  # ints, numpy ints
            raise TypeError(f"{what}: token ids must be ints, got {type(i).__name__}")
        out.append(int(i))
    return out


class SGLangClient(HTTPEndpoint):
    """TokenGenerator over one SGLang server. `vocab_size` (when given) bounds the token ids it
    accepts from callers and from the server. Use one client from one event loop; close it with
    `aclose()` (or `async with`)."""

    def __init__(self, base_url: str, *, vocab_size: int | None = None, timeout_s: float = 300.0,
                 health_timeout_s: float = 30.0, weights_timeout_s: float = 900.0,
                 retry: RetryPolicy | None = None, api_key: str | None = None,
                 name: str | None = None, max_connections: int = 256):
        super().__init__(base_url, timeout_s=timeout_s, retry=retry, api_key=api_key,
                         max_connections=max_connections)
        if vocab_size is not None and vocab_size <= 0:
            raise ValueError(f"vocab_size must be > 0, got {vocab_size}")
        self.vocab_size = vocab_size
        # SGLang's own health check waits for one generated token and sleeps >= 1 s doing it.
        self.health_timeout_s = float(health_timeout_s)
        # Loading a checkpoint from disk takes minutes for multi-GB models.
        self.weights_timeout_s = float(weights_timeout_s)
        self.name = name or self.base_url

    # -- validation helpers ----------------------------------------------------------------

    def _check_request_ids(self, ids: Sequence[int], what: str) -> list[int]:
        out = _as_int_ids(ids, what)
        bad = [i for i in out if i < 0 or (self.vocab_size is not None and i >= self.vocab_size)]
        if bad:
            raise ValueError(f"{self.name}: {what} holds token ids outside [0, "
                             f"{self.vocab_size}): {bad[:5]}")
        return out

    def _bad(self, problem: str) -> MalformedResponse:
        return MalformedResponse(self.base_url, problem)

    def _token_id(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(f"{where}: token id {value!r} is not an integer")
        if value < 0 or (self.vocab_size is not None and value >= self.vocab_size):
            raise self._bad(f"{where}: token id {value} is outside the vocabulary "
                            f"[0, {self.vocab_size})")
        return value

    def _logprob(self, value: Any, where: str, *, none_is_neg_inf: bool = False) -> float:
        if value is None and none_is_neg_inf:
            # orjson writes -inf as null: a token the model gives zero probability.
            return -math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(f"{where}: log-prob {value!r} is not a number")
        value = float(value)
        if math.isnan(value) or value > _LOGPROB_SLACK:
            raise self._bad(f"{where}: {value} is not a log-probability")
        return min(value, 0.0)

    def _meta(self, data: dict[str, Any], where: str, rid: str) -> dict[str, Any]:
        meta = data.get("meta_info")
        if not isinstance(meta, dict):
            raise self._bad(f"{where}: response has no meta_info object")
        got = meta.get("id")
        if got is not None and got != rid:
            # A proxy that mixed up answers would otherwise hand us another episode's tokens.
            raise self._bad(f"{where}: answered request id {got!r}, expected {rid!r}")
        return meta

    def _finish_reason(self, meta: dict[str, Any], where: str) -> str:
        finish = meta.get("finish_reason")
        kind = finish.get("type") if isinstance(finish, dict) else finish
        if kind not in FINISH_REASONS:
            raise self._bad(f"{where}: meta_info.finish_reason {finish!r} is not one of "
                            f"{FINISH_REASONS}")
        return kind

    def _entries(self, meta: dict[str, Any], key: str, where: str) -> list[Any]:
        entries = meta.get(key)
        if not isinstance(entries, list):
            raise self._bad(f"{where}: meta_info.{key} is missing (or not a list); "
                            "was return_logprob honoured?")
        for k, entry in enumerate(entries):
            if not isinstance(entry, (list, tuple)) or len(entry) < 2:
                raise self._bad(f"{where}: meta_info.{key}[{k}] = {entry!r} is not "
                                "[logprob, token_id, ...]")
        return entries

    # -- TokenGenerator --------------------------------------------------------------------

    async def generate(self, input_ids: Sequence[int], params: SamplingParams,
                       session: str | None = None) -> Generation:
        """Samples a continuation. `session` is accepted for the TokenGenerator protocol and not
        sent: one server needs no routing key. Latency is the whole call, retries included."""
        ids = self._check_request_ids(input_ids, "input_ids")
        if not ids:
            raise ValueError(f"{self.name}: generate needs at least one input token")
        base = {"input_ids": ids, "sampling_params": params.to_sglang(), "return_logprob": True,
                "logprob_start_len": -1, "stream": False}
        where = "POST /generate"

        async def attempt() -> Generation:
            rid = uuid.uuid4().hex  # fresh per attempt: SGLang refuses a rid still in flight
            _, body = await self._send("POST", "/generate", {**base, "rid": rid}, self.timeout_s)
            return self._parse_generation(self._json_object(body, where), ids, params, rid, where)

        start = time.perf_counter()
        gen = await self._call(attempt)
        return dataclasses.replace(gen, latency_s=time.perf_counter() - start)

    def _parse_generation(self, data: dict[str, Any], ids: list[int], params: SamplingParams,
                          rid: str, where: str) -> Generation:
        meta = self._meta(data, where, rid)
        finish = self._finish_reason(meta, where)
        entries = self._entries(meta, "output_token_logprobs", where)
        out = data.get("output_ids")
        if out is None:
            # Older SGLang returns output_ids only with skip_tokenizer_init; the log-prob rows
            # carry the same ids.
            out = [entry[1] for entry in entries]
        if not isinstance(out, list):
            raise self._bad(f"{where}: output_ids is {type(out).__name__}, expected a list")
        out_ids = [self._token_id(t, f"{where} output_ids[{k}]") for k, t in enumerate(out)]
        if len(entries) != len(out_ids):
            raise self._bad(f"{where}: {len(entries)} output log-probs for {len(out_ids)} "
                            "output ids")
        if len(out_ids) > params.max_new_tokens:
            raise self._bad(f"{where}: {len(out_ids)} tokens for max_new_tokens "
                            f"{params.max_new_tokens}")
        logprobs = []
        for k, (entry, tok) in enumerate(zip(entries, out_ids)):
            if entry[1] != tok:
                raise self._bad(f"{where}: output_token_logprobs[{k}] is for token {entry[1]!r}, "
                                f"output_ids[{k}] is {tok}")
            logprobs.append(self._logprob(entry[0], f"{where} output_token_logprobs[{k}]"))
        prompt_tokens = meta.get("prompt_tokens", len(ids))
        if prompt_tokens != len(ids):
            raise self._bad(f"{where}: prompt_tokens {prompt_tokens!r} for {len(ids)} input ids")
        version = meta.get("weight_version")
        text = data.get("text")
        return Generation(output_ids=tuple(out_ids), logprobs=tuple(logprobs),
                          finish_reason=finish, prompt_tokens=len(ids),
                          text=text if isinstance(text, str) else "",
                          weight_version=None if version is None else str(version),
                          endpoint=self.base_url)

    async def score(self, input_ids: Sequence[int], target_ids: Sequence[int],
                    session: str | None = None) -> tuple[float, ...]:
        """log p(target[i] | input_ids + target[:i]) for each i, by a prefill-only request.
        A value of -inf means the server reported the token as impossible."""
        prompt = self._check_request_ids(input_ids, "input_ids")
        target = self._check_request_ids(target_ids, "target_ids")
        if not target:
            return ()
        if not prompt:
            raise ValueError(f"{self.name}: score needs at least one context token (nothing "
                             "predicts the first token of a sequence)")
        # One row early: SGLang leaves the first requested row unscored (see module doc).
        base = {"input_ids": prompt + target,
                "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                "return_logprob": True, "logprob_start_len": len(prompt) - 1, "stream": False}
        where = "POST /generate (score)"

        async def attempt() -> tuple[float, ...]:
            rid = uuid.uuid4().hex
            _, body = await self._send("POST", "/generate", {**base, "rid": rid}, self.timeout_s)
            data = self._json_object(body, where)
            return self._parse_scores(self._meta(data, where, rid), target, where)

        return await self._call(attempt)

    def _parse_scores(self, meta: dict[str, Any], target: list[int], where: str
                      ) -> tuple[float, ...]:
        rows = self._entries(meta, "input_token_logprobs", where)
        # len(target) + 1 from SGLang (the leading unscored row); len(target) from a server that
        # starts its rows at the first target token. Anything else is misaligned.
        if len(rows) not in (len(target), len(target) + 1):
            raise self._bad(f"{where}: {len(rows)} input log-probs for a {len(target)}-token "
                            f"target (expected {len(target) + 1})")
        out = []
        for k, (row, tok) in enumerate(zip(rows[len(rows) - len(target):], target)):
            # SGLang reports ids >= its vocab_size - 1 as 0 in these rows (an image-token hash
            # guard), so 0 is the one id we accept in place of the target's.
            if row[1] != tok and row[1] != 0:
                raise self._bad(f"{where}: input log-prob row for target[{k}] is for token "
                                f"{row[1]!r}, expected {tok}")
            out.append(self._logprob(row[0], f"{where} target[{k}]", none_is_neg_inf=True))
        return tuple(out)

    # -- server management -----------------------------------------------------------------

    async def check_health(self) -> None:
        """Raises EndpointError unless `/health_generate` answers 200 (one try, no retries:
        the caller polls)."""
        await self._call(lambda: self._send("GET", "/health_generate", None,
                                            self.health_timeout_s), retry=False)

    async def health(self) -> bool:
        try:
            await self.check_health()
        except EndpointError:
            return False
        return True

    async def model_info(self) -> dict[str, Any]:
        """`/get_model_info`: model_path, tokenizer_path, is_generation, weight_version, ..."""
        async def attempt() -> dict[str, Any]:
            _, body = await self._send("GET", "/get_model_info", None, self.timeout_s)
            data = self._json_object(body, "GET /get_model_info")
            if "model_path" not in data:
                raise self._bad(f"GET /get_model_info: no model_path in {sorted(data)}")
            return data

        return await self._call(attempt)

    async def update_weights_from_disk(self, path: str, weight_version: str | None = None) -> str:
        """Asks the server to load new weights from `path` (a directory on the server's disk);
        returns SGLang's message. Raises WeightUpdateRefused with that message when the server
        answers success: false."""
        payload: dict[str, Any] = {"model_path": str(path)}
        if weight_version is not None:
            payload["weight_version"] = str(weight_version)
        where = "POST /update_weights_from_disk"

        async def attempt() -> str:
            # SGLang answers a failed load with HTTP 400 and the JSON verdict: read it.
            _, body = await self._send("POST", "/update_weights_from_disk", payload,
                                       self.weights_timeout_s, accept=(400,))
            data = self._json_object(body, where)
            if not isinstance(data.get("success"), bool):
                raise self._bad(f"{where}: no boolean 'success' in {sorted(data)}")
            message = str(data.get("message", ""))
            if not data["success"]:
                raise WeightUpdateRefused(self.base_url, f"refused to load weights from "
                                          f"{path!r}: {message or '(no message)'}")
            return message

        return await self._call(attempt)

    async def flush_cache(self) -> None:
        """Drops the server's prefix cache. SGLang skips (HTTP 400) while requests are running;
        that raises RequestRejected."""
        await self._call(lambda: self._send("POST", "/flush_cache", None, self.timeout_s))

    def stats_dict(self) -> dict[str, Any]:
        return {"endpoint": self.base_url, **self.stats.as_dict()}


def parse_endpoints(spec: str | Sequence[str]) -> list[str]:
    """'http://a:1,http://b:2' (as launch/sglang_fleet.sh prints it) or a list -> URLs."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    urls = [u.strip() for u in items if u and u.strip()]
    if not urls:
        raise ValueError(f"no endpoints in {spec!r}")
    return urls
