"""The export sidecar: beside each student SGLang server, it pulls the trainer's exports from
the run's store onto its host's disk and has the server load them from there.

    python -m dagger_jax.rollout.export_sidecar --server http://127.0.0.1:31000 --port 31500 \
        [--cache DIR] [--host 0.0.0.0]

The trainer and the fleet share no filesystem; their common ground is the bucket. The trainer
publishes export N (`gs://.../exports/iter_NNN`, storage/store.py: every file, then a marker
listing each file's size and sha256) and sends SGLang's own weight request to the sidecars
(config.loop.student_loaders) instead of the servers:

    POST /update_weights_from_disk  {"model_path": "gs://.../exports/iter_003", "weight_version": V}
        -> the export is copied to --cache (once per publication; every file checked against
           the marker, a damaged download fetched again, then refused), then the server is
           asked to load that local directory as version V; the server's answer is returned
           (SGLang's shape: {"success", "message"}, HTTP 400 when it is false).
    GET  /get_model_info            the server's own answer (the trainer asks which version
                                    each server holds through the sidecar it loads through)
    GET  /health, /health_generate  200 once the server answers /health_generate (what
                                    launch/sglang_fleet.sh waits for)

Older copies are removed once the server has loaded a newer one (an 8B export is 16 GB).

A local model_path (the trainer and the server on one filesystem) is passed through as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from dagger_jax.policies.sglang_client import EndpointError, SGLangClient, WeightUpdateRefused
from dagger_jax.rollout.serve_app import serve_forever
from dagger_jax.storage.store import DamagedCopy, local_dir

log = logging.getLogger(__name__)


class ExportSidecar:
    def __init__(self, server_url: str, cache: Path) -> None:
        self.server_url, self.cache = server_url, cache
        self.client = SGLangClient(server_url)
        self._lock = asyncio.Lock()  # one load at a time: a second waits and finds the copy

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.post("/update_weights_from_disk", self.update_weights),
                        web.get("/get_model_info", self.model_info),
                        web.get("/health", self.health),
                        web.get("/health_generate", self.health)])
        app.on_cleanup.append(self._close)
        return app

    async def update_weights(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            source, version = body["model_path"], body.get("weight_version")
        except (ValueError, KeyError, TypeError):
            return _verdict(False, "the body must be JSON with model_path", status=400)
        async with self._lock:
            try:
                local = await asyncio.to_thread(local_dir, source, self.cache)
            except (FileNotFoundError, DamagedCopy, ValueError, OSError) as e:
                log.error("cannot fetch %s: %s", source, e)
                return _verdict(False, f"sidecar: cannot fetch {source}: {e}", status=400)
            try:
                message = await self.client.update_weights_from_disk(str(local), version)
            except WeightUpdateRefused as e:
                return _verdict(False, str(e), status=400)
            except EndpointError as e:
                return _verdict(False, f"sidecar: server {self.server_url}: {e}", status=502)
            if local != Path(source):
                self._prune(keep=local)
        log.info("server %s loaded %s (copy of %s) as version %s", self.server_url, local,
                 source, version)
        return _verdict(True, message)

    async def model_info(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.client.model_info())
        except EndpointError as e:
            return web.json_response({"error": f"sidecar: server {self.server_url}: {e}"},
                                     status=502)

    async def health(self, request: web.Request) -> web.Response:
        """200 when the server answers /health_generate (the sidecar alone is no use)."""
        if await self.client.health():
            return web.json_response({"ok": True})
        return web.json_response({"ok": False, "server": self.server_url}, status=503)

    def _prune(self, keep: Path) -> None:
        """Removes older copies: the server holds the weights it loaded in its own memory, and
        an 8B export is 16 GB of the host's disk."""
        for old in self.cache.iterdir():
            if old.is_dir() and old != keep and not old.name.count(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)

    async def _close(self, app: web.Application) -> None:
        await self.client.aclose()


def _verdict(success: bool, message: str, status: int = 200) -> web.Response:
    return web.json_response({"success": success, "message": message}, status=status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the SGLang server this sidecar loads")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "dagger_jax_exports",
                        help="where exports are copied (one directory per publication)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    return serve_forever(ExportSidecar(args.server, args.cache).app(), args.host, args.port,
                         f"export sidecar for {args.server}")

if __name__ == "__main__":
    sys.exit(main())
