"""HTTP contract of the API (in-process ASGI client): shapes, 422s, 404, health and readiness."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kbsearch.api.app import create_app
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.index.builder import build_index
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from support import SMALL_KB, one_chunk


@pytest.fixture()
def client(settings, built):
    engine = QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings))
    with TestClient(create_app(settings, engine)) as c:
        yield c


def test_ask_shape(client):
    r = client.post("/ask", json={"question": "如何申请退货？", "top_k": 2})
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"answered", "answer", "results", "handoff", "mode", "decision", "degraded", "request_id",
                         "index_version", "timings_ms"}
    assert body["answered"] and body["results"][0]["id"] == "ret-1" and len(body["results"]) == 2
    assert body["answer"] == body["results"][0]["answer"]
    top = body["results"][0]
    assert set(top["scores"]) == {"vector", "bm25", "fused", "rerank"}
    assert top["scores"]["rerank"] is None and body["mode"] == "vector"
    # Each result shows the score it was ranked by; the deciding score is reported separately, by kind.
    assert top["ranked_by"] == "fused" and top["score"] == top["scores"]["fused"]
    assert body["results"][0]["score"] >= body["results"][1]["score"]
    assert body["decision"] == {"score_kind": "vector", "score": top["scores"]["vector"], "threshold": 0.5, "margin": 0.0,
                                "threshold_source": "setting", "rule": "answered"}
    assert body["handoff"] is None and len(body["request_id"]) == 32 and "total" in body["timings_ms"]
    assert r.headers["X-Request-ID"] == body["request_id"]
    assert set(body["timings_ms"]) >= {"embed", "vector", "bm25", "fuse", "decide", "total"}


def test_request_id_from_the_chatbot_is_used_and_echoed(client):
    r = client.post("/ask", json={"question": "如何申请退货？"}, headers={"X-Request-ID": "chat-42:turn.7"})
    assert r.status_code == 200 and r.json()["request_id"] == "chat-42:turn.7"
    assert r.headers["X-Request-ID"] == "chat-42:turn.7"
    for bad in ("x" * 129, "has space", "a/b", "<script>"):
        r = client.post("/ask", json={"question": "hi"}, headers={"X-Request-ID": bad})
        assert r.status_code == 422 and any("X-Request-ID" in err["loc"] for err in r.json()["detail"])


def test_handoff_keeps_results(client):
    body = client.post("/ask", json={"question": "Who won the 1998 football world cup?"}).json()
    assert not body["answered"] and body["answer"] is None
    assert body["handoff"]["message"].startswith("Let me connect you") and body["handoff"]["code"] == "below-threshold"
    assert body["handoff"]["reason"].startswith("below-threshold: vector score")
    assert len(body["results"]) == 3


@pytest.mark.parametrize("payload,field", [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": "   "}, "question"),
    ({"question": "x" * 2001}, "question"),
    ({"question": "hi", "top_k": 0}, "top_k"),
    ({"question": "hi", "top_k": 21}, "top_k"),
    ({"question": "hi", "kb": "../etc"}, "kb"),
    ({"question": "hi", "kb": ".."}, "kb"),
    ({"question": "hi", "kb": "."}, "kb"),
    ({"question": "hi", "extra": 1}, "extra"),
])
def test_bad_input_is_422_naming_the_field(client, payload, field):
    r = client.post("/ask", json=payload)
    assert r.status_code == 422
    assert any(field in [str(p) for p in err["loc"]] for err in r.json()["detail"])


def test_unknown_kb_is_404(client):
    r = client.post("/ask", json={"question": "hi", "kb": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_health_ready_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/openapi.json").json()["paths"]["/ask"]["post"]
    assert client.get("/docs").status_code == 200


def test_not_ready_without_a_build(tmp_path):
    settings = Settings(home=tmp_path, embed={"backend": "hash"})
    engine = QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings))
    with TestClient(create_app(settings, engine)) as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200
        assert c.post("/ask", json={"question": "hi"}).status_code == 404


def test_defaults_come_from_settings(tmp_path):
    settings = Settings(home=tmp_path, embed={"backend": "hash"}, decide={"threshold_vector": 0.5, "top_k": 2},
                        default_kb="shop")
    entries = SMALL_KB[:4]
    build_index(settings, "shop", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    engine = QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings))
    with TestClient(create_app(settings, engine)) as c:
        body = c.post("/ask", json={"question": "如何申请退货？"}).json()
        assert body["results"][0]["id"] == "ret-1" and len(body["results"]) == 2
        assert c.post("/ask", json={"question": "hi", "kb": "default"}).status_code == 404


def test_explain_over_http(client):
    # explain shows candidates and thresholds: an operator's tool, not a client's
    anonymous = client.post("/ask", json={"question": "如何申请退货？", "explain": True})
    assert anonymous.status_code == 401 and "explain" not in anonymous.json()
    key = client.app.state.guard.generated_admin_key
    body = client.post("/ask", json={"question": "如何申请退货？", "explain": True},
                       headers={"Authorization": f"Bearer {key}"}).json()
    assert body["explain"]["first_stage"] == "fused" and body["explain"]["decision"]["rule"] == "answered"
    assert body["explain"]["vector"][0]["id"] == "ret-1" and body["explain"]["fused"][0]["id"] == "ret-1"
    # explain and timings_ms are read from the same trace: one span per stage, the same durations.
    spans = body["explain"]["spans"]
    assert [s["name"] for s in spans] == ["embed", "vector", "bm25", "fuse", "decide"]
    assert {s["name"]: round(s["ms"], 2) for s in spans} == {k: v for k, v in body["timings_ms"].items() if k != "total"}
    assert spans[1]["candidates"] == len(body["explain"]["vector"]) and body["explain"]["fallbacks"] == []
    assert client.post("/ask", json={"question": "如何申请退货？"}).json()["explain"] is None
