"""Serves a Hugging Face Qwen3 export with the JAX sampler behind SGLang's native HTTP API.

    python tools/serve_local.py --model DIR --port P [--host 127.0.0.1] [--max-batch N]
                                [--latency-ms X] [--weight-version V]

DIR is what tools/export_hf.py writes (config.json, safetensors, tokenizer files). Once the
model is loaded and has generated a first token (so compilation is done), the server prints
exactly one line to stdout, its URL (e.g. http://127.0.0.1:30000), and serves until SIGTERM or
SIGINT. --port 0 picks a free port. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from dagger_jax.policies.generation import SamplingParams
from dagger_jax.policies.local_sampler import DEFAULT_WEIGHT_VERSION, LocalSampler
from dagger_jax.serving import standin_server


async def serve(args: argparse.Namespace) -> int:
    try:
        sampler = LocalSampler.from_hf_dir(args.model, max_batch=args.max_batch,
                                           weight_version=args.weight_version)
    except (FileNotFoundError, ValueError) as e:
        print(f"serve_local: cannot load {args.model}: {e}", file=sys.stderr)
        return 1
    # Compile the common path before saying we are ready.
    await sampler.generate([0], SamplingParams(temperature=0.0, max_new_tokens=1))
    latency = None if args.latency_ms is None else args.latency_ms / 1000.0
    try:
        runner, url = await standin_server.start(sampler, args.host, args.port, latency_s=latency)
    except OSError as e:
        print(f"serve_local: {e}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(url, flush=True)
    logging.getLogger("serve_local").info("serving %s at %s", args.model, url)
    await stop.wait()
    await runner.cleanup()
    await sampler.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--max-batch", type=int, default=8, help="requests per batch, at most")
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="added delay per /generate request "
                             f"(default: ${standin_server.LATENCY_ENV} or 0)")
    parser.add_argument("--weight-version", default=DEFAULT_WEIGHT_VERSION)
    args = parser.parse_args(argv)
    if args.max_batch < 1:
        parser.error(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.latency_ms is not None and args.latency_ms < 0:
        parser.error(f"--latency-ms must be >= 0, got {args.latency_ms}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
