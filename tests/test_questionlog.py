"""The question log: every /ask recorded (redacted) off the request path, feedback, drops, retention, export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import stat
import subprocess
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from kbsearch.api.app import create_app
from kbsearch.embed.fake import HashEmbedder
from kbsearch.questionlog.db import FeedbackRecord, QuestionRecord, open_database
from kbsearch.questionlog.writer import QuestionLog, detect_language
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine


def _app(settings):
    return create_app(settings, QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings)))


@pytest.fixture()
def client(settings, built):
    with TestClient(_app(settings)) as c:
        yield c


def _rows(client):
    ops = client.app.state.ops
    assert ops.log.flush(10)
    with Session(ops.db) as s:
        return s.execute(select(QuestionRecord).order_by(QuestionRecord.id)).scalars().all()


def _metric(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_every_ask_is_recorded_with_its_outcome(client, settings):
    a = client.post("/ask", json={"question": "如何申请退货？"}, headers={"X-Request-ID": "chat-1"}).json()
    h = client.post("/ask", json={"question": "Who won the 1998 football world cup?"}).json()
    rows = _rows(client)
    assert [r.request_id for r in rows] == ["chat-1", h["request_id"]]
    r = rows[0]
    assert (r.kb, r.question, r.lang, r.mode, r.answered, r.degraded, r.reason) == (
        "default", "如何申请退货？", "zh", "vector", True, False, None)
    assert r.top_id == a["results"][0]["id"] == "ret-1" and r.top_question == a["results"][0]["question"]
    assert r.top_score == pytest.approx(a["decision"]["score"]) and r.score_kind == "vector" and r.threshold == 0.5
    assert [x["id"] for x in r.results] == [x["id"] for x in a["results"]]
    assert r.index_version == a["index_version"] and r.latency_ms == pytest.approx(a["timings_ms"]["total"], abs=0.01)
    assert set(r.stages_ms) >= {"embed", "vector", "bm25", "decide"} and r.ts.tzinfo is not None
    h_row = rows[1]
    assert (h_row.answered, h_row.reason, h_row.lang) == (False, "below-threshold", "en")
    assert _metric(client, "kbsearch_questionlog_written_total") == 2


def test_questions_are_stored_redacted(client):
    client.post("/ask", json={"question": "我的手机号13812345678，卡号6222 0212 3456 7890 123，怎么退货"})
    client.post("/ask", json={"question": "refund to jane.doe@example.com please"})
    stored = [r.question for r in _rows(client)]
    assert stored == ["我的手机号[phone]，卡号[card]，怎么退货", "refund to [email] please"]


def test_redaction_can_be_switched_off(settings, built):
    with TestClient(_app(settings.updated(questionlog={"redact": False}))) as c:
        c.post("/ask", json={"question": "call 13812345678"})
        assert [r.question for r in _rows(c)] == ["call 13812345678"]


def test_feedback_is_stored_updated_and_validated(client):
    rid = client.post("/ask", json={"question": "如何申请退货？"}).json()["request_id"]
    r = client.post("/feedback", json={"request_id": rid, "helpful": False, "comment": "没用"})
    assert r.status_code == 200 and r.json() == {"request_id": rid, "updated": False}
    r = client.post("/feedback", json={"request_id": rid, "helpful": True, "clicked_id": "ret-1"})
    assert r.json()["updated"] is True
    with Session(client.app.state.ops.db) as s:
        rows = s.execute(select(FeedbackRecord)).scalars().all()
    assert len(rows) == 1 and (rows[0].helpful, rows[0].clicked_id, rows[0].comment, rows[0].kb) == (True, "ret-1", None, "default")
    assert client.post("/feedback", json={"request_id": "never-asked", "helpful": True}).status_code == 404
    for bad in ({"helpful": True}, {"request_id": "has space"}, {"request_id": rid, "comment": "x" * 2001},
                {"request_id": rid, "clicked_id": "x" * 257}, {"request_id": rid, "clicked_id": ""},
                {"request_id": rid, "helpful": "maybe"}, {"request_id": rid, "extra": 1}):
        assert client.post("/feedback", json=bad).status_code == 422, bad


def test_feedback_for_a_question_still_queued_is_accepted(settings, built):
    # A writer that never runs: the question stays in the queue, its feedback must still be accepted.
    app = _app(settings.updated(questionlog={"flush_interval_s": 60, "batch_size": 10_000}))
    with TestClient(app) as c:
        rid = c.post("/ask", json={"question": "如何申请退货？"}).json()["request_id"]
        assert c.post("/feedback", json={"request_id": rid, "helpful": True}).status_code == 200


def _make_read_only(paths: list) -> None:
    """chmod for a normal user; root ignores modes, so root gets the immutable attribute (chattr +i)."""
    if os.geteuid() != 0:
        for p in paths:
            p.chmod(stat.S_IRUSR)
        return
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("KBSEARCH_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(f"chattr failed: {done.stderr}")
        pytest.skip(f"cannot make a file read-only as root here: {done.stderr.strip()}")


def _make_writable(paths: list) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True)
    for p in paths:
        p.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_read_only_database_drops_records_but_ask_answers(client, settings):
    client.post("/ask", json={"question": "如何申请退货？"})
    _rows(client)
    # The database and its write-ahead log (the shared-memory index stays: SQLite maps it, and a mapped file
    # that cannot grow kills the process with SIGBUS, whoever owns it).
    files = [settings.home / "kbsearch.db", settings.home / "kbsearch.db-wal"]
    assert all(p.is_file() for p in files)  # WAL mode
    _make_read_only(files)
    try:
        _assert_degraded_logging(client)
    finally:
        _make_writable(files)


def test_deleted_database_is_recreated_and_ask_answers(client, settings):
    client.post("/ask", json={"question": "first"}, headers={"X-Request-ID": "before"})
    _rows(client)
    for p in settings.home.glob("kbsearch.db*"):
        p.unlink()
    for i in range(3):
        assert client.post("/ask", json={"question": "如何申请退货？"}, headers={"X-Request-ID": f"after-{i}"}).json()["answered"]
    assert [r.request_id for r in _rows(client)] == ["after-0", "after-1", "after-2"]  # nothing written into the void
    assert _metric(client, 'kbsearch_questionlog_dropped_total{reason="db-error"}') == 0


def test_unwritable_database_path_drops_records_but_ask_answers(client, settings):
    client.post("/ask", json={"question": "如何申请退货？"})
    _rows(client)
    # The database file replaced by a folder: it cannot be re-created, every write fails.
    for p in settings.home.glob("kbsearch.db*"):
        p.unlink()
    (settings.home / "kbsearch.db").mkdir()
    _assert_degraded_logging(client)


def _assert_degraded_logging(client):
    before = _metric(client, 'kbsearch_questionlog_dropped_total{reason="db-error"}')
    for _ in range(3):
        r = client.post("/ask", json={"question": "如何申请退货？"})
        assert r.status_code == 200 and r.json()["answered"]
    assert client.app.state.ops.log.flush(10)
    after = _metric(client, 'kbsearch_questionlog_dropped_total{reason="db-error"}')
    assert after - before == 3
    assert client.app.state.ops.log.stats()["last_error"]


def test_full_queue_drops_and_counts_without_blocking(settings, built, tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'q.db'}")
    qlog = QuestionLog(settings.questionlog.model_copy(update={"queue_size": 2}), engine)  # writer not started
    from kbsearch.telemetry.trace import Trace

    for i in range(5):
        t = Trace(kb="default", question=f"q{i}")
        qlog.observe(t)
    assert qlog.stats()["dropped"] == {"queue-full": 3} and qlog.queued == 2
    qlog.start()
    assert qlog.flush(10)
    qlog.close()
    with engine.connect() as conn:
        assert conn.execute(select(QuestionRecord.question)).scalars().all() == ["q0", "q1"]


def test_observe_never_waits_for_a_slow_database(settings, tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'q.db'}")
    qlog = QuestionLog(settings.questionlog, engine)
    from kbsearch.telemetry.trace import Trace

    gate = threading.Event()
    real_write = qlog._write
    qlog._write = lambda batch: (gate.wait(30), real_write(batch))  # the database hangs
    qlog.start()
    for i in range(50):
        qlog.observe(Trace(kb="default", question=f"q{i}"))
    assert qlog.stats()["written"] == 0  # nothing written, yet every observe returned
    gate.set()
    assert qlog.flush(10)
    qlog.close()
    assert qlog.stats()["written"] == 50


def test_retention_deletes_old_questions_and_feedback(settings, tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'q.db'}")
    qlog = QuestionLog(settings.questionlog.model_copy(update={"retention_days": 30}), engine)
    from kbsearch.telemetry.trace import Trace

    now = dt.datetime.now(dt.timezone.utc)
    for days in (40, 10):
        t = Trace(kb="default", question=f"{days} days old", request_id=f"r{days}")
        t.started_at = now - dt.timedelta(days=days)
        qlog.observe(t)
        qlog.feedback(f"r{days}", "default", helpful=True, clicked_id=None, comment=None)
    with engine.begin() as conn:
        conn.execute(FeedbackRecord.__table__.update().where(FeedbackRecord.request_id == "r40")
                     .values(updated_at=now - dt.timedelta(days=40)))
    qlog._write(qlog._take())  # written here: the writer thread would purge on its first round
    assert qlog.purge(now) == 2
    with engine.connect() as conn:
        assert conn.execute(select(QuestionRecord.question)).scalars().all() == ["10 days old"]
        assert conn.execute(select(FeedbackRecord.request_id)).scalars().all() == ["r10"]


def test_export_csv_and_jsonl(client, settings):
    key = client.app.state.guard.generated_admin_key
    auth = {"Authorization": f"Bearer {key}"}
    client.post("/ask", json={"question": "如何申请退货？"}, headers={"X-Request-ID": "e1"})
    client.post("/ask", json={"question": "Who won the 1998 football world cup?"}, headers={"X-Request-ID": "e2"})
    client.post("/feedback", json={"request_id": "e2", "helpful": False})
    _rows(client)
    r = client.get("/admin/api/export", params={"format": "csv", "kb": "default"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="questions-default.csv"'
    text = r.text
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    assert [r["request_id"] for r in rows] == ["e1", "e2"] and rows[0]["question"] == "如何申请退货？"
    assert rows[1]["answered"] == "False" and rows[1]["helpful"] == "False" and json.loads(rows[0]["results"])
    lines = client.get("/admin/api/export", params={"format": "jsonl", "status": "handed_off"}, headers=auth).text.splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == ["e2"]


@pytest.mark.parametrize("text, lang", [("如何申请退货？", "zh"), ("How do I return an item?", "en"),
                                        ("我的iPhone怎么退货", "zh"), ("Apple Pay 绑定 credit card 失败怎么办", "mixed"),
                                        ("12345", "other")])
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_a_database_down_at_startup_never_stops_the_service(settings, built):
    s = settings.updated(questionlog={"url": "sqlite:////proc/no-such-dir/kbsearch.db"})
    with TestClient(_app(s)) as c:
        for _ in range(2):
            assert c.post("/ask", json={"question": "如何申请退货？"}).json()["answered"]
        assert c.app.state.ops.log.flush(10)
        assert _metric(c, 'kbsearch_questionlog_dropped_total{reason="db-error"}') == 2
        key = c.app.state.guard.generated_admin_key
        r = c.get("/admin/api/overview", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 503 and r.json()["detail"] == "the question log database is unavailable"
        rid = c.post("/ask", json={"question": "如何申请退货？"}).json()["request_id"]
        assert c.post("/feedback", json={"request_id": rid, "helpful": True}).status_code == 503
