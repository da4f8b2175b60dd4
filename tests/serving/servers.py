"""tools/serve_local.py started as a real subprocess for tests: the stand-in SGLang server."""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serve_local(model: Path, log_path: Path, *args: str, env: dict | None = None,
                start_timeout_s: float = 240) -> Iterator[str]:
    """Serves the HF export `model` on a free port; yields its URL, stops it afterwards. The
    server's stderr goes to log_path, whose tail is the failure message if it does not start."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "serve_local.py"), "--model",
                             str(model), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
        url = proc.stdout.readline().strip() if ready else ""
        if not url.startswith("http://"):
            proc.kill()
            pytest.fail(f"server for {model} did not start: {Path(log_path).read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
