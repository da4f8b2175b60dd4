"""A real HTTP server that speaks SGLang's native API (the subset our client uses), with switches
for the faults the client and the endpoint pool must survive.

Used in-process by the tests (start/stop on 127.0.0.1, port 0), or as a subprocess
(`python fake_sglang.py --hang-generate`) that the tests can kill in the middle of a request.
The shapes follow sgl-project/sglang's http_server.py and tokenizer_manager.py: `meta_info`
with `id`, `finish_reason` objects, `[logprob, token_id, null]` rows, and the unscored first
row of `input_token_logprobs`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from aiohttp import web


def score_logprob(position: int, token: int) -> float:
    """The log-prob this server gives `token` at `position` when scoring: tests recompute it."""
    return -round(0.01 * (position + 1) + 0.0001 * token, 6)


class FakeSGLang:
    """Faults are queued per /generate request: "500", "503", "400", "malformed_json",
    "missing_meta", "oov", "count_mismatch", "wrong_rid", "slow" (hangs until stop())."""

    def __init__(self, *, vocab_size: int = 1000, reply_len: int = 3,
                 weight_version: str = "v0", hang_generate: bool = False):
        self.vocab_size = vocab_size
        self.reply_len = reply_len
        self.weight_version = weight_version
        self.model_path = "/models/fake-student"
        self.hang_generate = hang_generate
        self.faults: list[str] = []
        self.health_ok = True
        self.health_failures_left = 0  # fail this many health checks, then pass
        self.refuse_weights: str | None = None  # SGLang's message for a failed load
        self.flush_busy = False
        self.generate_bodies: list[dict[str, Any]] = []
        self.weight_bodies: list[dict[str, Any]] = []
        self.health_checks = 0
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/generate", self._generate)
        app.router.add_get("/health_generate", self._health)
        app.router.add_get("/health", self._health)
        app.router.add_get("/get_model_info", self._model_info)
        app.router.add_post("/update_weights_from_disk", self._update_weights)
        app.router.add_route("*", "/flush_cache", self._flush_cache)
        return app

    async def start(self, port: int | None = None) -> "FakeSGLang":
        """Listens on `port` (default: the last one, or a free one): a stopped server comes back
        at the same URL."""
        self._release = asyncio.Event()
        self._runner = web.AppRunner(self.app(), shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port if port is not None else self.port or 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stops listening (connections are then refused) and frees hung handlers."""
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers --------------------------------------------------------------------------

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.generate_bodies.append(body)
        if self.hang_generate:
            print("GENERATE", flush=True)  # the test kills us now
            await asyncio.sleep(3600)
        fault = self.faults.pop(0) if self.faults else None
        if fault in ("500", "503"):
            return web.json_response({"error": {"message": f"boom {fault}"}}, status=int(fault))
        if fault == "400":
            return web.json_response({"error": {"message": "The input (9 tokens) is longer than "
                                                "the model's context length (8 tokens)."}},
                                     status=400)
        if fault == "malformed_json":
            return web.Response(text='{"text": "oops', content_type="application/json")
        if fault == "missing_meta":
            return web.json_response({"text": "", "output_ids": [1, 2]})
        if fault == "slow":
            assert self._release is not None
            await self._release.wait()
            return web.json_response({"error": {"message": "shutting down"}}, status=503)

        ids: list[int] = body["input_ids"]
        sp = body.get("sampling_params") or {}
        max_new = int(sp.get("max_new_tokens", 128))
        start = int(body.get("logprob_start_len", -1) if body.get("logprob_start_len") is not None
                    else -1)
        meta: dict[str, Any] = {"id": body.get("rid"), "prompt_tokens": len(ids),
                                "weight_version": self.weight_version, "cached_tokens": 0}
        if fault == "wrong_rid":
            meta["id"] = "someone-else"
        input_rows: list[list[Any]] = []
        if body.get("return_logprob") and start >= 0:
            # SGLang leaves the first requested row unscored.
            input_rows = [[None if p == start else score_logprob(p, ids[p]), ids[p], None]
                          for p in range(start, len(ids))]
        out_ids: list[int] = []
        finish: dict[str, Any] = {"type": "length", "length": max_new}
        for k in range(min(max_new, self.reply_len)):
            tok = (sum(ids) + k) % self.vocab_size
            out_ids.append(tok)
            if tok in (sp.get("stop_token_ids") or []):
                finish = {"type": "stop", "matched": tok}
                break
        else:
            if len(out_ids) < max_new:
                finish = {"type": "stop", "matched": "</s>"}
        if fault == "oov":
            out_ids[-1] = self.vocab_size + 5
        out_rows = [[-0.1 * (k + 1), t, None] for k, t in enumerate(out_ids)]
        if fault == "count_mismatch":
            out_rows = out_rows[:-1]
        meta.update(finish_reason=finish, completion_tokens=len(out_ids))
        if body.get("return_logprob"):
            meta["output_token_logprobs"] = out_rows
            meta["input_token_logprobs"] = input_rows
        text = " ".join(f"t{t}" for t in out_ids)
        return web.json_response({"text": text, "output_ids": out_ids, "meta_info": meta})

    async def _health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        if self.health_failures_left > 0:
            self.health_failures_left -= 1
            return web.Response(status=503)
        return web.Response(status=200 if self.health_ok else 503)

    async def _model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": self.model_path, "tokenizer_path": self.model_path,
                                  "is_generation": True,
                                  "weight_version": self.weight_version})

    async def _update_weights(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.weight_bodies.append(body)
        if self.refuse_weights is not None:
            return web.json_response({"success": False, "message": self.refuse_weights,
                                      "num_paused_requests": 0}, status=400)
        self.model_path = body["model_path"]
        message = "Succeeded to update model weights."
        if body.get("weight_version") is not None:
            self.weight_version = body["weight_version"]
            message += f" Weight version updated to {self.weight_version}."
        return web.json_response({"success": True, "message": message, "num_paused_requests": 0})

    async def _flush_cache(self, request: web.Request) -> web.Response:
        return web.Response(text="Cache flushed.\n", status=400 if self.flush_busy else 200)


async def _serve_forever(server: FakeSGLang, port: int) -> None:
    await server.start(port)
    print(f"PORT {server.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hang-generate", action="store_true",
                        help="print GENERATE and hang on every /generate (to be killed)")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--vocab-size", type=int, default=1000)
    args = parser.parse_args()
    try:
        asyncio.run(_serve_forever(FakeSGLang(hang_generate=args.hang_generate,
                                              vocab_size=args.vocab_size), args.port))
    except KeyboardInterrupt:
        sys.exit(0)
