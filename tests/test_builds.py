"""``kbsearch builds list|show|rollback`` and ``/admin/api/builds``: a KB's builds on disk, and rolling back in
one command (validated first, under the writer lock, picked up by a running server at once)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from kbsearch.api.app import create_app
from kbsearch.cli import main
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.index.builder import BuildResult, build_index
from kbsearch.index.lock import writer_lock
from kbsearch.index.store import active_build_id
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from support import SMALL_KB, one_chunk

AUTH = {"Authorization": "Bearer admin-secret-0123456789"}


def _build(settings: Settings, n: int) -> BuildResult:
    entries = SMALL_KB[:n]
    return build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64),
                       {"kept": n, "files": ["/somewhere/faq.csv"], "stage_seconds": {"parse": 0.1}})


@pytest.fixture()
def cli_settings(tmp_path, monkeypatch) -> Settings:
    home = tmp_path / "home"
    for name, value in (("HOME", str(home)), ("EMBED__BACKEND", "hash"), ("RERANK__BACKEND", "none"),
                        ("DECIDE__THRESHOLD_VECTOR", "0.5")):
        monkeypatch.setenv(f"KBSEARCH_{name}", value)
    return Settings(home=home, embed={"backend": "hash"}, rerank={"backend": "none"})


def test_list_show_and_rollback_from_the_cli(cli_settings, capsys):
    first, second, third = (_build(cli_settings, n) for n in (2, 3, 4))
    assert main(["builds", "list", "--kb", "default", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [b["build_id"] for b in listed] == [third.build_id, second.build_id, first.build_id]
    assert [b["active"] for b in listed] == [True, False, False] and [b["entries"] for b in listed] == [4, 3, 2]
    assert listed[0]["model"] == "kbsearch/hash-ngram-v1" and listed[0]["rows"] == third.rows and listed[0]["created_at"]
    assert main(["builds", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"* {third.build_id}") and lines[1].startswith(f"  {second.build_id}")

    assert main(["builds", "--kb", "default", "show", first.build_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["active"] is False and shown["manifest"]["counts"]["entries"] == 2
    assert shown["report"]["kept"] == 2 and shown["report"]["stage_seconds"] == {"parse": 0.1}
    assert "files" not in shown["report"]  # lists (file names, rejected rows) are left out

    assert main(["builds", "rollback", first.build_id]) == 0
    assert f"serves build {first.build_id} (was {third.build_id})" in capsys.readouterr().out
    assert active_build_id(cli_settings.kb_dir("default")) == first.build_id
    assert main(["ask", "How do I reset my password?", "--json"]) == 0  # en-pw is only in the later builds
    body = json.loads(capsys.readouterr().out)
    assert body["index_version"] == first.build_id and "en-pw" not in [r["id"] for r in body["results"]]


def test_cli_rollback_makes_decisions_published_after_the_target_pending_again(cli_settings, capsys):
    first = _build(cli_settings, 2)
    assert main(["review", "--actor", "li", "attach", "--faq", "pay-1", "能用微信付款吗"]) == 0
    assert main(["review", "publish"]) == 0
    capsys.readouterr()
    assert main(["builds", "rollback", first.build_id]) == 0
    assert "1 published decision(s) are not in this build and are pending again" in capsys.readouterr().out
    assert main(["review", "list", "--json"]) == 0
    assert [d["state"] for d in json.loads(capsys.readouterr().out)] == ["pending"]


def test_rollback_refuses_a_build_that_does_not_load_and_names_what_is_missing(cli_settings, capsys):
    first, second = _build(cli_settings, 2), _build(cli_settings, 3)
    (first.path / "vectors.faiss").write_bytes(b"\0" * 32)
    assert main(["builds", "rollback", first.build_id]) == 3
    err = capsys.readouterr().err
    assert "cannot be rolled back to: vector index" in err and str(cli_settings.home) not in err
    assert active_build_id(cli_settings.kb_dir("default")) == second.build_id
    assert main(["builds", "rollback", "20990101T000000Z-000000"]) == 4
    assert main(["builds", "rollback", "../../etc"]) == 4
    assert main(["builds", "list", "--kb", "nope"]) == 4
    assert main(["builds", "list", "--kb", "../x"]) == 2
    assert main(["builds", "rollback", second.build_id]) == 0 and "already did" in capsys.readouterr().out


def test_old_builds_are_kept_up_to_the_retention_setting(cli_settings):
    settings = cli_settings.updated(index={"keep_builds": 2})
    made = [_build(settings, 3).build_id for _ in range(4)]
    assert sorted(p.name for p in settings.kb_dir("default").joinpath("builds").iterdir()) == sorted(made[-2:])


@pytest.fixture()
def admin(settings) -> TestClient:
    settings = settings.updated(admin_keys=["alice:admin-secret-0123456789"], index={"lock_timeout_s": 0.2})
    engine = QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings))
    with TestClient(create_app(settings, engine)) as client:
        yield client


def test_admin_routes_list_show_and_roll_back(settings, admin):
    first, second = _build(settings, 2), _build(settings, 4)
    assert admin.post("/ask", json={"question": "How do I reset my password?"}).json()["index_version"] == second.build_id
    listed = admin.get("/admin/api/builds", params={"kb": "default"}, headers=AUTH).json()
    assert listed["kb"] == "default" and [(b["build_id"], b["active"]) for b in listed["builds"]] == [
        (second.build_id, True), (first.build_id, False)]
    shown = admin.get(f"/admin/api/builds/{first.build_id}", headers=AUTH).json()
    assert shown["manifest"]["build_id"] == first.build_id and "/somewhere" not in json.dumps(shown)
    r = admin.post("/admin/api/builds/rollback", json={"kb": "default", "build_id": first.build_id}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"kb": "default", "build_id": first.build_id,
                                                  "previous": second.build_id, "changed": True, "review": {
                                                      "build_id": first.build_id, "pending": [], "published": [],
                                                      "undoing": [], "undone": []}, "kb_reranker": None}
    assert admin.get("/readyz").json()["kbs"]["default"]["build"] == first.build_id  # loaded before any question
    assert admin.post("/ask", json={"question": "怎么退货"}).json()["index_version"] == first.build_id


def test_admin_rollback_errors_are_clean(settings, admin, monkeypatch):
    first, second = _build(settings, 2), _build(settings, 4)
    rollback = "/admin/api/builds/rollback"
    assert admin.post(rollback, json={"kb": "default", "build_id": "20990101T000000Z-000000"},
                      headers=AUTH).status_code == 404
    assert admin.post(rollback, json={"kb": "default", "build_id": "../etc"}, headers=AUTH).status_code == 422
    assert admin.post(rollback, json={"kb": "../x", "build_id": first.build_id}, headers=AUTH).status_code == 422
    assert admin.post(rollback, json={"kb": "default", "build_id": first.build_id}).status_code == 401
    (first.path / "entries.jsonl").write_text("{}\n", encoding="utf-8")
    r = admin.post(rollback, json={"kb": "default", "build_id": first.build_id}, headers=AUTH)
    assert r.status_code == 503 and "entries.jsonl fails its checksum" in r.json()["detail"]
    assert str(settings.home) not in r.text
    with writer_lock(settings.kb_dir("default"), "kbsearch ingest"):  # this thread writes; the route's thread waits
        r = admin.post(rollback, json={"kb": "default", "build_id": second.build_id}, headers=AUTH)
    assert r.status_code == 429 and "'default' is busy" in r.json()["detail"] and "kbsearch ingest" in r.json()["detail"]
    assert active_build_id(settings.kb_dir("default")) == second.build_id


def test_a_server_loads_new_builds_and_new_kbs_before_it_lists_them(settings, make_engine):
    """The watcher (``index.watch_interval_s``) loads each build and each KB published after the start in the
    background: /readyz lists a KB only once it is loaded, and the first question finds the new build in memory."""
    import time

    s = settings.updated(index={"watch_interval_s": 0.05})
    first = _build(s, 2)
    engine = make_engine(s)
    assert set(engine.status()["kbs"]) == {"default"} and engine.refresh() == []
    engine.watch()
    entries = SMALL_KB[:3]
    shop = build_index(s, "shop", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    second = _build(s, 4)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        kbs = engine.status()["kbs"]
        assert all(v["vector"] == "ok" for v in kbs.values())  # nothing listed before it is loaded
        if kbs.get("shop", {}).get("build") == shop.build_id and kbs["default"]["build"] == second.build_id:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the watcher did not load the new builds: {engine.status()['kbs']}")
    assert first.build_id != second.build_id and engine.status()["ready"]
    assert engine.ask("怎么退货", kb="shop").index_version == shop.build_id
