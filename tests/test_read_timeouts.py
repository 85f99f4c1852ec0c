"""Half-open connections are closed: a real `kbsearch serve` on loopback, raw sockets that stop mid-request.

Before the read deadlines, uvicorn kept all of these open for as long as the client liked (an audit held 900
open past 60 s). With ``api.header_timeout_s`` and ``api.body_timeout_s`` set to 1 s here, each is closed,
with a 408 where the client had started a request, and the server keeps answering meanwhile. The bound each
test allows is ten times the deadline, so a busy machine does not fail it.
"""

from __future__ import annotations

import os
import select
import socket
import time
from pathlib import Path

import pytest
from servers import get, post, running_server

pytestmark = pytest.mark.slow

TIMEOUT_S = 1.0
MIN_RATE = 100  # bytes per second of body that earn one more second
BOUND_S = 10 * TIMEOUT_S
QUESTION = "如何申请退货？"


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "KBSEARCH_HOME": str(home), "KBSEARCH_EMBED__BACKEND": "hash",
            "KBSEARCH_RERANK__BACKEND": "none", "KBSEARCH_DECIDE__THRESHOLD_VECTOR": "0.5",
            "KBSEARCH_API__HEADER_TIMEOUT_S": str(TIMEOUT_S), "KBSEARCH_API__BODY_TIMEOUT_S": str(TIMEOUT_S),
            "KBSEARCH_API__BODY_MIN_RATE": str(MIN_RATE), "KBSEARCH_TELEMETRY__LOG_LEVEL": "WARNING"}


def _connect(base: str, data: bytes = b"") -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(data)
    return sock


def _head(method: str, path: str, length: int) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: kbsearch\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _until_closed(sock: socket.socket, deadline: float) -> bytes:
    """What the server sent on ``sock`` before it closed it; fails if it is still open at ``deadline``."""
    got = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"still open after the deadline, having sent {got[:200]!r}")
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def _closed_with(got: bytes, *firsts: bytes) -> bool:
    return any(got.startswith(first) for first in firsts)


def test_stalled_heads_and_bodies_are_closed_while_questions_are_answered(settings, built):
    with running_server(_env(settings.home)) as base:
        keep_alive = _connect(base, b"GET /healthz HTTP/1.1\r\nHost: kbsearch\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += keep_alive.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # the next request's head, never finished
        opened = time.monotonic()
        stalled = {
            "(a) nothing sent": _connect(base),
            "(b) part of a head": _connect(base, b"POST /ask HTTP/1.1\r\nHost: kbsearch\r\nContent-Ty"),
            "(b) part of a second head on a kept-alive connection": keep_alive,
            "(c) head + 10 of 1000 body bytes": _connect(base, _head("POST", "/ask", 1000) + b'{"question'),
            "(c) same, on a route that answers without reading it": _connect(base, _head("GET", "/healthz", 1000)
                                                                              + b"0123456789"),
        }
        status, body = post(base + "/ask", {"question": QUESTION})  # served while they hang
        assert status == 200 and body["answered"], body
        got = {name: _until_closed(sock, opened + BOUND_S) for name, sock in stalled.items()}
        closed_after = time.monotonic() - opened
        for sock in stalled.values():
            sock.close()
        print(f"\nall {len(stalled)} closed within {closed_after:.2f} s (deadlines {TIMEOUT_S:g} s); first lines:",
              {name: g.split(b"\r\n", 1)[0] for name, g in got.items()})
        assert got["(a) nothing sent"] == b""
        assert _closed_with(got["(b) part of a head"], b"HTTP/1.1 408", b"")
        assert _closed_with(got["(b) part of a second head on a kept-alive connection"], b"HTTP/1.1 408", b"")
        assert got["(c) head + 10 of 1000 body bytes"].startswith(b"HTTP/1.1 408")
        assert b'"error":"RequestTimeout"' in got["(c) head + 10 of 1000 body bytes"]
        assert got["(c) same, on a route that answers without reading it"].startswith(b"HTTP/1.1 200")
        assert get(base + "/healthz")["status"] == "ok"


def test_a_slow_upload_that_keeps_going_is_answered_and_a_trickle_is_not(settings, built):
    payload = f'{{"question": "{QUESTION}"}}'.encode().ljust(600)  # JSON may end in spaces
    with running_server(_env(settings.home)) as base:
        slow = _connect(base, _head("POST", "/ask", len(payload)) + payload[:100])
        started = time.monotonic()
        for i in range(100, len(payload), 50):  # then 200 bytes/s, for 2.5 s in all
            time.sleep(0.25)
            slow.sendall(payload[i:i + 50])
        answer = slow.recv(65536)
        took = time.monotonic() - started
        slow.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert took > 2 * TIMEOUT_S

        trickle = _connect(base, _head("POST", "/ask", 1000))
        started = time.monotonic()
        sent = 0
        while not select.select([trickle], [], [], 0.2)[0]:  # 5 bytes/s, well under the minimum rate
            assert time.monotonic() - started < BOUND_S, "a trickled body is still being read"
            trickle.sendall(b" ")
            sent += 1
        got = _until_closed(trickle, started + BOUND_S)
        trickle.close()
        print(f"\nslow upload ({len(payload)} bytes in {took:.2f} s): {answer[:12]!r}...; "
              f"trickle closed after {time.monotonic() - started:.2f} s and {sent} bytes: {got[:12]!r}")
        assert _closed_with(got, b"HTTP/1.1 408", b"")


def test_many_idle_connections_are_closed_and_probes_answer_meanwhile(settings, built):
    with running_server(_env(settings.home)) as base:
        opened = time.monotonic()
        idle = [_connect(base) for _ in range(200)]
        probe_ms = []
        for _ in range(5):
            t = time.perf_counter()
            assert get(base + "/healthz")["status"] == "ok"
            probe_ms.append((time.perf_counter() - t) * 1000)
        got = [_until_closed(sock, opened + BOUND_S) for sock in idle]
        closed_after = time.monotonic() - opened
        for sock in idle:
            sock.close()
        print(f"\n200 idle connections closed within {closed_after:.2f} s; /healthz meanwhile "
              f"{', '.join(f'{ms:.1f}' for ms in probe_ms)} ms")
        assert got == [b""] * len(idle)
        status, body = post(base + "/ask", {"question": QUESTION})
        assert status == 200 and body["answered"]
