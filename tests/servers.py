"""Real servers for the tests: free loopback ports, `kbsearch serve` in a subprocess, plain HTTP calls."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST JSON; (status, JSON body) whatever the status."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str, headers: dict[str, str] | None = None) -> dict:
    """GET a JSON body (raises on an HTTP error)."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as r:
        return json.loads(r.read())


CLI = [sys.executable, "-m", "kbsearch.cli"]


@contextlib.contextmanager
def running_server(env: dict[str, str], expect_ready: bool = True):
    """Start `kbsearch serve` on a free loopback port; yield its base URL once it answers /readyz."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Its output goes to a file, not a pipe: nobody reads a pipe while the server runs, and once 64 KiB of
    # access log fill it, the server blocks on its next log line and stops answering.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as log:
        proc = subprocess.Popen(CLI + ["serve", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                        if r.status == 200:
                            break
                except urllib.error.HTTPError as e:
                    if e.code == 503 and not expect_ready:
                        break
                except (urllib.error.URLError, ConnectionError):
                    pass
                assert proc.poll() is None, _tail(log)
                time.sleep(0.5)
            else:
                pytest.fail("server never answered /readyz")
            yield base
        finally:
            stop(proc)


def _tail(log, chars: int = 20_000) -> str:
    """The last ``chars`` characters a server wrote to its log file."""
    log.seek(0)
    return log.read()[-chars:]


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a server process, killing it if it does not exit in ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
