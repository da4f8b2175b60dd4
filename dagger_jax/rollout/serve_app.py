"""Running one of the rollout layer's HTTP processes (the rollout service, the export sidecar)
until it is stopped, with the line its launchers wait for."""

from __future__ import annotations

import asyncio

from aiohttp import web


def serve_forever(app: web.Application, host: str, port: int, name: str) -> int:
    """Serves `app` on host:port (0: a free port) and prints `<name> listening on <URL>` once it
    accepts connections; returns 0 when interrupted."""
    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        print(f"{name} listening on http://{host}:{bound}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0
