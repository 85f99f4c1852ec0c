"""Remote model backends: ``embed.backend = openai`` (``/v1/embeddings``) and ``rerank.backend = remote``
(``/v1/rerank``, TEI's ``/rerank``).

The first tests run the client against ``httpx.MockTransport`` servers, to pin the protocol (prompts, batches,
the order of the answer, Matryoshka, retries with backoff and ``Retry-After``, what is refused). The slow
ones run the real thing: Infinity, a third-party OpenAI-compatible server (``tests/modelserver.py``), serving
the bundled e5-small and a tiny cross-encoder on loopback; a build ingested and asked through it must give the
in-process backend's answers, and killing the server mid-run must degrade answers to BM25, then recover.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from kbsearch.config import Settings
from kbsearch.embed.e5_small import E5_DOCUMENT_PROMPT, E5_QUERY_PROMPT, E5SmallEmbedder
from kbsearch.embed.factory import make_embedder
from kbsearch.embed.fake import HashEmbedder
from kbsearch.embed.remote import OpenAIEmbedder
from kbsearch.errors import BackendError, BadInputError, NotReadyError
from kbsearch.index.builder import build_index
from kbsearch.rerank.cross_encoder import CrossEncoderReranker
from kbsearch.rerank.factory import make_rerank_planner
from kbsearch.rerank.plan import SharedRerankPlanner
from kbsearch.rerank.remote import RemoteReranker
from kbsearch.service.query import QueryEngine
from servers import CLI, get, post, running_server
from support import REPO, SMALL_KB, one_chunk, sample_questions

BASE = "http://model-server.test/v1"


class FakeServer:
    """An ``httpx.MockTransport`` whose handler answers from ``replies`` (status, body, headers) first, then
    from ``default``; every request body is kept in ``requests``."""

    def __init__(self, default=None) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.replies: list = []
        self.default = default
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append((request.url.path, body))
        reply = self.replies.pop(0) if self.replies else self.default
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            reply = reply(body)
        status, payload, headers = reply
        if isinstance(payload, (bytes, str)):
            return httpx.Response(status, content=payload, headers=headers)
        return httpx.Response(status, json=payload, headers=headers)


def embeddings_of(vectors_for):
    """A handler answering ``/embeddings`` with ``vectors_for(inputs)``, listed in reverse order (servers
    need not keep it)."""
    def reply(body):
        vectors = vectors_for(body["input"])
        data = [{"object": "embedding", "index": i, "embedding": [float(x) for x in v]} for i, v in enumerate(vectors)]
        return 200, {"object": "list", "data": data[::-1], "model": body["model"]}, {}
    return reply


def lengths(inputs):
    """Unnormalised 4-d vectors that say which text they belong to."""
    return [[len(t), 1.0, 0.0, 2.0] for t in inputs]


def _embedder(server: FakeServer, **kw) -> OpenAIEmbedder:
    sleeps = kw.pop("sleeps", [])
    e = OpenAIEmbedder(BASE, "served-model", transport=server.transport, **kw)
    e.client._sleep = sleeps.append
    return e


def test_openai_embedder_prompts_batches_keeps_the_order_and_normalises():
    server = FakeServer(embeddings_of(lengths))
    e = _embedder(server, query_prompt="query: ", document_prompt="passage: ", batch_size=2)
    e.load()
    assert e.dim == 4 and server.requests[0][1]["input"] == ["dimension probe"]
    out = e.embed_queries(["a", "bb", "ccc"])
    assert [b["input"] for _, b in server.requests[1:]] == [["query: a", "query: bb"], ["query: ccc"]]
    assert all(path == "/v1/embeddings" and b["model"] == "served-model" and "dimensions" not in b
               for path, b in server.requests)
    want = np.asarray(lengths(["query: a", "query: bb", "query: ccc"]), dtype=np.float32)
    np.testing.assert_allclose(out, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-6)
    docs = e.embed_documents(["x"])
    assert server.requests[-1][1]["input"] == ["passage: x"] and docs.shape == (1, 4)
    assert e.embed_queries([]).shape == (0, 4)
    d = e.describe()
    assert (d["model_id"], d["dim"], d["query_prompt"], d["document_prompt"], d["backend"]) == \
        ("served-model", 4, "query: ", "passage: ", "openai")


def test_openai_embedder_sends_and_applies_dimensions():
    server = FakeServer(embeddings_of(lengths))  # this server ignores `dimensions`: kbsearch truncates anyway
    e = _embedder(server, dim=2)
    e.load()
    v = e.embed_documents(["abc"])
    assert server.requests[-1][1]["dimensions"] == 2 and v.shape == (1, 2)
    np.testing.assert_allclose(v[0], np.array([3, 1]) / np.sqrt(10), rtol=1e-6)
    with pytest.raises(BadInputError, match="exceeds the 4 dimensions"):
        _embedder(FakeServer(embeddings_of(lengths)), dim=8).load()


def test_calls_are_retried_with_backoff_and_retry_after():
    server = FakeServer(embeddings_of(lengths))
    sleeps: list[float] = []
    e = _embedder(server, sleeps=sleeps, max_retries=3)
    server.replies = [(503, {"error": "loading"}, {}), (429, {"error": "busy"}, {"Retry-After": "3"})]
    e.load()
    assert e.dim == 4 and len(server.requests) == 3
    assert sleeps == [0.2, 3.0]  # the first backoff, then what Retry-After asked (not 0.4)
    server.replies = [httpx.ConnectError("refused"), (502, "bad gateway", {})]
    assert e.embed_queries(["q"]).shape == (1, 4)
    assert sleeps[2:] == [0.2, 0.4]


def test_what_a_retry_cannot_fix_fails_at_once_and_retries_are_bounded():
    server = FakeServer((400, {"error": "unknown model served-model"}, {}))
    sleeps: list[float] = []
    with pytest.raises(BackendError, match="HTTP 400.*unknown model"):
        _embedder(server, sleeps=sleeps).load()
    assert len(server.requests) == 1 and sleeps == []
    down = FakeServer(httpx.ConnectError("connection refused"))
    with pytest.raises(BackendError, match="failed after 3 tries: ConnectError"):
        _embedder(down, max_retries=2).load()
    assert len(down.requests) == 3
    busy = FakeServer((503, "overloaded", {"Retry-After": "600"}))
    sleeps = []
    with pytest.raises(BackendError, match=r"HTTP 503: overloaded \(after 2 tries\)"):
        _embedder(busy, sleeps=sleeps, max_retries=1).load()
    assert sleeps == [10.0]  # Retry-After is honoured up to BACKOFF_MAX_S


@pytest.mark.parametrize("reply, match", [
    ((200, b"<html>gateway</html>", {}), "non-JSON"),
    ((200, {"data": [{"index": 0}]}, {}), "unexpected body"),
    ((200, {"data": [{"index": 0, "embedding": [1.0, 0.0]}, {"index": 1, "embedding": [0.0, 1.0]}]}, {}),
     "returned 2 vectors"),
    ((200, b'{"data": [{"index": 0, "embedding": [NaN, 1.0]}]}', {}), "non-finite"),
])
def test_a_wrong_answer_is_a_backend_error(reply, match):
    server = FakeServer(reply)
    with pytest.raises(BackendError, match=match):
        _embedder(server).load()


def test_settings_pick_the_remote_backends_and_their_prompts():
    s = Settings(embed={"backend": "openai", "base_url": "http://m:30000/v1/", "model": "Qwen/Qwen3-Embedding-4B"},
                 rerank={"backend": "remote", "base_url": "http://r:8000/v1", "remote_api": "tei", "model": "rr"})
    e = make_embedder(s)
    assert isinstance(e, OpenAIEmbedder) and e.client.base_url == "http://m:30000/v1"
    assert e.query_prompt == f"Instruct: {s.embed.query_instruction}\nQuery:" and e.document_prompt == ""
    e5 = make_embedder(s.updated(embed={"prompt_style": "e5"}))
    assert (e5.query_prompt, e5.document_prompt) == (E5_QUERY_PROMPT, E5_DOCUMENT_PROMPT)
    planner = make_rerank_planner(s)
    assert isinstance(planner.reranker, RemoteReranker) and planner.reranker.api == "tei"
    with pytest.raises(BadInputError, match="base_url"):
        make_embedder(s.updated(embed={"base_url": ""}))


def test_remote_reranker_speaks_both_shapes():
    def cohere(body):
        results = [{"index": i, "relevance_score": 1 / (2 + i)} for i in range(len(body["documents"]))]
        return 200, {"results": results[::-1], "model": body["model"]}, {}

    server = FakeServer(cohere)
    r = RemoteReranker(BASE, "rr", batch_size=2, transport=server.transport)
    with pytest.raises(NotReadyError):
        r.score("q", ["a"])
    r.load()
    assert r.score("q", ["a", "b", "c"]) == [0.5, 1 / 3, 0.5]  # two batches, mapped back by index
    assert server.requests[-2][1] == {"model": "rr", "query": "q", "documents": ["a", "b"], "top_n": 2,
                                      "return_documents": False}
    assert r.score("q", []) == []

    tei = FakeServer(lambda body: (200, [{"index": i, "score": 0.25} for i in range(len(body["texts"]))], {}))
    t = RemoteReranker("http://tei.test", "rr", api="tei", transport=tei.transport)
    t.load()
    assert t.score("q", ["a", "b"]) == [0.25, 0.25]
    assert tei.requests[-1] == ("/rerank", {"query": "q", "texts": ["a", "b"], "raw_scores": False, "truncate": True})


@pytest.mark.parametrize("results, match", [
    ([{"index": 0, "relevance_score": 3.2}], "outside \\[0, 1\\]"),  # a server answering logits
    ([{"index": 1, "relevance_score": 0.3}], "scored \\[1\\] of 1"),
    ([{"idx": 0}], "unexpected body"),
])
def test_remote_reranker_refuses_a_wrong_answer(results, match):
    server = FakeServer((200, {"results": results}, {}))
    with pytest.raises(BackendError, match=match):
        RemoteReranker(BASE, "rr", transport=server.transport).load()


def test_a_server_that_comes_up_later_is_picked_up_without_a_restart(settings: Settings):
    """The API started before its model server: BM25 answers, then the retry loads the model and the build."""
    hashing = HashEmbedder(dim=64)
    hashing.load()
    up = embeddings_of(lambda inputs: hashing.embed_documents(list(inputs)))
    server = FakeServer(up)
    entries = SMALL_KB[:4]
    build_index(settings, "default", entries, [one_chunk(e) for e in entries], _embedder(server), {})

    server.default = httpx.ConnectError("connection refused")
    s = settings.updated(model_load_retry_s=0.01)
    engine = QueryEngine(s, _embedder(server, max_retries=0), SharedRerankPlanner(None))
    try:
        engine.load()
        assert "embedding server" in engine.status()["embedder"] and not engine.status()["ready"]
        before = engine.ask(entries[0].question)
        assert before.degraded and before.mode == "bm25"
        time.sleep(0.02)
        server.default = up
        assert engine.retry_models() == ["embedder"]
        after = engine.ask(entries[0].question)
        assert not after.degraded and after.mode == "vector" and after.best.entry.id == entries[0].id
        assert engine.status()["ready"]
        assert engine.retry_models() == []  # nothing left to retry
    finally:
        engine.close()


def test_a_build_records_the_served_model_and_another_one_is_refused(settings: Settings, make_engine):
    """The remote model's id and dimension go into the manifest like a local model's, and a service asking
    another served model (or the same one with other prompts) refuses the build's vectors, as for local models."""
    hashing = HashEmbedder(dim=64)
    hashing.load()
    server = FakeServer(embeddings_of(lambda inputs: hashing.embed_documents(list(inputs))))
    entries = SMALL_KB[:4]
    result = build_index(settings, "default", entries, [one_chunk(e) for e in entries], _embedder(server), {})
    manifest = json.loads((result.path / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["model_id"], manifest["embedder"]["dim"], manifest["embedder"]["backend"]) == \
        ("served-model", 64, "openai")
    assert not make_engine(embedder=_embedder(server)).ask(entries[0].question).degraded
    other = OpenAIEmbedder(BASE, "another-model", transport=server.transport)
    for embedder in (other, _embedder(server, query_prompt="query: ")):
        a = make_engine(embedder=embedder).ask(entries[0].question)
        assert a.degraded and a.mode == "bm25" and [c for c, _ in a.trace.fallbacks] == ["model-mismatch"]


# --- the real thing: Infinity on loopback --------------------------------------------------------------------

def _held_in_questions() -> list[str]:
    """The sample questions (paraphrases and off-topic ones) and every third variant of the sample KB."""
    import csv

    variants = [v for line in (REPO / "kb" / "faq_en.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()
                for v in json.loads(line).get("variants") or []]
    with (REPO / "kb" / "faq_zh.csv").open(encoding="utf-8") as f:
        variants += [v for row in csv.DictReader(f) for v in (row.get("相似问题") or "").split("|") if v]
    return [q for q, _ in sample_questions()] + variants[::3]


@pytest.fixture(scope="module")
def infinity(e5_cache: Path, tmp_path_factory):
    from modelserver import infinity_server

    from kbsearch.embed.e5_small import materialize_e5_small

    with infinity_server(materialize_e5_small(e5_cache), tmp_path_factory.mktemp("infinity")) as server:
        yield server


@pytest.mark.slow
def test_infinity_gives_the_in_process_vectors_and_scores(infinity, e5_embedder: E5SmallEmbedder, built, make_engine):
    from modelserver import CE_NAME, E5_NAME

    texts = _held_in_questions()[:40] + ["a" * 3000]  # and one past the 512-token cut
    remote = OpenAIEmbedder(infinity.base_url, E5_NAME, query_prompt=E5_QUERY_PROMPT, document_prompt=E5_DOCUMENT_PROMPT)
    remote.load()
    assert remote.dim == e5_embedder.dim == 384
    for verb in ("embed_queries", "embed_documents"):
        cos = (getattr(remote, verb)(texts) * getattr(e5_embedder, verb)(texts)).sum(axis=1)
        assert cos.min() >= 0.999, (verb, float(cos.min()))
    ce_folder = infinity.models[CE_NAME]
    local = CrossEncoderReranker(str(ce_folder), device="cpu")
    local.load()
    served = RemoteReranker(infinity.base_url, CE_NAME)
    served.load()
    docs = texts[:20]
    np.testing.assert_allclose(served.score(texts[0], docs), local.score(texts[0], docs), atol=1e-5)
    # The whole query path with either reranker: the same order and the same rerank scores.
    for question in ("怎么退货", "When will my parcel arrive?"):
        a, b = (make_engine(reranker=r).ask(question, top_k=4) for r in (local, served))
        assert [h.entry.id for h in a.hits] == [h.entry.id for h in b.hits] and a.hits
        np.testing.assert_allclose([h.scores.rerank for h in a.hits], [h.scores.rerank for h in b.hits], atol=1e-5)


@pytest.mark.slow
def test_ingest_and_ask_through_infinity_then_lose_it_and_get_it_back(infinity, ingested_home, e5_embedder, tmp_path):
    """A KB ingested and asked through Infinity answers as the in-process model does; killing the server
    degrades answers to BM25 (never an error), and they recover when it returns."""
    from modelserver import E5_NAME

    questions = _held_in_questions()
    reference_home, _ = ingested_home
    ref_settings = Settings(home=reference_home, rerank={"backend": "none"})
    reference = QueryEngine(ref_settings, e5_embedder, SharedRerankPlanner(None))
    reference.load()
    try:
        want = {q: _top1(reference.ask(q)) for q in questions}
        in_process_ms = [reference.ask(q).timings_ms.get("total", 0.0) for q in questions[:20]]
    finally:
        reference.close()

    home = tmp_path / "home"
    env = {**os.environ, "KBSEARCH_HOME": str(home), "KBSEARCH_EMBED__BACKEND": "openai",
           "KBSEARCH_EMBED__BASE_URL": infinity.base_url, "KBSEARCH_EMBED__MODEL": E5_NAME,
           "KBSEARCH_EMBED__PROMPT_STYLE": "e5", "KBSEARCH_RERANK__BACKEND": "none",
           "KBSEARCH_MODEL_LOAD_RETRY_S": "1", "KBSEARCH_RETRIEVE__BREAKER_COOLDOWN_S": "1",
           "KBSEARCH_EMBED__MAX_RETRIES": "1"}
    import subprocess

    ingest = subprocess.run(CLI + ["ingest", str(REPO / "kb"), "--json"], env=env, capture_output=True, text=True,
                            timeout=1800)
    assert ingest.returncode == 0, ingest.stderr[-3000:]

    infinity.kill()  # the API starts before its model server
    with running_server(env, expect_ready=False) as base:
        ready = _readyz(base)
        assert not ready["ready"] and "embedding server" in ready["embedder"]
        status, body = post(base + "/ask", {"question": questions[0]})
        assert status == 200 and body["degraded"] and body["mode"] == "bm25"

        infinity.start()
        _until(lambda: _readyz(base)["ready"], "the server never loaded the embedder once Infinity was up")
        got, remote_ms = {}, []
        for q in questions:
            status, body = post(base + "/ask", {"question": q})
            assert status == 200 and not body["degraded"], body
            got[q] = _top1_of_body(body)
            remote_ms.append(body["timings_ms"].get("total", 0.0))
        agree = sum(got[q] == want[q] for q in questions)
        print(f"\ntop-1 agreement remote vs in-process: {agree}/{len(questions)}; /ask total ms p50 "
              f"remote {np.median(remote_ms):.1f} vs in-process {np.median(in_process_ms):.1f}")
        assert agree == len(questions), [(q, want[q], got[q]) for q in questions if got[q] != want[q]]

        infinity.kill()  # mid-run
        for q in questions[:5]:
            status, body = post(base + "/ask", {"question": q})
            assert status == 200 and body["degraded"] and body["mode"] == "bm25", body

        infinity.start()
        _until(lambda: not post(base + "/ask", {"question": questions[1]})[1]["degraded"],
               "answers never recovered once Infinity was back")
        status, body = post(base + "/ask", {"question": questions[2]})
        assert status == 200 and not body["degraded"] and _top1_of_body(body) == want[questions[2]]


def _top1(answer) -> str:
    return answer.best.entry.id if answer.answered else "handoff"


def _top1_of_body(body: dict) -> str:
    return body["results"][0]["id"] if body["answered"] else "handoff"


def _readyz(base: str) -> dict:
    import urllib.error

    try:
        return get(base + "/readyz")
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def _until(check, message: str, guard_s: float = 300) -> None:
    """Poll ``check`` until it holds; ``guard_s`` only guards against a hang."""
    deadline = time.monotonic() + guard_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(message)
