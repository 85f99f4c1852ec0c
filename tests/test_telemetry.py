"""Telemetry read from each question's trace: Prometheus metrics (through the real app), JSON log lines, and the
trace itself."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from kbsearch.api.app import create_app
from kbsearch.embed.fake import HashEmbedder
from kbsearch.rerank import make_rerank_planner
from kbsearch.service.query import QueryEngine
from kbsearch.telemetry.logs import QUESTION_LOGGER, configure_logging, question_fields, question_logger
from kbsearch.telemetry.metrics import score_buckets
from kbsearch.telemetry.trace import Trace


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples, name: str, **labels) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture()
def client(settings, built):
    engine = QueryEngine(settings, HashEmbedder(dim=64), make_rerank_planner(settings))
    with TestClient(create_app(settings, engine)) as c:
        yield c


def test_metrics_count_questions_by_outcome_with_bounded_labels(client, built):
    answered = ["如何申请退货？", "How long does shipping take?", "How do I reset my password?"]
    handed_off = ["量子色动力学的渐近自由", "what is the meaning of life, the universe and everything"]
    for q in answered + handed_off:
        assert client.post("/ask", json={"question": q}).status_code == 200
    assert client.post("/ask", json={"question": "hi", "kb": "nope"}).status_code == 404  # never becomes a label
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    s = _samples(r.text)
    q = "kbsearch_questions_total"
    assert _value(s, q) == 5 and _value(s, q, answered="true") == 3 and _value(s, q, answered="false") == 2
    assert _value(s, q, answered="false", reason="below-threshold", mode="vector", degraded="false", kb="default") == 2
    assert {dict(ls)["kb"] for (n, ls) in s if dict(ls).get("kb")} == {"default"}
    assert _value(s, "kbsearch_question_duration_seconds_count", kb="default") == 5
    assert _value(s, "kbsearch_stage_duration_seconds_count", stage="embed") == 5
    assert _value(s, "kbsearch_stage_duration_seconds_count", stage="rerank") == 0  # no reranker for this KB
    assert _value(s, "kbsearch_top1_score_count", kind="vector") == 5
    # Buckets are dense around the threshold (0.5 here): the share below it reads off one bucket.
    below = _value(s, "kbsearch_top1_score_bucket", kind="vector", le="0.49")
    assert below == 2 and ("kbsearch_top1_score_bucket", (("kb", "default"), ("kind", "vector"), ("le", "0.51"))) in s
    assert _value(s, "kbsearch_top1_low_total", kind="vector") == 2  # below the low line (0.85 by default)
    assert _value(s, "kbsearch_fallbacks_total") == 0 and _value(s, "kbsearch_unexpected_errors_total") == 0
    info = [dict(ls) for (n, ls) in s if n == "kbsearch_build_info"]
    assert info == [{"kb": "default", "index_version": built.build_id, "model": "kbsearch/hash-ngram-v1",
                     "reranker": "kb off"}]
    assert _value(s, "kbsearch_ready") == 1 and _value(s, "kbsearch_index_rows", kb="default") == 10


def test_fallbacks_and_bugs_are_counted_by_cause(client, built, monkeypatch):
    engine = client.app.state.engine

    def broken(*a, **k):
        from kbsearch.errors import BackendError

        raise BackendError("disk gone")

    monkeypatch.setattr(engine.builds.get("default").bm25, "search", broken)
    body = client.post("/ask", json={"question": "如何申请退货？"}).json()
    assert body["degraded"] and body["answered"]  # fused: BM25 failed, the vector side ranked alone
    monkeypatch.setattr("kbsearch.retrieve.candidates.group_rows", lambda *a, **k: 1 / 0)
    assert client.post("/ask", json={"question": "如何申请退货？"}).json()["handoff"]["code"] == "internal-error"
    s = _samples(client.get("/metrics").text)
    assert _value(s, "kbsearch_fallbacks_total", cause="bm25-error") == 1
    assert _value(s, "kbsearch_unexpected_errors_total", kb="default") == 1
    assert _value(s, "kbsearch_questions_total", mode="canned", reason="internal-error", degraded="true") == 1


def test_score_buckets_are_dense_around_each_line():
    b = score_buckets([0.89, 0.5])
    assert {0.84, 0.85, 0.88, 0.89, 0.9, 0.94, 0.45, 0.55} <= set(b) and 0.7 in b and 0.72 not in b
    assert list(b) == sorted(b) and b[0] == 0.0 and b[-1] == 1.0


def test_question_log_line_has_the_codes_and_no_question_text(settings, built, make_engine, caplog):
    engine = make_engine(observers=(question_logger(settings.telemetry),))
    with caplog.at_level(logging.INFO, logger=QUESTION_LOGGER):
        engine.ask("我的手机号13812345678怎么退货", request_id="req-1")
        logged = [r for r in caplog.records if r.name == QUESTION_LOGGER]
    assert len(logged) == 1
    record = logged[0]
    from pythonjsonlogger.json import JsonFormatter

    line = json.loads(JsonFormatter("%(levelname)s %(name)s %(message)s").format(record))
    assert line["request_id"] == "req-1" and line["kb"] == "default" and line["mode"] == "vector"
    assert line["answered"] in (True, False) and set(line["stages_ms"]) >= {"embed", "vector", "decide"}
    assert line["latency_ms"] > 0 and "question" not in line and "13812345678" not in json.dumps(line, ensure_ascii=False)
    # Opted in, the question is logged.
    loud = make_engine(observers=(question_logger(settings.telemetry.model_copy(update={"log_questions": True})),))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=QUESTION_LOGGER):
        loud.ask("怎么退货")
    assert [r.question for r in caplog.records if r.name == QUESTION_LOGGER] == ["怎么退货"]


def test_configure_logging_writes_json_lines(settings, capsys):
    configure_logging(settings.telemetry)
    try:
        logging.getLogger("kbsearch.test").warning("hello %s", "world", extra={"kb": "shop"})
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert (line["level"], line["logger"], line["message"], line["kb"]) == ("WARNING", "kbsearch.test", "hello world", "shop")
    finally:
        logging.getLogger().handlers.clear()


def test_trace_spans_time_stages_and_mark_errors():
    trace = Trace(kb="shop")
    with trace.span("bm25") as span:
        span.candidates = 3
    with pytest.raises(ZeroDivisionError):
        with trace.span("rerank"):
            1 / 0
    trace.record("bm25", 1.0)
    assert [(s.name, s.outcome, s.candidates) for s in trace.spans] == [("bm25", "ok", 3), ("rerank", "error", None),
                                                                        ("bm25", "ok", None)]
    assert trace.spans[1].detail == "ZeroDivisionError: division by zero"
    timings = trace.timings_ms()
    assert set(timings) == {"bm25", "rerank"} and timings["bm25"] >= 1.0  # a stage that ran twice is summed
    fields = question_fields(trace)
    assert fields["mode"] is None and fields["latency_ms"] is None and fields["answered"] is False
