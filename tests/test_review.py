"""Operators close the loop: dashboard data from the question log, decisions, publish, undo, import, export,
and the next ingest keeping the decisions (the admin API with the hash fake; the CLI on a real folder)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from fastapi.testclient import TestClient

from kbsearch.api.app import create_app
from kbsearch.cli import main
from kbsearch.embed.fake import HashEmbedder
from kbsearch.index.builder import build_index
from kbsearch.index.store import active_build_id, load_build
from kbsearch.ingest.parse import parse_file
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from support import SMALL_KB, one_chunk

ADMIN = "admin-secret-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
OFF_TOPIC = "Who won the 1998 football world cup?"


@pytest.fixture()
def client(settings, built):
    s = settings.updated(admin_keys=[f"olga:{ADMIN}"])
    with TestClient(create_app(s, QueryEngine(s, HashEmbedder(dim=64), make_rerank_planner(s)))) as c:
        yield c


def ask(client, question, rid=None):
    return client.post("/ask", json={"question": question}, headers={"X-Request-ID": rid} if rid else {}).json()


def flush(client):
    assert client.app.state.ops.log.flush(10)


def admin(client, method, path, **kw):
    r = client.request(method, f"/admin/api{path}", headers=AUTH, **kw)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def test_dashboard_reports_exactly_what_was_asked(client):
    for i, q in enumerate(["如何申请退货？", "怎么退货", "How do I reset my password?"]):
        ask(client, q, f"a{i}")
    ask(client, OFF_TOPIC, "h1")
    ask(client, "Can I pay with bitcoin on the moon?", "h2")
    client.post("/feedback", json={"request_id": "a1", "helpful": False})
    client.post("/feedback", json={"request_id": "a0", "helpful": True, "clicked_id": "ret-1"})
    flush(client)
    o = admin(client, "GET", "/overview", params={"kb": "default"})
    assert (o["total"], o["answered"], o["handed_off"], o["handoff_rate"]) == (5, 3, 2, 0.4)
    assert o["reasons"] == {"below-threshold": 2} and o["modes"] == {"vector": 5} and o["degraded"] == 0
    assert o["feedback"] == {"helpful": 1, "unhelpful": 1, "clicked": 1} and o["latency_ms"]["p95"] > 0
    hist = admin(client, "GET", "/scores")["kinds"]["vector"]
    assert hist["threshold"] == 0.5
    assert sum(b["answered"] for b in hist["bins"]) == 3 and sum(b["handed_off"] for b in hist["bins"]) == 2
    assert all(b["lo"] >= 0.5 for b in hist["bins"] if b["answered"]) and all(b["hi"] <= 0.52 for b in hist["bins"] if b["handed_off"])
    faqs = admin(client, "GET", "/faqs")
    assert [(f["faq_id"], f["views"]) for f in faqs["top"]] == [("ret-1", 2), ("en-pw", 1)]
    assert faqs["top"][0]["help_rate"] == 0.5 and faqs["top"][0]["click_rate"] == 0.5
    ts = admin(client, "GET", "/timeseries")["points"]
    assert sum(p["total"] for p in ts) == 5
    log = admin(client, "GET", "/questions", params={"status": "handed_off"})
    assert log["total"] == 2 and {r["request_id"] for r in log["rows"]} == {"h1", "h2"}
    assert [r["request_id"] for r in admin(client, "GET", "/questions", params={"status": "unhelpful"})["rows"]] == ["a1"]
    assert [r["request_id"] for r in admin(client, "GET", "/questions", params={"q": "bitcoin"})["rows"]] == ["h2"]
    assert admin(client, "GET", "/questions", params={"since": "2999-01-01"})["total"] == 0
    assert client.get("/admin/api/questions", params={"since": "yesterday"}, headers=AUTH).status_code == 422


def test_attach_publish_undo(client, settings):
    before = ask(client, OFF_TOPIC, "h1")
    assert not before["answered"]
    flush(client)
    made = admin(client, "POST", "/decisions", json={"kb": "default", "action": "attach", "questions": [OFF_TOPIC],
                                                    "request_ids": ["h1"], "faq_id": "en-pw"})
    d = made["decisions"][0]
    assert (d["actor"], d["state"], d["faq_id"], d["request_id"], made["pending"]) == ("olga", "pending", "en-pw", "h1", 1)
    assert ask(client, OFF_TOPIC)["answered"] is False  # nothing served until published
    pub = admin(client, "POST", "/publish", json={"kb": "default"})
    assert pub["applied"] == 1 and pub["embedded_rows"] == 1 and pub["reused_rows"] > 0
    after = ask(client, OFF_TOPIC)
    assert after["answered"] and after["results"][0]["id"] == "en-pw" and after["index_version"] == pub["build_id"]
    listed = admin(client, "GET", "/decisions")
    assert listed["pending"] == 0 and listed["decisions"][0]["state"] == "published"
    assert listed["decisions"][0]["build_id"] == pub["build_id"]
    assert admin(client, "GET", "/questions", params={"q": "h1"})["rows"][0]["review"] == "attach:en-pw"

    undone = admin(client, "POST", f"/decisions/{d['id']}/undo")["decision"]
    assert undone["state"] == "undoing" and undone["undone_by"] == "olga"
    pub2 = admin(client, "POST", "/publish", json={"kb": "default"})
    assert pub2["removed"] == 1 and pub2["embedded_rows"] == 0
    assert ask(client, OFF_TOPIC)["answered"] is False
    assert admin(client, "GET", "/decisions")["decisions"][0]["state"] == "undone"
    assert admin(client, "POST", "/publish", json={"kb": "default"})["build_id"] is None  # nothing pending
    r = client.post(f"/admin/api/decisions/{d['id']}/undo", headers=AUTH)
    assert r.status_code == 422 and "already undone" in r.json()["detail"]


def test_rollback_puts_decisions_back_in_step_with_the_build_served(client, built):
    """A rollback to a build made before a publish makes that publish's decisions pending again (the service no
    longer answers with them; the next publish re-applies them); rolling forward to a build that still has an
    undone decision's change makes it "undoing" again (the next publish takes it out)."""
    d = admin(client, "POST", "/decisions", json={"kb": "default", "action": "attach", "questions": [OFF_TOPIC],
                                                 "faq_id": "en-pw"})["decisions"][0]
    published = admin(client, "POST", "/publish", json={"kb": "default"})["build_id"]
    back = admin(client, "POST", "/builds/rollback", json={"kb": "default", "build_id": built.build_id})
    assert back["changed"] and back["review"] == {"build_id": built.build_id, "pending": [d["id"]], "published": [],
                                                  "undoing": [], "undone": []}
    listed = admin(client, "GET", "/decisions")
    assert (listed["pending"], listed["decisions"][0]["state"]) == (1, "pending")
    assert ask(client, OFF_TOPIC)["answered"] is False  # what the dashboard says is what is served
    assert admin(client, "POST", "/publish", json={"kb": "default"})["applied"] == 1
    assert ask(client, OFF_TOPIC)["answered"] and admin(client, "GET", "/decisions")["decisions"][0]["state"] == "published"

    admin(client, "POST", f"/decisions/{d['id']}/undo")
    assert admin(client, "POST", "/publish", json={"kb": "default"})["removed"] == 1
    forward = admin(client, "POST", "/builds/rollback", json={"kb": "default", "build_id": published})
    assert forward["review"]["undoing"] == [d["id"]] and ask(client, OFF_TOPIC)["answered"]
    assert admin(client, "GET", "/decisions")["decisions"][0]["state"] == "undoing"
    assert admin(client, "POST", "/publish", json={"kb": "default"})["removed"] == 1
    assert ask(client, OFF_TOPIC)["answered"] is False


def test_rollback_leaves_an_undone_decision_undone_in_a_build_made_after_the_undo(client, settings):
    """The input files may bring an undone question back on their own: that build's variant is not the decision's
    to take out."""
    d = admin(client, "POST", "/decisions", json={"kb": "default", "action": "attach", "questions": [OFF_TOPIC],
                                                 "faq_id": "en-pw"})["decisions"][0]
    admin(client, "POST", f"/decisions/{d['id']}/undo")
    entries = [dataclasses.replace(e, variants=(*e.variants, OFF_TOPIC)) if e.id == "en-pw" else e for e in SMALL_KB[:4]]
    later = build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})
    back = admin(client, "POST", "/builds/rollback", json={"kb": "default", "build_id": later.build_id})
    assert not back["changed"] and back["review"]["undoing"] == []
    assert admin(client, "GET", "/decisions")["decisions"][0]["state"] == "undone"


def test_draft_a_new_faq_from_questions(client):
    q1, q2 = "Do you ship to Mars?", "Can you deliver to Mars?"
    made = admin(client, "POST", "/decisions", json={
        "kb": "default", "action": "draft", "questions": [q2],
        "draft": {"question": q1, "answer": "No, we only ship on Earth.", "section": "Shipping", "id": "mars"}})
    assert [(d["action"], d["faq_id"], d["question"]) for d in made["decisions"]] == [("draft", "mars", q1), ("attach", "mars", q2)]
    admin(client, "POST", "/publish", json={"kb": "default"})
    for q in (q1, q2):
        body = ask(client, q)
        assert body["answered"] and body["results"][0]["id"] == "mars" and body["answer"] == "No, we only ship on Earth."
    assert admin(client, "GET", "/entries", params={"q": "mars"})["entries"] == [
        {"faq_id": "mars", "question": q1, "section": "Shipping"}]
    # a question attached later to the published draft joins that FAQ
    q3 = "Is delivery to Mars possible?"
    admin(client, "POST", "/decisions", json={"kb": "default", "action": "attach", "questions": [q3], "faq_id": "mars"})
    assert admin(client, "POST", "/publish", json={"kb": "default"})["embedded_rows"] == 1
    assert ask(client, q3)["results"][0]["id"] == "mars" and ask(client, q3)["answered"]
    # undoing the draft takes its attached questions along, and the FAQ out of the build
    admin(client, "POST", f"/decisions/{made['decisions'][0]['id']}/undo")
    assert {d["state"] for d in admin(client, "GET", "/decisions")["decisions"]} == {"undoing"}
    admin(client, "POST", "/publish", json={"kb": "default"})
    assert ask(client, q1)["answered"] is False


def test_bad_decisions_name_the_problem(client):
    def refused(body, status, text):
        r = client.post("/admin/api/decisions", json=body, headers=AUTH)
        assert r.status_code == status and text in json.dumps(r.json()), r.text

    base = {"kb": "default", "action": "attach", "questions": ["q"]}
    refused({**base, "faq_id": "no-such"}, 422, "unknown FAQ id 'no-such'")
    refused({**base}, 422, "faq_id must be a non-empty text")
    refused({**base, "action": "delete", "faq_id": "en-pw"}, 422, "action")
    refused({**base, "faq_id": "en-pw", "questions": ["x" * 2001]}, 422, "questions")
    refused({**base, "faq_id": "en-pw", "kb": "nope"}, 404, "nope")
    refused({**base, "faq_id": "en-pw", "kb": "../etc"}, 422, "kb")
    refused({"kb": "default", "action": "draft", "questions": [], "draft": {"question": "q", "answer": "a", "id": "en-pw"}},
            422, "already exists")


def test_gaps_cluster_handed_off_questions_and_leave_decided_ones_out(client):
    for i in range(3):
        ask(client, "Can I pay with bitcoin?", f"b{i}")
    ask(client, OFF_TOPIC, "w1")
    flush(client)
    gaps = admin(client, "GET", "/gaps", params={"kb": "default"})
    assert gaps["clustered"] == 4 and "agglomerative" in gaps["algorithm"]
    top = gaps["clusters"][0]
    assert top["size"] == 3 and {q["request_id"] for q in top["questions"]} == {"b0", "b1", "b2"}
    assert top["nearest"] and all(n["faq_id"] in {"ret-1", "pay-1", "en-ship", "en-pw"} for n in top["nearest"])
    admin(client, "POST", "/decisions", json={"kb": "default", "action": "out_of_scope",
                                              "questions": [q["question"] for q in top["questions"]],
                                              "request_ids": [q["request_id"] for q in top["questions"]]})
    again = admin(client, "GET", "/gaps", params={"kb": "default"})
    assert again["clustered"] == 1 and again["clusters"][0]["questions"][0]["request_id"] == "w1"


def test_bulk_import_keeps_good_rows_and_names_bad_ones(client):
    csv_text = "question,faq_id\n我想退掉这个订单,ret-1\n,pay-1\n这个怎么付钱,no-such\nWhere is my parcel?,en-ship\n"
    r = client.post("/admin/api/decisions/import", params={"kb": "default"}, headers=AUTH,
                    files={"file": ("labels.csv", csv_text.encode("utf-8"), "text/csv")})
    body = r.json()
    assert r.status_code == 200 and body["imported"] == 2 and body["pending"] == 2
    assert body["rejected"] == ["labels.csv:line 3: empty question", "labels.csv:line 4: unknown FAQ id 'no-such'"]
    admin(client, "POST", "/publish", json={"kb": "default"})
    assert ask(client, "我想退掉这个订单")["results"][0]["id"] == "ret-1"
    r = client.post("/admin/api/decisions/import", params={"kb": "default"}, headers=AUTH,
                    files={"file": ("labels.csv", b"text,label_name\nx,y\n", "text/csv")})
    assert r.status_code == 422 and "faq_id" in r.json()["detail"]


def test_export_is_an_ingest_file(client, tmp_path):
    admin(client, "POST", "/decisions", json={"kb": "default", "action": "attach", "questions": ["忘记密码了"], "faq_id": "en-pw"})
    admin(client, "POST", "/decisions", json={"kb": "default", "action": "draft", "questions": [],
                                              "draft": {"question": "Do you ship to Mars?", "answer": "No.", "id": "mars"}})
    for fmt in ("jsonl", "csv"):
        r = client.get("/admin/api/decisions/export", params={"kb": "default", "format": fmt}, headers=AUTH)
        path = tmp_path / f"review.{fmt}"
        path.write_bytes(r.content)
        parsed = parse_file(path)
        assert parsed.error is None and not parsed.rejected
        by_id = {rec.fields["id"]: rec.fields for rec in parsed.records}
        assert set(by_id) == {"en-pw", "mars"}
        assert "忘记密码了" in by_id["en-pw"]["variants"] and by_id["en-pw"]["question"] == "How do I reset my password?"


def test_cli_review_and_reingest_keep_decisions(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    src = tmp_path / "faqs.jsonl"
    src.write_text("".join(json.dumps({"id": e.id, "question": e.question, "answer": e.answer,
                                       "variants": list(e.variants), "section": e.section}, ensure_ascii=False) + "\n"
                           for e in SMALL_KB[:4]), encoding="utf-8")
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_RERANK__BACKEND", "none")
    run = lambda *argv: main(["--home", str(home), *argv])  # noqa: E731
    assert run("ingest", str(src)) == 0
    assert run("review", "--actor", "li", "attach", "--faq", "pay-1", "能用微信付款吗") == 0
    assert run("review", "draft", "--question", "发票怎么开？", "--answer", "在订单页申请电子发票。", "--id", "inv-1", "怎么开发票") == 0
    assert run("review", "publish") == 0
    out = capsys.readouterr().out
    assert "3 decisions applied, 0 removed; 4 rows embedded" in out  # 1 variant; the draft: question, variant, answer
    entries = load_build(home / "default").entries
    assert "能用微信付款吗" in entries["pay-1"].variants and entries["inv-1"].variants == ("怎么开发票",)
    first = active_build_id(home / "default")
    assert run("ingest", str(src)) == 0  # the source files do not have the operators' work: ingest keeps it
    entries = load_build(home / "default").entries
    assert active_build_id(home / "default") != first
    assert "能用微信付款吗" in entries["pay-1"].variants and entries["inv-1"].answer == "在订单页申请电子发票。"
    capsys.readouterr()
    assert run("review", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {d["state"] for d in listed} == {"published"} and {d["actor"] for d in listed} >= {"li"}
    assert run("review", "attach", "--faq", "nope", "q") == 2
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"question": "退款多久到账", "faq_id": "ret-1"}\n{"question": "x", "faq_id": "bad"}\n', encoding="utf-8")
    assert run("review", "import", str(labels)) == 0
    assert "rejected: labels.jsonl:line 2: unknown FAQ id 'bad'" in capsys.readouterr().err
    assert run("review", "export", "--out", str(tmp_path / "out.jsonl")) == 0
    assert {json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()} == {"pay-1", "inv-1", "ret-1"}
