"""Bad state on disk never takes a server down: a corrupt active build at start is replaced by the newest good
one (and /readyz and /metrics say so), a running server keeps the build it holds when ACTIVE goes bad, a
mistyped thresholds.json is ignored with a warning, /readyz never answers 500 and names no path, every KB under
the home is loaded at start, and the CLI exits 3 on a corrupt index."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kbsearch.api.app import create_app
from kbsearch.cli import main
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.index.builder import BuildResult, build_index
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from servers import get, post, running_server
from support import SMALL_KB, one_chunk


def _build(settings: Settings, kb: str = "default", n: int = 4) -> BuildResult:
    entries = SMALL_KB[:n]
    return build_index(settings, kb, entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})


def _app(settings: Settings, embedder: object | None = None) -> TestClient:
    engine = QueryEngine(settings, embedder or HashEmbedder(dim=64), make_rerank_planner(settings))
    return TestClient(create_app(settings, engine))


def _metric(client: TestClient, line_start: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


CORRUPTIONS = {  # what breaks the newest build, or its pointer (then the newest build itself is the good one)
    "truncated manifest": lambda b, kb: _truncate(b / "manifest.json"),
    "truncated entries": lambda b, kb: _truncate(b / "entries.jsonl"),
    "vectors and BM25 broken": lambda b, kb: ((b / "vectors.faiss").write_bytes(b"\0" * 64),
                                              (b / "bm25.bin").write_text("{", encoding="utf-8")),
    "empty ACTIVE": lambda b, kb: (kb / "ACTIVE").write_text("", encoding="utf-8"),
    "ACTIVE names a deleted build": lambda b, kb: (kb / "ACTIVE").write_text("20990101T000000Z-000000\n"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_server_starting_on_a_corrupt_active_build_serves_the_newest_good_one(settings, corrupt):
    older, second, newest = _build(settings, n=4), _build(settings, n=4), _build(settings, n=3)
    CORRUPTIONS[corrupt](newest.path, newest.path.parent.parent)
    good = newest if "ACTIVE" in corrupt else second
    with _app(settings) as client:
        body = client.post("/ask", json={"question": "如何申请退货？"}).json()
        assert body["answered"] and body["index_version"] == good.build_id != older.build_id
        ready = client.get("/readyz")
        kb = ready.json()["kbs"]["default"]
        assert ready.status_code == 200 and kb["build"] == good.build_id
        assert f"serving the newest good build {good.build_id} instead" in kb["fallback"]
        assert str(settings.home) not in ready.text and "/tmp" not in ready.text
        assert _metric(client, 'kbsearch_build_fallback{kb="default"}') == 1.0
        assert _metric(client, f'kbsearch_build_info{{index_version="{good.build_id}",kb="default"') == 1.0


def test_a_kb_with_no_good_build_is_not_ready_and_never_a_500(settings):
    only = _build(settings)
    _truncate(only.path / "entries.jsonl")
    with _app(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["kbs"]["default"]["build"] is None
        assert "entries.jsonl fails its checksum" in ready.json()["kbs"]["default"]["error"]
        body = client.post("/ask", json={"question": "如何申请退货？"}).json()
        assert body["mode"] == "canned" and body["handoff"]["code"] == "index-unavailable"
        assert str(settings.home) not in json.dumps(body) + ready.text
        assert _metric(client, 'kbsearch_build_fallback{kb="default"}') == 1.0
        assert _metric(client, "kbsearch_build_info{") is None


@pytest.mark.parametrize("pointer", ["", "garbage/../../etc", None], ids=["empty", "a path", "deleted"])
def test_a_running_server_keeps_the_build_it_holds_when_active_goes_bad(settings, built, pointer):
    active = settings.home / "default" / "ACTIVE"
    with _app(settings) as client:
        assert client.post("/ask", json={"question": "如何申请退货？"}).json()["answered"]
        if pointer is None:
            active.unlink()
        else:
            active.write_text(pointer, encoding="utf-8")
        r = client.post("/ask", json={"question": "如何申请退货？"})
        assert r.status_code == 200 and r.json()["answered"] and r.json()["index_version"] == built.build_id
        kb = client.get("/readyz").json()["kbs"]["default"]
        assert kb["build"] == built.build_id and f"still serving build {built.build_id}" in kb["fallback"]
        active.write_text(built.build_id + "\n", encoding="utf-8")  # repaired
        client.post("/ask", json={"question": "如何申请退货？"})
        assert client.get("/readyz").json()["kbs"]["default"]["fallback"] is None


@pytest.mark.parametrize("text", [
    "not json {", "[1, 2]", '{"vector": "0.5"}', '{"vector": {"threshold": "high"}}',
    '{"vector": {"threshold": true}}', '{"vector": {"threshold": 0.3, "margin": "wide"}}', '{"vector": {}}',
], ids=["not JSON", "a list", "a string", "a text threshold", "a bool", "a text margin", "no threshold"])
def test_a_mistyped_thresholds_file_is_ignored_with_a_warning(settings, built, make_engine, caplog, text):
    (settings.home / "default" / "thresholds.json").write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="kbsearch.decide.thresholds"):
        a = make_engine(settings).ask("如何申请退货？")
    assert a.answered and a.mode == "vector" and a.decision.threshold_source == "setting"
    assert a.decision.threshold == settings.decide.threshold_vector
    assert any("thresholds.json" in r.getMessage() for r in caplog.records)


def test_a_valid_calibration_still_applies_beside_a_bad_one(settings, built, make_engine):
    engine = make_engine(settings)
    good = {"threshold": 0.2, "margin": 0.0, "model_id": engine.embedder.model_id, "first_stage": "fused",
            "reranker": "none", "date": "2026-11-22"}
    (settings.home / "default" / "thresholds.json").write_text(json.dumps({"vector": good, "rerank": {"threshold": "x"}}))
    a = engine.ask("如何申请退货？")
    assert a.decision.threshold == 0.2 and a.decision.threshold_source.startswith("calibrated")


def test_a_corrupt_reranker_card_is_reported_not_a_500(settings, built):
    folder = settings.home / "default" / "rerankers"
    (folder / "0123abcd").mkdir(parents=True)
    (folder / "0123abcd" / "kbsearch_pair_model.json").write_text('{"self_check": {"use": tr', encoding="utf-8")
    (folder / "ACTIVE").write_text("0123abcd\n", encoding="utf-8")
    with _app(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert "0123abcd is incomplete or damaged" in ready.json()["kbs"]["default"]["reranker"]
        body = client.post("/ask", json={"question": "如何申请退货？"}).json()
        assert body["answered"] and body["handoff"] is None and body["mode"] == "vector"
        assert client.get("/metrics").status_code == 200


def test_readyz_names_no_absolute_path(settings, built, tmp_path):
    class MissingModel(HashEmbedder):
        def load(self) -> None:
            raise OSError(f"[Errno 2] No such file or directory: '{tmp_path}/models/no-such-model/config.json'")

    with _app(settings, MissingModel(dim=64)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["embedder"] == (
            "OSError: [Errno 2] No such file or directory: '…/config.json'")
        assert str(tmp_path) not in ready.text


def test_every_kb_under_the_home_is_loaded_at_start(settings):
    """A home without a KB named ``default`` is ready once its KBs load, before any question names them."""
    _build(settings, "shop"), _build(settings, "faq", n=2)
    (settings.home / "notes").mkdir()  # no ACTIVE: not a KB
    with _app(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and sorted(ready.json()["kbs"]) == ["faq", "shop"]
        assert ready.json()["kbs"]["faq"]["entries"] == 2


def test_a_broken_kb_among_several_makes_the_server_not_ready_and_says_which(settings):
    _build(settings, "shop")
    broken = _build(settings, "faq")
    _truncate(broken.path / "manifest.json")
    with _app(settings) as client:
        ready = client.get("/readyz")
        kbs = ready.json()["kbs"]
        assert ready.status_code == 503 and kbs["shop"]["vector"] == "ok" and kbs["faq"]["build"] is None
        assert client.post("/ask", json={"question": "如何申请退货？", "kb": "shop"}).json()["answered"]


@pytest.fixture()
def cli_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("KBSEARCH_HOME", str(home))
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_RERANK__BACKEND", "none")
    return home


def test_the_cli_exits_3_on_a_corrupt_index(cli_home, tmp_path, capsys):
    settings = Settings(home=cli_home, embed={"backend": "hash"}, rerank={"backend": "none"})
    good = _build(settings)
    bad = _build(settings)
    _truncate(bad.path / "entries.jsonl")
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"query": "怎么退货", "gold": ["ret-1"]}\n', encoding="utf-8")
    for argv in (["ask", "怎么退货"], ["rebuild-index"], ["review", "publish"], ["review", "attach", "--faq", "ret-1", "q"],
                 ["calibrate", "--queries", str(queries)], ["builds", "rollback", bad.build_id], ["ask", "怎么退货", "--json"]):
        assert main(argv) == 3, argv
        err = capsys.readouterr().err
        assert "entries.jsonl fails its checksum" in err and str(cli_home) not in err, argv
    (cli_home / "default" / "ACTIVE").write_text("", encoding="utf-8")
    assert main(["ask", "怎么退货"]) == 3 and "ACTIVE pointer" in capsys.readouterr().err
    assert main(["builds", "rollback", good.build_id]) == 0  # the repair
    assert main(["ask", "怎么退货"]) == 0


@pytest.mark.slow
def test_a_real_server_on_a_home_without_default_is_ready_and_rides_out_bad_state(tmp_path):
    """`kbsearch serve` in its own process (the hash embedder): a home whose only KB is ``shop`` and whose active
    build is truncated answers the readiness probe before any question, from the newest good build, and keeps
    answering when ACTIVE is emptied under it."""
    settings = Settings(home=tmp_path / "home", embed={"backend": "hash"}, rerank={"backend": "none"})
    good, bad = _build(settings, "shop"), _build(settings, "shop", n=3)
    _truncate(bad.path / "entries.jsonl")
    env = {**os.environ, "KBSEARCH_HOME": str(settings.home), "KBSEARCH_EMBED__BACKEND": "hash",
           "KBSEARCH_RERANK__BACKEND": "none", "KBSEARCH_DECIDE__THRESHOLD_VECTOR": "0.5"}
    with running_server(env) as base:
        ready = get(base + "/readyz")
        assert ready["ready"] and list(ready["kbs"]) == ["shop"] and ready["kbs"]["shop"]["build"] == good.build_id
        assert "serving the newest good build" in ready["kbs"]["shop"]["fallback"] and str(tmp_path) not in str(ready)
        status, body = post(base + "/ask", {"question": "如何申请退货？", "kb": "shop"})
        assert status == 200 and body["answered"] and body["index_version"] == good.build_id
        (settings.home / "shop" / "ACTIVE").write_text("", encoding="utf-8")
        status, body = post(base + "/ask", {"question": "如何申请退货？", "kb": "shop"})
        assert status == 200 and body["answered"] and body["index_version"] == good.build_id
        with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
            assert 'kbsearch_build_fallback{kb="shop"} 1.0' in r.read().decode()
