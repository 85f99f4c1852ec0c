"""The CLI end to end on the hash embedder: ingest, strict failures, rebuild-index, ask, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kbsearch.cli import main
from kbsearch.embed.fake import HashEmbedder
from kbsearch.index.builder import embed_rows, make_rows
from kbsearch.index.store import active_build_id, load_build
from support import SMALL_KB, one_chunk

GOOD = [
    {"id": "a1", "question": "如何申请退货？", "answer": "在订单详情页申请退货。"},
    {"id": "a2", "question": "How do I reset my password?", "answer": "Use 'Forgot password'."},
]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KBSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_DECIDE__THRESHOLD_VECTOR", "0.5")
    return tmp_path / "home"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ingest_then_ask(home, tmp_path, capsys):
    assert main(["ingest", str(_jsonl(tmp_path / "kb.jsonl", GOOD)), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kb"] == "default" and out["report"]["kept"] == 2 and active_build_id(home / "default") == out["build_id"]
    assert main(["ask", "怎么申请退货", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["results"][0]["id"] == "a1" and body["index_version"] == out["build_id"]
    assert main(["ask", "reset my password"]) == 0
    assert "[a2]" in capsys.readouterr().out


def test_strict_failure_keeps_serving_build(home, tmp_path, capsys):
    assert main(["ingest", str(_jsonl(tmp_path / "kb.jsonl", GOOD))]) == 0
    before = active_build_id(home / "default")
    bad = _jsonl(tmp_path / "bad.jsonl", GOOD + [{"id": "a3", "question": "空答案", "answer": ""}])
    assert main(["ingest", str(bad), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:3" in err
    assert active_build_id(home / "default") == before
    # --max-rejects allows that many bad rows: they are skipped and reported, the good rows are served.
    assert main(["ingest", str(bad), "--max-rejects", "1"]) == 0
    assert "bad.jsonl:3" in capsys.readouterr().err
    assert set(load_build(home / "default").entries) == {"a1", "a2"}


def test_rejected_rows_fail_by_default_and_build_nothing(home, tmp_path, capsys):
    """Building the good rows would silently drop the rejected rows' served versions: nothing is built."""
    assert main(["ingest", str(_jsonl(tmp_path / "kb.jsonl", GOOD))]) == 0
    before = active_build_id(home / "default")
    broken = [GOOD[0], {**GOOD[1], "valid_until": "31/12/2099"}, {"id": "a3", "question": "", "answer": "x"}]
    bad = _jsonl(tmp_path / "bad.jsonl", broken)
    capsys.readouterr()
    assert main(["ingest", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2: valid_until: unparseable date" in err and "bad.jsonl:3: empty question" in err  # the report
    assert "2 rejected row(s), more than the 0 allowed (--max-rejects)" in err and "active build" in err
    assert active_build_id(home / "default") == before and set(load_build(home / "default").entries) == {"a1", "a2"}
    assert main(["ingest", str(bad), "--max-rejects", "1"]) == 2  # still over
    assert main(["ingest", str(bad), "--max-rejects", "2"]) == 0
    assert set(load_build(home / "default").entries) == {"a1"}
    with pytest.raises(SystemExit) as info:
        main(["ingest", str(bad), "--max-rejects", "-1"])
    assert info.value.code == 2


def test_unreadable_file_fails_whatever_the_limit(home, tmp_path, capsys):
    (tmp_path / "kb").mkdir()
    _jsonl(tmp_path / "kb" / "a.jsonl", GOOD)
    (tmp_path / "kb" / "b.json").write_text("{not json", encoding="utf-8")
    assert main(["ingest", str(tmp_path / "kb"), "--max-rejects", "100"]) == 2
    assert "1 unreadable file(s)" in capsys.readouterr().err
    assert active_build_id(home / "default") is None


def test_dry_run_validates_and_builds_nothing(home, tmp_path, capsys):
    good = _jsonl(tmp_path / "kb.jsonl", GOOD)
    assert main(["ingest", str(good), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] is True and out["entries"] == 2 and out["report"]["kept"] == 2
    assert active_build_id(home / "default") is None and not (home / "default").exists()
    bad = _jsonl(tmp_path / "bad.jsonl", GOOD + [{"id": "a3", "question": "q3", "answer": ""}])
    assert main(["ingest", str(bad), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "bad.jsonl:3: empty answer" in captured.err and "2 entries, 2 chunks; nothing built" in captured.out
    assert main(["ingest", str(bad), "--dry-run", "--max-rejects", "1"]) == 0
    assert active_build_id(home / "default") is None


def test_faq_file_without_answer_column_fails_unless_intents(home, tmp_path, capsys):
    path = tmp_path / "faq.csv"
    path.write_text("问题,回复内容\n如何申请退货？,在订单详情页申请退货。\n", encoding="utf-8")
    assert main(["ingest", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: no answer column among the columns found (问题, 回复内容)" in err
    assert active_build_id(home / "default") is None
    assert main(["ingest", str(path), "--answers-from-questions", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report"]["answers_from_question"] == 1
    (entry,) = load_build(home / "default").entries.values()
    assert entry.answer == entry.question == "如何申请退货？"


def test_nothing_kept_is_bad_input(home, tmp_path, capsys):
    empty = _jsonl(tmp_path / "e.jsonl", [{"question": "", "answer": "x"}])
    assert main(["ingest", str(empty)]) == 2
    assert active_build_id(home / "default") is None
    assert main(["ingest", str(tmp_path / "missing.csv")]) == 2


def test_rebuild_index_swaps_with_same_entries(home, tmp_path, capsys):
    assert main(["ingest", str(_jsonl(tmp_path / "kb.jsonl", GOOD)), "--kb", "shop"]) == 0
    first = load_build(home / "shop")
    assert main(["rebuild-index", "--kb", "shop"]) == 0
    second = load_build(home / "shop")
    assert second.build_id != first.build_id and second.entries == first.entries
    assert json.loads((second.path / "report.json").read_text())["rebuilt_from"] == first.build_id


def test_unknown_kb_exit_code(home, capsys):
    assert main(["ask", "hi", "--kb", "nope"]) == 4
    assert "nope" in capsys.readouterr().err
    assert main(["rebuild-index", "--kb", "nope"]) == 4


class Recording(HashEmbedder):
    def __init__(self):
        super().__init__(dim=16)
        self.queries: list[str] = []
        self.documents: list[str] = []

    def embed_queries(self, texts):
        self.queries += texts
        return super().embed_queries(texts)

    def embed_documents(self, texts):
        self.documents += texts
        return super().embed_documents(texts)


@pytest.mark.parametrize("mode", ["query", "document"])
def test_row_prompts(mode):
    entries = SMALL_KB[:2]
    rows = make_rows(entries, [one_chunk(e) for e in entries])
    emb = Recording()
    emb.load()
    vecs = embed_rows(emb, rows, batch_size=2, question_rows_as=mode)
    chunk_texts = [r.text for r in rows if r.kind == "chunk"]
    question_texts = [r.text for r in rows if r.kind != "chunk"]
    if mode == "query":
        assert emb.queries == question_texts and emb.documents == chunk_texts
    else:
        assert emb.queries == [] and sorted(emb.documents) == sorted(question_texts + chunk_texts)
    # Row order is preserved whatever order the batches ran in.
    np.testing.assert_allclose(vecs[0], emb.embed_queries([rows[0].text])[0] if mode == "query"
                               else emb.embed_documents([rows[0].text])[0])


def test_bad_kb_names_and_top_k_are_refused(home, capsys):
    assert main(["ask", "hi", "--kb", ".."]) == 2
    assert "invalid knowledge base name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["ask", "hi", "--top-k", "-1"])
    assert exc.value.code == 2
