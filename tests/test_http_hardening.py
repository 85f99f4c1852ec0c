"""Bad input, big bodies, chatbot context and overload at the HTTP edge (in-process, and a real uvicorn on loopback)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from kbsearch.api.app import create_app
from kbsearch.embed.fake import HashEmbedder
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from servers import free_port


def _app(settings, embedder=None):
    return create_app(settings, QueryEngine(settings, embedder or HashEmbedder(dim=64), make_rerank_planner(settings)))


@pytest.fixture()
def client(settings, built):
    with TestClient(_app(settings), raise_server_exceptions=False) as c:
        yield c


MALFORMED = [
    b'{"question": "\\ud800"}', b'{"question": "ok \\udfff"}', b'{"question": "\xff\xfe\xfd"}', b'{"question": NaN}',
    b'{"question": Infinity}', b'{"question": -Infinity}', b'{"question": 1e400}', b'{"question": "x", "top_k": NaN}',
    b'{"question": "x", "top_k": 1e400}', b'{"question": "x", "kb": "\\u0000"}', b'{"question": "x", "kb": "a\\n"}',
    b'{"question": "x", "\\ud800": 1}', b"[" * 5000 + b"]" * 5000, b"not json", b"", b"[]", b"null", b'"question"',
    b'{"question": ["a"]}', b'{"question": {"$gt": ""}}', b'{"question": "x", "top_k": "3; DROP TABLE"}',
    b'{"question": "x", "metadata": {"k": NaN}}', b'{"question": "x", "session_id": "a\\u0000b"}',
    json.dumps({f"k{i}": i for i in range(5000)}).encode(),
]


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_bodies_are_4xx_in_one_shape_and_never_echoed(client, body):
    r = client.post("/ask", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    payload = r.json()
    assert set(payload) >= {"detail", "error"}
    text = r.text
    assert "DROP TABLE" not in text and "$gt" not in text and len(text) < 5000  # the input is never echoed


@pytest.mark.parametrize("route", ["/feedback", "/similarity", "/admin/login"])
def test_every_route_survives_unencodable_input(client, route):
    r = client.post(route, content=b'{"request_id": "\\ud800", "a": "\\ud800", "b": NaN, "key": 1e400}',
                    headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["error"]


def test_body_size_limit(settings, built):
    s = settings.updated(api={"max_body_bytes": 4096})
    with TestClient(_app(s), raise_server_exceptions=False) as c:
        big = json.dumps({"question": "x" * 10_000}).encode()
        r = c.post("/ask", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "TooLarge" and "x" * 100 not in r.text

        def chunks():  # no Content-Length: counted as it streams
            yield b'{"question": "'
            for _ in range(20):
                yield b"y" * 1000
            yield b'"}'

        r = c.post("/ask", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/ask", json={"question": "如何申请退货？"}).status_code == 200


def test_chatbot_context_is_accepted_and_recorded(client):
    ctx = {"session_id": "s-1", "user_id": "u-42", "channel": "wechat", "metadata": {"order": "A1", "vip": True,
                                                                                     "phone": "13812345678"}}
    r = client.post("/ask", json={"question": "如何申请退货？", **ctx})
    assert r.status_code == 200
    ops = client.app.state.ops
    assert ops.log.flush(10)
    key = client.app.state.guard.generated_admin_key
    row = client.get("/admin/api/questions", headers={"Authorization": f"Bearer {key}"}).json()["rows"][0]
    assert row["context"] == {**ctx, "metadata": {"order": "A1", "vip": True, "phone": "[phone]"}}
    for bad in ({"metadata": {f"k{i}": i for i in range(21)}}, {"metadata": {"k": "v" * 257}},
                {"metadata": {"k": {"nested": 1}}}, {"session_id": "x" * 129}, {"channel": ""}):
        assert client.post("/ask", json={"question": "q", **bad}).status_code == 422, bad


def test_an_unexpected_error_is_a_json_500_without_stack_or_path(client, monkeypatch):
    def boom(request_id):
        raise RuntimeError("/very/secret/path/kbsearch.db is broken")

    monkeypatch.setattr(client.app.state.ops.log, "kb_of", boom)
    r = client.post("/feedback", json={"request_id": "r1", "helpful": True})
    assert r.status_code == 500 and r.json() == {"detail": "internal error", "error": "InternalError"}
    assert "secret" not in r.text and "Traceback" not in r.text


class GatedEmbedder(HashEmbedder):
    """The hash fake, but question embedding waits until the test opens the gate (a hung model)."""

    def __init__(self) -> None:
        super().__init__(dim=64)
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        self.entered.release()
        self.gate.wait(60)
        return super().embed_queries(texts)


@pytest.fixture()
def gated_server(settings, built):
    s = settings.updated(api={"max_in_flight": 1, "max_queue": 1, "queue_timeout_s": 1.0, "retry_after_s": 3},
                         retrieve={"vector_timeout_s": 60})
    embedder = GatedEmbedder()
    app = _app(s, embedder)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    embedder.gate.set()  # warm-up questions (the app loads on start) pass freely
    embedder.gate.clear()
    yield f"http://127.0.0.1:{port}", embedder
    embedder.gate.set()
    server.should_exit = True
    thread.join(30)


def test_overload_is_refused_at_once_and_probes_never_wait(gated_server):
    base, embedder = gated_server
    results: dict[str, httpx.Response] = {}

    def ask(name: str) -> None:
        results[name] = httpx.post(base + "/ask", json={"question": "如何申请退货？"}, timeout=60)

    first = threading.Thread(target=ask, args=("in-flight",))
    first.start()
    assert embedder.entered.acquire(timeout=30)  # the first question holds the only slot, its model hung
    second = threading.Thread(target=ask, args=("queued",))
    second.start()
    deadline = time.monotonic() + 30
    while httpx.get(base + "/metrics").text.find("kbsearch_questions_waiting 1.0") < 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # the queue (1) is full: refused at once, with Retry-After
    refused = httpx.post(base + "/ask", json={"question": "如何申请退货？"}, timeout=60)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3" and refused.json()["error"] == "BusyError"
    # probes are served while every question slot is taken
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(base + probe, timeout=10).status_code == 200
    # the queued question waited longer than queue_timeout_s: refused, not answered late
    second.join(30)
    assert results["queued"].status_code == 429 and "1 s" in results["queued"].json()["detail"]
    embedder.gate.set()
    first.join(30)
    assert results["in-flight"].status_code == 200 and results["in-flight"].json()["answered"]
    metrics = httpx.get(base + "/metrics").text
    assert 'kbsearch_questions_refused_total{reason="queue-full"} 1.0' in metrics
    assert 'kbsearch_questions_refused_total{reason="queue-timeout"} 1.0' in metrics
    assert httpx.post(base + "/ask", json={"question": "如何申请退货？"}, timeout=60).status_code == 200
