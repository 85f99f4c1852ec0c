"""kbsearch calibrate: the precision/coverage sweep by hand, storage per KB and score kind, and /ask using it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kbsearch.cli import main
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.eval.calibrate import sweep
from kbsearch.decide import read_thresholds, write_thresholds
from kbsearch.index.lock import writer_lock
from kbsearch.rerank.plan import SharedRerankPlanner
from kbsearch.service.query import QueryEngine
from support import record_fsyncs
from test_eval import bench  # noqa: F401  (the tiny benchmark folder fixture)


def test_sweep_by_hand():
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.6])
    correct = np.array([True, True, False, False, False])
    in_scope = np.array([True, True, True, False, True])
    curve = sweep(scores, correct, in_scope)
    assert [p.threshold for p in curve] == [0.9, 0.8, 0.7, 0.6]  # ties cut together
    assert [p.answered_precision for p in curve] == pytest.approx([1.0, 2 / 3, 2 / 4, 2 / 5])
    assert [p.coverage for p in curve] == pytest.approx([1 / 4, 3 / 4, 3 / 4, 4 / 4])
    assert [p.oos_handoff_rate for p in curve] == pytest.approx([1.0, 1.0, 0.0, 0.0])


def test_calibrate_stores_and_ask_uses_it(bench, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KBSEARCH_DECIDE__THRESHOLD_VECTOR", "0.0")  # the global setting would answer everything
    assert main(["ingest", str(bench / "kb.jsonl"), "--kb", "shop"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--kb", "shop", "--queries", str(bench / "queries_dev.jsonl"), "--target", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "chosen threshold_vector" in out
    stored = read_thresholds(tmp_path / "home" / "shop")["vector"]
    assert stored["answered_precision"] == 1.0 and stored["model_id"] == "kbsearch/hash-ngram-v1"
    assert stored["reranker"] == "none"  # the kb reranker is configured, but this KB has none: vector decided
    assert stored["oos_handoff_rate"] == 1.0 and 0.0 < stored["threshold"] <= 1.0

    settings = Settings()
    engine = QueryEngine(settings, HashEmbedder(dim=64), SharedRerankPlanner(None))
    engine.load("shop")
    off = engine.ask("量子色动力学", kb="shop", explain=True)
    assert not off.answered and off.explain["decision"]["threshold"] == pytest.approx(stored["threshold"])
    assert off.explain["decision"]["threshold_source"].startswith("calibrated")
    assert engine.ask("怎么申请退货", kb="shop").answered


def test_calibration_for_another_model_is_ignored(bench, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    assert main(["ingest", str(bench / "kb.jsonl"), "--kb", "shop"]) == 0
    write_thresholds(tmp_path / "home" / "shop", {"vector": {"threshold": 0.99, "model_id": "other-model",
                                                             "reranker": "none", "first_stage": "fused"}})
    settings = Settings(decide={"threshold_vector": 0.1})
    engine = QueryEngine(settings, HashEmbedder(dim=64), SharedRerankPlanner(None))
    engine.load("shop")
    a = engine.ask("怎么申请退货", kb="shop", explain=True)
    assert a.answered and a.explain["decision"]["threshold"] == 0.1
    assert "another configuration" in a.explain["decision"]["threshold_source"]


def test_unreachable_target_stores_nothing(bench, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    assert main(["ingest", str(bench / "kb.jsonl"), "--kb", "shop"]) == 0
    queries = tmp_path / "wrong.jsonl"
    queries.write_text(json.dumps({"qid": "1", "query": "怎么申请退货", "gold": ["pw"]}) + "\n", encoding="utf-8")
    assert main(["calibrate", "--kb", "shop", "--queries", str(queries)]) == 5
    assert "nothing stored" in capsys.readouterr().out
    assert read_thresholds(tmp_path / "home" / "shop") == {}


def test_min_oos_handoff_raises_the_threshold(bench, tmp_path, monkeypatch, capsys):  # noqa: F811
    """With an out-of-scope question scoring above the lowest right answer, requiring every OOS question
    to be handed off moves the threshold above that OOS score."""
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    assert main(["ingest", str(bench / "kb.jsonl"), "--kb", "shop"]) == 0
    qs = tmp_path / "q.jsonl"
    rows = [{"qid": "1", "query": "如何申请退货？", "gold": ["ret"]},
            {"qid": "2", "query": "付款", "gold": ["pay"]},
            {"qid": "3", "query": "申请退货", "gold": []}]  # out of scope by label, but close to ret
    qs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    args = ["calibrate", "--kb", "shop", "--queries", str(qs), "--dry-run", "--target", "0.5", "--json"]
    assert main(args + [str(tmp_path / "loose.json"), "--min-oos-handoff", "0"]) == 0
    assert main(args + [str(tmp_path / "strict.json"), "--min-oos-handoff", "1"]) == 0
    loose = json.loads((tmp_path / "loose.json").read_text())
    strict = json.loads((tmp_path / "strict.json").read_text())
    assert strict["oos_handoff_rate"] == 1.0 and strict["threshold"] > loose["threshold"]
    assert strict["coverage"] <= loose["coverage"]


def test_calibrated_margin_hands_off_ambiguous_questions(bench, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    assert main(["ingest", str(bench / "kb.jsonl"), "--kb", "shop"]) == 0
    engine = QueryEngine(Settings(), HashEmbedder(dim=64), SharedRerankPlanner(None))
    engine.load("shop")
    base = engine.ask("怎么申请退货", kb="shop", top_k=2)
    gap = base.decision.gap
    assert gap == pytest.approx(base.hits[0].scores.vector - base.hits[1].scores.vector)
    write_thresholds(tmp_path / "home" / "shop", {"vector": {
        "threshold": 0.0, "margin": gap + 0.01, "model_id": "kbsearch/hash-ngram-v1", "reranker": "none",
        "first_stage": "fused"}})
    a = engine.ask("怎么申请退货", kb="shop", top_k=1, explain=True)
    assert not a.answered and a.handoff.reason.startswith("ambiguous")
    assert a.explain["decision"]["margin"] == pytest.approx(gap + 0.01)
    write_thresholds(tmp_path / "home" / "shop", {"vector": {
        "threshold": 0.0, "margin": max(gap - 0.01, 0.001), "model_id": "kbsearch/hash-ngram-v1",
        "reranker": "none", "first_stage": "fused"}})
    assert engine.ask("怎么申请退货", kb="shop", top_k=1).answered


def test_calibrate_tries_margins(bench, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    assert main(["ingest", str(bench / "kb.jsonl"), "--kb", "shop"]) == 0
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--kb", "shop", "--queries", str(bench / "queries_dev.jsonl"), "--target", "1.0",
                 "--margins", "0,0.001", "--json", str(out), "--force"]) == 0  # 5 questions: lowering needs --force
    result = json.loads(out.read_text())
    assert result["margin"] in (0.0, 0.001) and result["answered_precision"] == 1.0
    assert read_thresholds(tmp_path / "home" / "shop")["vector"]["margin"] == result["margin"]
    assert main(["calibrate", "--kb", "shop", "--queries", str(bench / "queries_dev.jsonl"), "--margins", "x"]) == 2


def test_calibrate_stores_holding_the_kb_writer_lock_and_durably(bench, tmp_path, monkeypatch, capsys):  # noqa: F811
    """thresholds.json is read, merged and replaced under the KB's writer lock (an ingest or another calibrate
    writing the KB makes it wait, then exit 8 storing nothing), fsynced with the folder that names it."""
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KBSEARCH_DECIDE__THRESHOLD_VECTOR", "0.0")  # raising it: stored from the small sample
    monkeypatch.setenv("KBSEARCH_INDEX__LOCK_TIMEOUT_S", "0.2")
    monkeypatch.setenv("KBSEARCH_RERANK__BACKEND", "none")  # no KB-reranker training in the background, holding the lock
    kb_dir = tmp_path / "home" / "shop"
    assert main(["ingest", str(bench / "kb.jsonl"), "--kb", "shop"]) == 0
    calibrate = ["calibrate", "--kb", "shop", "--queries", str(bench / "queries_dev.jsonl")]
    with writer_lock(kb_dir, "kbsearch ingest"), ThreadPoolExecutor(1) as other:  # the lock is per thread
        assert other.submit(main, calibrate).result() == 8
    assert "kbsearch ingest" in capsys.readouterr().err and read_thresholds(kb_dir) == {}
    synced = record_fsyncs(monkeypatch)
    assert main(calibrate) == 0 and "vector" in read_thresholds(kb_dir)
    assert str(kb_dir) in synced and any(p.startswith(str(kb_dir / ".thresholds.json.")) for p in synced)
