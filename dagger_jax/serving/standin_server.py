"""A stand-in for an SGLang server: a LocalSampler behind the part of SGLang's native HTTP API
that our client uses, with SGLang's JSON shapes, so client, pool and rollout code run
unchanged against it in tests and on one machine.

Endpoints: POST /generate, GET /health, GET /health_generate, GET /get_model_info,
GET /get_weight_version, POST /update_weights_from_disk, GET|POST /flush_cache.

Shapes follow sglang/srt (entrypoints/http_server.py, managers/io_struct.py,
managers/tokenizer_manager.py, the scheduler's logprob post-processing):
- finish_reason: {"type": "stop", "matched": id | str} or {"type": "length", "length": max_new}.
- output_token_logprobs / input_token_logprobs: [logprob, token_id, text | null] triples.
- input_token_logprobs covers input positions logprob_start_len .. end, and its first entry's
  logprob is always null (SGLang pads the first one), so scoring targets t_1..t_m after a
  context c uses input_ids = c + t, logprob_start_len = len(c) - 1, max_new_tokens = 0, and
  reads entries [1:].
- errors from /generate: HTTP 400 {"error": {"message": ...}}.
- update_weights_from_disk: {"success", "message", "num_paused_requests"}, HTTP 400 on failure.

Not SGLang: no `text` input (no server-side tokenization), no streaming; unknown request keys
are refused with 400 rather than ignored, so a client relying on an unsupported option learns
so at once. Log-probs are the model's untempered ones (see dagger_jax.models.sampling).

Fault injection for tests and benchmarks: `latency_s` (or env DAGGER_STANDIN_LATENCY_MS)
delays every /generate answer by that much.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from aiohttp import web

from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.local_sampler import LocalSampler

log = logging.getLogger(__name__)

LATENCY_ENV = "DAGGER_STANDIN_LATENCY_MS"
GENERATE_KEYS = frozenset({"input_ids", "sampling_params", "return_logprob", "logprob_start_len",
                           "rid", "stream", "return_text_in_logprobs", "text"})
# Keys of SGLang's UpdateWeightFromDiskReqInput that mean nothing here and are ignored.
_UPDATE_IGNORED = frozenset({"load_format", "abort_all_requests", "is_async", "torch_empty_cache",
                             "keep_pause", "recapture_cuda_graph", "token_step", "flush_cache",
                             "manifest", "rid"})
MAX_BODY_BYTES = 256 * 1024 * 1024
_SAMPLER = web.AppKey("sampler", LocalSampler)
_LATENCY = web.AppKey("latency_s", float)


class BadRequest(ValueError):
    """A request the server refuses (HTTP 400); the message names the field."""


@dataclasses.dataclass(frozen=True)
class _Item:
    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool
    logprob_start_len: int
    rid: str
    text_in_logprobs: bool


def make_app(sampler: LocalSampler, *, latency_s: float | None = None) -> web.Application:
    if latency_s is None:
        latency_s = float(os.environ.get(LATENCY_ENV, "0") or 0) / 1000.0
    if latency_s < 0:
        raise ValueError(f"latency must be >= 0, got {latency_s} s")
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[_SAMPLER], app[_LATENCY] = sampler, float(latency_s)
    app.router.add_post("/generate", _generate)
    app.router.add_get("/health", _health)
    app.router.add_get("/health_generate", _health_generate)
    app.router.add_get("/get_model_info", _model_info)
    app.router.add_get("/get_weight_version", _weight_version)
    app.router.add_post("/update_weights_from_disk", _update_weights)
    app.router.add_route("GET", "/flush_cache", _flush_cache)
    app.router.add_route("POST", "/flush_cache", _flush_cache)
    return app


async def start(sampler: LocalSampler, host: str = "127.0.0.1", port: int = 0, *,
                latency_s: float | None = None) -> tuple[web.AppRunner, str]:
    """Serves on host:port (0 = any free port); returns the runner (cleanup()) and the URL."""
    runner = web.AppRunner(make_app(sampler, latency_s=latency_s), access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        await runner.cleanup()
        raise OSError(f"stand-in server cannot listen on {host}:{port}: {e}") from e
    await web.SockSite(runner, sock).start()
    bound = sock.getsockname()[1]
    return runner, f"http://{f'[{host}]' if ':' in host else host}:{bound}"


# --- /generate ---------------------------------------------------------------------------------

def _error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


async def _json_object(request: web.Request) -> dict:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _token_list(value: Any, field: str, vocab: int) -> list[int]:
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{field} must be a non-empty list of token ids, got {value!r:.80}")
    for i, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int):
            raise BadRequest(f"{field}[{i}] = {t!r:.40} is not an integer token id")
        if not 0 <= t < vocab:
            raise BadRequest(f"{field}[{i}] = {t} is outside the vocabulary [0, {vocab})")
    return value


def _per_item(body: dict, key: str, n: int, batch: bool, default: Any) -> list[Any]:
    """SGLang lets a batch field be one value for all items or a list with one per item."""
    value = body.get(key)
    if value is None:
        return [default] * n
    if batch and isinstance(value, list):
        if len(value) != n:
            raise BadRequest(f"{key} has {len(value)} entries for a batch of {n} inputs")
        return value
    return [value] * n


def _parse_generate(body: dict, sampler: LocalSampler) -> tuple[list[_Item], bool]:
    unknown = sorted(set(body) - GENERATE_KEYS)
    if unknown:
        raise BadRequest(f"unsupported request fields {unknown} (the stand-in server supports "
                         f"{sorted(GENERATE_KEYS - {'text'})})")
    if body.get("text") is not None:
        raise BadRequest("text: not supported by the stand-in server (no server-side "
                         "tokenization); send input_ids")
    if body.get("stream"):
        raise BadRequest("stream: streaming is not supported by the stand-in server")
    if "input_ids" not in body:
        raise BadRequest("input_ids: missing")
    raw_ids, vocab = body["input_ids"], sampler.config.vocab_size
    batch = isinstance(raw_ids, list) and bool(raw_ids) and isinstance(raw_ids[0], list)
    inputs = ([_token_list(ids, f"input_ids[{i}]", vocab) for i, ids in enumerate(raw_ids)]
              if batch else [_token_list(raw_ids, "input_ids", vocab)])
    n = len(inputs)
    params = _per_item(body, "sampling_params", n, batch, {})
    logprob = _per_item(body, "return_logprob", n, batch, False)
    starts = _per_item(body, "logprob_start_len", n, batch, -1)
    rid = body.get("rid")
    if rid is None:
        rids = [uuid.uuid4().hex for _ in range(n)]
    elif isinstance(rid, list) and batch:
        rids = [str(r) for r in _per_item(body, "rid", n, batch, None)]
    elif isinstance(rid, str):
        rids = [f"{rid}_{i}" for i in range(n)] if batch else [rid]
    else:
        raise BadRequest(f"rid must be a string (or a list of strings for a batch), got {rid!r:.40}")
    text_in_logprobs = body.get("return_text_in_logprobs", False)
    if not isinstance(text_in_logprobs, bool):
        raise BadRequest("return_text_in_logprobs must be a boolean")
    if text_in_logprobs and not sampler.has_tokenizer:
        raise BadRequest("return_text_in_logprobs: this server has no tokenizer")

    items = []
    for i in range(n):
        where = f"[{i}]" if batch else ""
        try:
            sp = SamplingParams.from_sglang(params[i], where=f"sampling_params{where}")
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if not isinstance(logprob[i], bool):
            raise BadRequest(f"return_logprob{where} must be a boolean, got {logprob[i]!r:.40}")
        start = starts[i]
        if isinstance(start, bool) or not isinstance(start, int):
            raise BadRequest(f"logprob_start_len{where} must be an integer, got {start!r:.40}")
        if start >= len(inputs[i]):
            raise BadRequest(f"logprob_start_len{where} = {start} must be less than the input "
                             f"length {len(inputs[i])}")
        items.append(_Item(inputs[i], sp, logprob[i], start, rids[i], text_in_logprobs))
    return items, batch


def _triples(sampler: LocalSampler, logprobs: list, ids: list[int], with_text: bool) -> list[list]:
    texts = [sampler.decode([t]) for t in ids] if with_text else [None] * len(ids)
    return [[lp, t, text] for lp, t, text in zip(logprobs, ids, texts)]


async def _one(sampler: LocalSampler, item: _Item) -> dict:
    ids, start = item.input_ids, item.logprob_start_len
    want_input = item.return_logprob and start >= 0
    # Prompt scoring and generation are separate batches in the sampler; run them together.
    sampled, prompt_lps = await asyncio.gather(
        sampler.sample(ids, item.params),
        sampler.score(ids[:start + 1], ids[start + 1:]) if want_input
        else asyncio.sleep(0, ()))  # nothing to score: an awaitable that gives ()
    gen = sampled.generation
    if gen.finish_reason == "stop":
        finish = {"type": "stop", "matched": sampled.matched}
    else:
        finish = {"type": "length", "length": sampled.max_new_tokens}
    meta: dict[str, Any] = {"id": item.rid, "finish_reason": finish,
                            "prompt_tokens": gen.prompt_tokens,
                            "weight_version": gen.weight_version}
    if item.return_logprob:
        meta["input_token_logprobs"] = (
            _triples(sampler, [None, *prompt_lps], ids[start:], item.text_in_logprobs)
            if want_input else [])
        meta["output_token_logprobs"] = _triples(sampler, list(gen.logprobs), list(gen.output_ids),
                                                 item.text_in_logprobs)
    meta.update({"completion_tokens": len(gen.output_ids), "cached_tokens": 0,
                 "e2e_latency": gen.latency_s})
    return {"text": gen.text, "output_ids": list(gen.output_ids), "meta_info": meta}


async def _generate(request: web.Request) -> web.Response:
    sampler = request.app[_SAMPLER]
    started = time.monotonic()
    try:
        items, batch = _parse_generate(await _json_object(request), sampler)
        if request.app[_LATENCY]:
            await asyncio.sleep(request.app[_LATENCY])
        results = await asyncio.gather(*(_one(sampler, item) for item in items))
    except ValueError as e:  # BadRequest, and the sampler's own checks (e.g. context length)
        return _error(str(e))
    except Exception as e:  # noqa: BLE001 - a server answers 500 and keeps serving
        log.exception("/generate failed")
        return _error(f"internal error: {type(e).__name__}: {e}", status=500)
    for r in results:
        r["meta_info"]["e2e_latency"] = time.monotonic() - started
    return web.json_response(results if batch else results[0])


# --- the rest -----------------------------------------------------------------------------------

async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _health_generate(request: web.Request) -> web.Response:
    """200 only after really generating one token (SGLang sends input_ids [0], greedy)."""
    try:
        await request.app[_SAMPLER].generate([0], SamplingParams(temperature=0.0, max_new_tokens=1))
    except Exception:  # noqa: BLE001 - any failure means unhealthy
        log.exception("/health_generate failed")
        return web.Response(status=503)
    return web.Response(status=200)


async def _model_info(request: web.Request) -> web.Response:
    return web.json_response(request.app[_SAMPLER].model_info())


async def _weight_version(request: web.Request) -> web.Response:
    return web.json_response({"weight_version": request.app[_SAMPLER].weight_version})


async def _update_weights(request: web.Request) -> web.Response:
    sampler = request.app[_SAMPLER]

    def answer(success: bool, message: str) -> web.Response:
        return web.json_response({"success": success, "message": message, "num_paused_requests": 0},
                                 status=200 if success else 400)

    try:
        body = await _json_object(request)
    except BadRequest as e:
        return answer(False, str(e))
    unknown = sorted(set(body) - _UPDATE_IGNORED - {"model_path", "weight_version"})
    if unknown:
        return answer(False, f"unsupported fields {unknown}")
    path, version = body.get("model_path"), body.get("weight_version")
    if not isinstance(path, str) or not path:
        return answer(False, f"model_path must be a non-empty string, got {path!r:.80}")
    if version is not None and not isinstance(version, (str, int)):
        return answer(False, f"weight_version must be a string, got {version!r:.40}")
    try:
        await sampler.load_weights(path, None if version is None else str(version))
    except Exception as e:  # noqa: BLE001 - the reason goes back to the caller; old weights stay
        return answer(False, f"Failed to update weights from {path}: {e}. The previous weights "
                             f"(version {sampler.weight_version}) are still serving.")
    message = "Succeeded to update model weights."
    if version is not None:
        message += f" Weight version updated to {version}."
    return answer(True, message)


async def _flush_cache(request: web.Request) -> web.Response:
    # There is no prefix cache to flush; answer as SGLang does when flushing succeeds.
    return web.Response(text="Cache flushed.\nPlease check backend logs for more details. (When "
                             "there are running or waiting requests, the operation will not be "
                             "performed.)\n", status=200)
