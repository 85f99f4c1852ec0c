"""The question log and the review desk on a real PostgreSQL server, as the README promises ("a PostgreSQL URL
works unchanged for several replicas").

A module-scoped fixture starts Debian's PostgreSQL on loopback (``tests/postgres.py``); each test gets a
fresh database on it. The tests drive the same public code as the SQLite tests (``open_database``,
``QuestionLog``, the app's ``/ask``, ``/feedback`` and admin API) with ``questionlog.url`` set to the
PostgreSQL URL, and the dashboard scenario is also run on SQLite and compared answer for answer. The
server runs in a time zone other than UTC (Asia/Shanghai), so a timestamp stored or read in local time
would show.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from kbsearch.api.app import create_app
from kbsearch.cli import main
from kbsearch.codes import FallbackCause
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.questionlog import report
from kbsearch.questionlog.db import FeedbackRecord, QuestionRecord, open_database
from kbsearch.questionlog.writer import QuestionLog
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from kbsearch.telemetry.trace import Trace
from postgres import PostgresServer, running_postgres
from test_review import ADMIN, AUTH, OFF_TOPIC, admin, ask, flush

pytestmark = pytest.mark.slow

_databases = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own on loopback, for this module."""
    with running_postgres() as server:
        yield server


@pytest.fixture()
def pg_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the test server."""
    return postgres.create_database(f"kbsearch_{next(_databases)}")


@contextlib.contextmanager
def replica(settings: Settings, url: str | None, **questionlog: Any) -> Iterator[TestClient]:
    """One service (its own engine, question-log writer and database pool) on ``url`` (None: SQLite in home)."""
    s = settings.updated(questionlog={"url": url or "", **questionlog}, admin_keys=[f"olga:{ADMIN}"])
    app = create_app(s, QueryEngine(s, HashEmbedder(dim=64), make_rerank_planner(s)))
    try:
        with TestClient(app) as c:
            yield c
    finally:
        app.state.ops.db.dispose()  # the app keeps its pool; the test server counts connections


@pytest.fixture()
def client(settings: Settings, built: Any, pg_url: str) -> Iterator[TestClient]:
    """The app on the test database."""
    with replica(settings, pg_url) as c:
        yield c


def feedback(client: TestClient, request_id: str, **body: Any) -> tuple[int, Any]:
    """POST /feedback; (status, JSON body)."""
    r = client.post("/feedback", json={"request_id": request_id, **body})
    return r.status_code, r.json()


def test_open_database_creates_the_tables_with_native_types(pg_url):
    engine = open_database(pg_url)
    try:
        open_database(pg_url).dispose()  # a second replica starting on the same database: nothing to do, no error
        with engine.connect() as conn:
            types = dict(conn.execute(text(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public'")).all())
    finally:
        engine.dispose()
    assert {name.split(".")[0] for name in types} == {"questions", "feedback", "decisions"}
    assert {k: types[k] for k in ("questions.ts", "questions.answered", "questions.causes", "questions.results",
                                  "questions.top_score", "feedback.updated_at", "feedback.helpful",
                                  "decisions.undone_at")} == {
        "questions.ts": "timestamp with time zone", "questions.answered": "boolean", "questions.causes": "json",
        "questions.results": "json", "questions.top_score": "double precision",
        "feedback.updated_at": "timestamp with time zone", "feedback.helpful": "boolean",
        "decisions.undone_at": "timestamp with time zone"}


def test_writer_writes_batches_one_transaction_each(settings, pg_url):
    engine = open_database(pg_url)
    qlog = QuestionLog(settings.questionlog.model_copy(update={"batch_size": 3}), engine)
    started = dt.datetime(2026, 11, 22, 23, 30, 0, 123456, tzinfo=dt.timezone.utc)  # the next day in Shanghai
    for i in range(7):
        t = Trace(kb="default", question=f"第{i}个问题，电话13812345678", request_id=f"w{i}")
        t.started_at = started + dt.timedelta(seconds=i)
        t.record("embed", 1.25)
        t.fallback(FallbackCause.VECTOR_TIMEOUT, "0.5 s", "vector search timed out")
        qlog.observe(t)  # all seven queued before the writer starts: it takes them 3, 3, 1
    qlog.start()
    try:
        assert qlog.flush(10)
    finally:
        qlog.close()
    assert qlog.stats() == {"written": 7, "dropped": {}, "queued": 0, "last_error": None}
    try:
        with engine.connect() as conn:
            # each batch is one transaction: its rows share the inserting transaction's id
            sizes = conn.execute(text("SELECT count(*) FROM questions GROUP BY xmin::text ORDER BY min(id)")).scalars()
            assert list(sizes) == [3, 3, 1]
        with Session(engine) as s:
            rows = s.execute(select(QuestionRecord).order_by(QuestionRecord.id)).scalars().all()
    finally:
        engine.dispose()
    assert [r.request_id for r in rows] == [f"w{i}" for i in range(7)]
    r = rows[0]
    assert (r.question, r.lang, r.mode, r.answered, r.degraded, r.reason) == (
        "第0个问题，电话[phone]", "zh", "canned", False, True, None)
    assert (r.causes, r.results, r.stages_ms) == (["vector-timeout"], [], {"embed": 1.25})
    assert r.ts == started and r.ts.utcoffset() == dt.timedelta(0)  # read back in UTC, microseconds kept
    assert rows[6].ts == started + dt.timedelta(seconds=6)


def _dashboard_scenario(client: TestClient) -> dict[str, Any]:
    """Ask, give feedback, and read every dashboard answer; what is compared between databases."""
    for rid, q in [("a0", "如何申请退货？"), ("a1", "怎么退货"), ("a2", "How do I reset my password?"),
                   ("h1", OFF_TOPIC), ("h2", "Can I pay with bitcoin on the moon?"),
                   ("p1", "Is a 100% refund possible?"), ("p2", "Is a 100 euro refund possible?"),
                   ("u1", "where is my_order"), ("u2", "where is my order")]:
        ask(client, q, rid)
    assert feedback(client, "a0", helpful=False) == (200, {"request_id": "a0", "updated": False})
    assert feedback(client, "a0", helpful=True, clicked_id="ret-1") == (200, {"request_id": "a0", "updated": True})
    assert feedback(client, "a1", helpful=False, comment="没用") == (200, {"request_id": "a1", "updated": False})
    assert feedback(client, "h1", helpful=False) == (200, {"request_id": "h1", "updated": False})
    assert feedback(client, "never-asked", helpful=True)[0] == 404
    flush(client)

    def ids(**params: Any) -> list[str]:
        return [r["request_id"] for r in admin(client, "GET", "/questions", params=params)["rows"]]

    overview = admin(client, "GET", "/overview", params={"kb": "default"})
    latency = overview.pop("latency_ms")
    assert latency["p50"] > 0 and latency["p95"] >= latency["p50"]
    rows = admin(client, "GET", "/questions", params={"limit": 500})["rows"]
    csv_text = client.get("/admin/api/export", params={"format": "csv", "kb": "default"}, headers=AUTH).text
    jsonl = client.get("/admin/api/export", params={"format": "jsonl", "status": "unhelpful"}, headers=AUTH).text
    gaps = admin(client, "GET", "/gaps", params={"kb": "default"})
    page = admin(client, "GET", "/questions", params={"limit": 2, "offset": 3})
    return {
        "overview": overview,
        "scores": admin(client, "GET", "/scores"),
        "faqs": admin(client, "GET", "/faqs"),
        "timeseries": [p["total"] for p in admin(client, "GET", "/timeseries", params={"bucket": "day"})["points"]],
        "rows": [{k: v for k, v in r.items() if k not in ("ts", "latency_ms", "stages_ms")} for r in rows],
        "status": {s: ids(status=s) for s in ("all", "answered", "handed_off", "unhelpful")},
        "search": {q: ids(q=q) for q in ("100%", "100", "my_order", "my order", "退货", "h2", "%", "_")},
        "page": (page["total"], [r["request_id"] for r in page["rows"]]),
        "csv": [{k: r[k] for k in ("request_id", "question", "answered", "helpful", "clicked_id", "causes")}
                for r in csv.DictReader(io.StringIO(csv_text.lstrip("\ufeff")))],
        "jsonl": [json.loads(line)["request_id"] for line in jsonl.splitlines()],
        "gaps": (gaps["clustered"], sorted(sorted(q["request_id"] for q in c["questions"]) for c in gaps["clusters"])),
    }


def test_dashboard_on_postgres_reports_exactly_what_was_asked_and_matches_sqlite(settings, built, pg_url):
    with replica(settings, pg_url) as c:
        got = _dashboard_scenario(c)
        page = admin(c, "GET", "/questions", params={"limit": 3})["rows"]
        now = dt.datetime.now(dt.timezone.utc)
        local = dt.timezone(dt.timedelta(hours=8))
        totals = [admin(c, "GET", "/overview", params={"since": t.astimezone(local).isoformat()})["total"]
                  for t in (now - dt.timedelta(minutes=10), now + dt.timedelta(minutes=10))]
        assert totals == [9, 0]  # a window given in UTC+8 compares with the stored instants
        points = admin(c, "GET", "/timeseries")["points"]
    o = got["overview"]
    assert (o["total"], o["answered"], o["handed_off"], o["handoff_rate"]) == (9, 3, 6, 6 / 9)
    assert (o["reasons"], o["modes"], o["degraded"], o["canned"]) == ({"below-threshold": 6}, {"vector": 9}, 0, 0)
    assert o["feedback"] == {"helpful": 1, "unhelpful": 2, "clicked": 1}
    assert got["status"] == {"all": ["u2", "u1", "p2", "p1", "h2", "h1", "a2", "a1", "a0"],
                             "answered": ["a2", "a1", "a0"], "handed_off": ["u2", "u1", "p2", "p1", "h2", "h1"],
                             "unhelpful": ["h1", "a1"]}
    # % and _ are matched literally, not as wildcards
    assert got["search"] == {"100%": ["p1"], "100": ["p2", "p1"], "my_order": ["u1"], "my order": ["u2"],
                             "退货": ["a1", "a0"], "h2": ["h2"], "%": ["p1"], "_": ["u1"]}
    assert got["page"] == (9, ["p1", "h2"])
    faqs = got["faqs"]["top"]
    assert [(f["faq_id"], f["views"], f["helpful"], f["unhelpful"], f["clicks"]) for f in faqs] == [
        ("ret-1", 2, 1, 1, 1), ("en-pw", 1, 0, 0, 0)]
    assert (faqs[0]["help_rate"], faqs[0]["click_rate"]) == (0.5, 0.5)
    hist = got["scores"]["kinds"]["vector"]
    assert hist["threshold"] == 0.5 and sum(b["answered"] for b in hist["bins"]) == 3
    assert sum(b["handed_off"] for b in hist["bins"]) == 6
    assert got["timeseries"] == [9] and sum(p["total"] for p in points) == 9
    assert all(p["t"].endswith("+00:00") for p in points) and all(r["ts"].endswith("+00:00") for r in page)
    assert {p["t"][:13] for p in points} <= {(now - dt.timedelta(minutes=m)).isoformat()[:13] for m in (0, 10)}
    by_id = {r["request_id"]: r for r in got["csv"]}
    assert list(by_id) == ["a0", "a1", "a2", "h1", "h2", "p1", "p2", "u1", "u2"]
    assert by_id["a0"] == {"request_id": "a0", "question": "如何申请退货？", "answered": "True", "helpful": "True",
                           "clicked_id": "ret-1", "causes": "[]"}
    assert (by_id["h1"]["answered"], by_id["h1"]["helpful"], by_id["u2"]["helpful"]) == ("False", "False", "")
    assert got["jsonl"] == ["a1", "h1"]
    assert got["gaps"] == (7, [["a1"], ["h1"], ["h2"], ["p1"], ["p2"], ["u1", "u2"]])  # a1: answered, unhelpful
    a1 = next(r for r in got["rows"] if r["request_id"] == "a1")
    assert (a1["helpful"], a1["comment"], a1["top_id"], a1["results"][0]["id"]) == (False, "没用", "ret-1", "ret-1")

    # the same questions on SQLite give the same answers
    with replica(settings, None) as c:
        assert _dashboard_scenario(c) == got


def test_report_aggregates_are_plain_ints_on_postgres(client, pg_url):
    for rid, q in [("a0", "如何申请退货？"), ("h1", OFF_TOPIC)]:
        ask(client, q, rid)
    feedback(client, "a0", helpful=True, clicked_id="ret-1")
    flush(client)
    engine = client.app.state.ops.db
    o = report.overview(engine, report.Window(kb="default"))
    counts = [o["total"], o["answered"], o["handed_off"], *o["modes"].values(), *o["reasons"].values(),
              *o["feedback"].values()]
    assert counts == [2, 1, 1, 2, 1, 1, 0, 1] and all(type(n) is int for n in counts)
    top = report.faq_stats(engine, report.Window(), low_rate=0.1, min_views=1)["top"][0]
    assert all(type(top[k]) is int for k in ("views", "helpful", "unhelpful", "clicks", "feedback"))
    assert (top["views"], top["clicks"], top["help_rate"]) == (1, 1, 1.0)


def test_attach_publish_undo_and_draft_on_postgres(client, settings, pg_url, monkeypatch, capsys):
    assert not ask(client, OFF_TOPIC, "h1")["answered"]
    flush(client)
    made = admin(client, "POST", "/decisions", json={"kb": "default", "action": "attach", "questions": [OFF_TOPIC],
                                                    "request_ids": ["h1"], "faq_id": "en-pw"})
    d = made["decisions"][0]
    assert (d["actor"], d["state"], d["faq_id"], d["request_id"], made["pending"]) == (
        "olga", "pending", "en-pw", "h1", 1)
    assert dt.datetime.fromisoformat(d["created_at"]).utcoffset() == dt.timedelta(0)
    pub = admin(client, "POST", "/publish", json={"kb": "default"})
    assert (pub["applied"], pub["removed"], pub["embedded_rows"]) == (1, 0, 1)
    after = ask(client, OFF_TOPIC)
    assert after["answered"] and after["results"][0]["id"] == "en-pw" and after["index_version"] == pub["build_id"]
    listed = admin(client, "GET", "/decisions")
    assert (listed["pending"], listed["decisions"][0]["state"], listed["decisions"][0]["build_id"]) == (
        0, "published", pub["build_id"])
    assert admin(client, "GET", "/questions", params={"q": "h1"})["rows"][0]["review"] == "attach:en-pw"
    assert admin(client, "GET", "/gaps")["clustered"] == 0  # decided: no longer a gap

    undone = admin(client, "POST", f"/decisions/{d['id']}/undo")["decision"]
    assert (undone["state"], undone["undone_by"]) == ("undoing", "olga")
    pub2 = admin(client, "POST", "/publish", json={"kb": "default"})
    assert (pub2["applied"], pub2["removed"], pub2["embedded_rows"]) == (0, 1, 0)
    assert ask(client, OFF_TOPIC)["answered"] is False
    assert admin(client, "POST", "/publish", json={"kb": "default"})["build_id"] is None
    r = client.post(f"/admin/api/decisions/{d['id']}/undo", headers=AUTH)
    assert r.status_code == 422 and "already undone" in r.json()["detail"]

    q1, q2 = "Do you ship to Mars?", "Can you deliver to Mars?"
    drafted = admin(client, "POST", "/decisions", json={
        "kb": "default", "action": "draft", "questions": [q2],
        "draft": {"question": q1, "answer": "No, we only ship on Earth.", "section": "Shipping", "id": "mars"}})
    assert [(x["action"], x["faq_id"]) for x in drafted["decisions"]] == [("draft", "mars"), ("attach", "mars")]
    assert admin(client, "POST", "/publish", json={"kb": "default"})["applied"] == 2
    assert ask(client, q2)["results"][0]["id"] == "mars"
    exported = client.get("/admin/api/decisions/export", params={"format": "jsonl"}, headers=AUTH).text
    assert [json.loads(line)["id"] for line in exported.splitlines()] == ["mars"]

    # the command line reaches the same decisions through the same URL
    monkeypatch.setenv("KBSEARCH_QUESTIONLOG__URL", pg_url)
    capsys.readouterr()
    assert main(["--home", str(settings.home), "review", "list", "--all", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(x["action"], x["faq_id"], x["state"]) for x in listed] == [
        ("attach", "mars", "published"), ("draft", "mars", "published"), ("attach", "en-pw", "undone")]


def test_two_replicas_share_one_log(settings, built, pg_url):
    with replica(settings, pg_url) as a, replica(settings, pg_url) as b:
        for i in range(6):
            ask(a if i % 2 == 0 else b, "如何申请退货？" if i < 4 else OFF_TOPIC, f"r{i}")
        flush(a)
        flush(b)
        # feedback reaches either replica: b finds a's question in the database, and a repeat through a updates it
        assert feedback(b, "r0", helpful=False) == (200, {"request_id": "r0", "updated": False})
        assert feedback(a, "r0", helpful=True, clicked_id="ret-1") == (200, {"request_id": "r0", "updated": True})
        assert feedback(a, "r1", helpful=False) == (200, {"request_id": "r1", "updated": False})
        assert feedback(b, "nobody-asked", helpful=True)[0] == 404
        views = [admin(x, "GET", "/overview", params={"kb": "default"}) for x in (a, b)]
        for v in views:
            v.pop("latency_ms")
        assert views[0] == views[1]
        assert (views[0]["total"], views[0]["answered"], views[0]["handed_off"]) == (6, 4, 2)
        assert views[0]["feedback"] == {"helpful": 1, "unhelpful": 1, "clicked": 1}
        assert [r["request_id"] for r in admin(b, "GET", "/questions")["rows"]] == [f"r{i}" for i in range(5, -1, -1)]
        # a decision made on one replica is listed by the other
        made = admin(a, "POST", "/decisions", json={"kb": "default", "action": "out_of_scope", "questions": [OFF_TOPIC],
                                                   "request_ids": ["r4"]})
        assert [x["id"] for x in admin(b, "GET", "/decisions")["decisions"]] == [made["decisions"][0]["id"]]
        gaps = {q["request_id"] for c in admin(b, "GET", "/gaps")["clusters"] for q in c["questions"]}
        assert gaps == {"r1", "r5"}  # r1: unhelpful


def test_feedback_for_a_question_another_replica_has_not_written_yet(settings, pg_url):
    engine_a, engine_b = open_database(pg_url), open_database(pg_url)
    a, b = QuestionLog(settings.questionlog, engine_a), QuestionLog(settings.questionlog, engine_b)
    try:
        a.observe(Trace(kb="default", question="如何申请退货？", request_id="q1"))  # queued; a's writer not started
        assert (a.kb_of("q1"), b.kb_of("q1")) == ("default", None)  # a knows it from memory; b cannot yet (404)
        a.start()
        assert a.flush(10)
        assert b.kb_of("q1") == "default"  # written: b finds it in the database
        assert b.feedback("q1", "default", helpful=True, clicked_id=None, comment=None) is False
    finally:
        a.close()
        engine_a.dispose()
        engine_b.dispose()


def test_concurrent_first_feedback_from_two_replicas_keeps_one_row(settings, built, pg_url):
    with replica(settings, pg_url) as a, replica(settings, pg_url) as b:
        rids = [f"c{i}" for i in range(20)]
        for rid in rids:
            ask(a, "如何申请退货？", rid)
        flush(a)
        statuses: list[int] = []
        lock = threading.Lock()

        def send(c: TestClient, rid: str, gate: threading.Barrier) -> None:
            gate.wait()
            status, _ = feedback(c, rid, helpful=c is a)
            with lock:
                statuses.append(status)

        for rid in rids:  # the chatbot's retry lands on the other replica at the same moment
            gate = threading.Barrier(2)
            threads = [threading.Thread(target=send, args=(c, rid, gate)) for c in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        with a.app.state.ops.db.connect() as conn:
            stored = conn.execute(select(FeedbackRecord.request_id).order_by(FeedbackRecord.request_id)).scalars().all()
    assert statuses == [200] * 40
    assert stored == sorted(rids)


def test_retention_purges_old_questions_and_feedback(settings, pg_url):
    engine = open_database(pg_url)
    writer = QuestionLog(settings.questionlog.model_copy(update={"retention_days": 0}), engine)  # keeps everything
    keeper = QuestionLog(settings.questionlog.model_copy(update={"retention_days": 30}), engine)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        for days in (40, 10):
            t = Trace(kb="default", question=f"{days} days old", request_id=f"r{days}")
            t.started_at = now - dt.timedelta(days=days)
            writer.observe(t)
            assert writer.feedback(f"r{days}", "default", helpful=True, clicked_id=None, comment=None) is False
        writer.start()
        assert writer.flush(10)
        writer.close()

        def left() -> tuple[list[str], list[str]]:
            with engine.connect() as conn:
                questions = conn.execute(select(QuestionRecord.question).order_by(QuestionRecord.id)).scalars().all()
                rated = conn.execute(select(FeedbackRecord.request_id).order_by(FeedbackRecord.request_id)).scalars()
                return questions, rated.all()

        assert left() == (["40 days old", "10 days old"], ["r10", "r40"])
        assert writer.purge(now) == 0  # retention_days 0 keeps everything
        assert keeper.purge(now) == 1  # the 40-day-old question; its feedback is recent
        assert left() == (["10 days old"], ["r10", "r40"])
        assert keeper.purge(now + dt.timedelta(days=31)) == 3
        assert left() == ([], [])
    finally:
        writer.close()
        engine.dispose()


def test_feedback_repeats_update_one_row(settings, pg_url):
    engine = open_database(pg_url)
    qlog = QuestionLog(settings.questionlog, engine)
    try:
        assert qlog.feedback("r1", "default", helpful=True, clicked_id=None, comment=None) is False
        with Session(engine) as s:
            created = s.execute(select(FeedbackRecord.created_at)).scalar_one()
        assert qlog.feedback("r1", "default", helpful=False, clicked_id="ret-1", comment="不对") is True
        assert qlog.feedback("r1", "default", helpful=None, clicked_id=None, comment="还是不行") is True
        with Session(engine) as s:
            rows = s.execute(select(FeedbackRecord)).scalars().all()
    finally:
        engine.dispose()
    assert len(rows) == 1
    r = rows[0]
    assert (r.request_id, r.kb, r.helpful, r.clicked_id, r.comment) == ("r1", "default", None, None, "还是不行")
    assert r.created_at == created and r.updated_at > created and r.updated_at.utcoffset() == dt.timedelta(0)
