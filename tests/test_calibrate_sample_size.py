"""kbsearch calibrate refuses to lower a KB's threshold from a small sample (exit 2 unless --force); raising it,
and lowering it from enough questions, are stored as before."""

from __future__ import annotations

import json

import pytest

from kbsearch.cli import main
from kbsearch.config import Settings
from kbsearch.decide import read_thresholds, write_thresholds
from kbsearch.embed.fake import HashEmbedder
from kbsearch.eval.calibrate import MIN_IN_SCOPE_TO_LOWER, MIN_OUT_OF_SCOPE_TO_LOWER, calibrate
from kbsearch.eval.run import EvalQuery
from kbsearch.rerank.plan import SharedRerankPlanner
from test_eval import bench  # noqa: F401  (the tiny benchmark folder fixture: 4 in-scope questions, 1 out of scope)


@pytest.fixture()
def shop(bench, tmp_path, monkeypatch, capsys):  # noqa: F811
    """The tiny benchmark ingested as ``shop`` with the hash fake, under the default threshold_vector (0.89)."""
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    assert main(["ingest", str(bench / "kb.jsonl"), "--kb", "shop"]) == 0
    capsys.readouterr()
    return bench / "queries_dev.jsonl", tmp_path / "home" / "shop"


def _calibrate(queries, *extra: str) -> int:
    return main(["calibrate", "--kb", "shop", "--queries", str(queries), *extra])


def test_lowering_from_a_small_sample_is_refused_with_the_counts(shop, capsys):
    queries, kb_dir = shop
    assert _calibrate(queries) == 2
    out, err = capsys.readouterr()
    assert "4 in-scope and 1 out-of-scope" in err and f"at least {MIN_IN_SCOPE_TO_LOWER} in-scope" in err
    assert f"{MIN_OUT_OF_SCOPE_TO_LOWER} out-of-scope" in err and "below the one in force (0.8900, setting)" in err
    assert "WARNING:" in out and "not stored" in out and "stored in" not in out
    assert read_thresholds(kb_dir) == {}


def test_force_stores_it_anyway_with_the_warning(shop, capsys, tmp_path):
    queries, kb_dir = shop
    assert _calibrate(queries, "--force", "--json", str(tmp_path / "cal.json")) == 0
    out, err = capsys.readouterr()
    assert "4 in-scope and 1 out-of-scope" in err and "stored in" in out
    result = json.loads((tmp_path / "cal.json").read_text())
    assert result["stored"] and not result["refused"] and result["warning"]
    assert read_thresholds(kb_dir)["vector"]["threshold"] == result["threshold"] < 0.89


def test_a_dry_run_warns_and_exits_0(shop, capsys):
    queries, kb_dir = shop
    assert _calibrate(queries, "--dry-run") == 0
    assert "4 in-scope and 1 out-of-scope" in capsys.readouterr().err
    assert read_thresholds(kb_dir) == {}


def test_raising_is_always_stored(shop, capsys, monkeypatch):
    queries, kb_dir = shop
    monkeypatch.setenv("KBSEARCH_DECIDE__THRESHOLD_VECTOR", "0.0")
    assert _calibrate(queries) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err.lower() and "stored in" in out
    assert read_thresholds(kb_dir)["vector"]["threshold"] > 0.0


def test_the_threshold_in_force_is_the_kbs_calibration(shop, capsys):
    """A calibration for this configuration at 0.2 is what a new one is compared with: 0.30 raises it, so it
    is stored from the small sample although it is below the setting (0.89)."""
    queries, kb_dir = shop
    write_thresholds(kb_dir, {"vector": {"threshold": 0.2, "margin": 0.0, "model_id": "kbsearch/hash-ngram-v1",
                                         "reranker": "none", "first_stage": "fused"}})
    assert _calibrate(queries) == 0
    out, err = capsys.readouterr()
    assert "in force now: 0.2000, calibrated" in out and "warning" not in err.lower()
    assert 0.2 < read_thresholds(kb_dir)["vector"]["threshold"] < 0.89


def test_enough_questions_lower_it_without_force(shop, tmp_path, capsys):
    queries, kb_dir = shop
    rows = [json.loads(line) for line in queries.read_text(encoding="utf-8").splitlines()]
    in_scope, oos = [r for r in rows if r["gold"]], [r for r in rows if not r["gold"]]
    many = [in_scope[i % len(in_scope)] for i in range(MIN_IN_SCOPE_TO_LOWER)]
    many += [oos[i % len(oos)] for i in range(MIN_OUT_OF_SCOPE_TO_LOWER)]
    big = tmp_path / "many.jsonl"
    big.write_text("".join(json.dumps({**r, "qid": str(i)}, ensure_ascii=False) + "\n" for i, r in enumerate(many)),
                   encoding="utf-8")
    assert _calibrate(big) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err.lower() and "stored in" in out
    assert read_thresholds(kb_dir)["vector"]["threshold"] < 0.89
    # one out-of-scope question short: refused again
    short = tmp_path / "short.jsonl"
    short.write_text("".join(big.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8")
    (kb_dir / "thresholds.json").unlink()
    assert _calibrate(short) == 2
    assert f"{MIN_IN_SCOPE_TO_LOWER} in-scope and {MIN_OUT_OF_SCOPE_TO_LOWER - 1} out-of-scope" in capsys.readouterr().err


def test_library_refusal(shop):
    queries, kb_dir = shop
    settings = Settings()
    qs = [EvalQuery(qid=r["qid"], query=r["query"], gold=tuple(r["gold"]))
          for r in map(json.loads, queries.read_text(encoding="utf-8").splitlines())]
    result = calibrate(settings, "shop", qs, HashEmbedder(dim=64), SharedRerankPlanner(None))
    assert result.refused and not result.stored and result.threshold is not None and result.threshold < 0.89
    assert result.current_threshold == 0.89 and result.current_source == "setting"
    assert read_thresholds(kb_dir) == {}
    lenient = calibrate(settings, "shop", qs, HashEmbedder(dim=64), SharedRerankPlanner(None), min_in_scope=4,
                        min_out_of_scope=1)
    assert lenient.stored and lenient.warning is None and read_thresholds(kb_dir)["vector"]["threshold"] == lenient.threshold
