"""End to end: every row lands in exactly one bucket, and the report says so in numbers and words."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import pytest

from kbsearch.config import IngestSettings
from kbsearch.ingest import IngestReport, run_ingest

TODAY = dt.date(2025, 6, 1)


@pytest.fixture()
def kb_dir(tmp_path: Path) -> Path:
    (tmp_path / "a.csv").write_text(
        "编号,问题,答案,分类\n"
        "r1,如何退货？,七天内可退，需保持商品完好。,售后\n"
        "r2,运费谁承担？,,售后\n"                              # rejected: empty answer
        "r3,怎么换货？,联系客服换货。,售后\n"
        "r3,怎么换货？,联系客服换货。,售后\n",                 # identical repeat
        "utf-8",
    )
    rows = [
        {"id": "r4", "问题": "如何退货", "答案": "七天内可退。", "分类": "售后"},                 # merges into r1
        '{"id": "broken", ',                                                                    # rejected: invalid JSON
        {"id": "r5", "问题": "双十一活动规则", "答案": "见活动页。", "有效期至": "2024-11-12"},      # expired
        {"id": "r6", "问题": "积分怎么用？", "答案": "根据2023年新规，积分可抵现。"},              # flagged
        {"id": "r7", "问题": "如何退款", "答案": "原路退回。", "分类": "售后"},                    # kept
    ]
    (tmp_path / "b.jsonl").write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), "utf-8"
    )
    (tmp_path / "c.md").write_text("# 账户\n## 如何注销账户？\n在设置中注销。\n", "utf-8")
    (tmp_path / "notes.txt").write_text("not a knowledge base", "utf-8")
    return tmp_path


def test_counts_add_up_end_to_end(kb_dir: Path) -> None:
    result = run_ingest([kb_dir], IngestSettings(), today=TODAY)
    report = result.report
    assert [e.id for e in result.entries] == ["r1", "r3", "r6", "r7", result.entries[4].id]
    assert result.entries[0].merged_ids == ("r4",) and "如何退货" in result.entries[0].variants
    assert (report.rows_read, report.loaded, len(report.rejected), report.identical_repeats) == (10, 7, 2, 1)
    assert (report.kept, report.merged_entries, len(report.expired), len(report.flagged)) == (5, 1, 1, 1)
    assert report.arithmetic() == (
        "read 10 = loaded 7 + rejected 2 + identical repeats 1; loaded 7 = kept 5 + merged 1 + expired 1"
    )
    assert report.chunks == len(result.chunks) == 5
    assert len(report.files) == 3 and [s.file for s in report.skipped_files] == [str(kb_dir / "notes.txt")]
    rejected = {(Path(p.file).name, p.line): p.reason for p in report.rejected}
    assert rejected.keys() == {("a.csv", 3), ("b.jsonl", 2)}
    assert rejected["a.csv", 3] == "empty answer" and rejected["b.jsonl", 2].startswith("invalid JSON: ")
    assert list(report.stage_seconds) == ["parse", "validate", "expiry", "dedupe", "chunk"]
    assert all(v >= 0 for v in report.stage_seconds.values())


def test_report_json_and_render(kb_dir: Path) -> None:
    report = run_ingest([kb_dir], IngestSettings(), today=TODAY).report
    data = json.loads(json.dumps(report.to_json(), ensure_ascii=False))
    assert data["rows_read"] == 10 and data["rejected_count"] == 2 and data["merged_entries"] == 1
    assert data["merged"][0]["members"] == [["r1", "如何退货？"], ["r4", "如何退货"]]
    assert data["expired"][0]["id"] == "r5" and data["flagged"][0]["id"] == "r6"
    text = report.render()
    assert "10 = loaded 7 + rejected 2 + identical repeats 1" in text
    assert "7 = kept 5 + merged 1 + expired 1" in text
    assert "a.csv:3: empty answer" in text
    assert "r1 '如何退货？' <- r4 '如何退货'" in text
    assert "r5 (" in text and "valid_until 2024-11-12" in text
    assert "dated policy '2023年新规'" in text
    assert "notes.txt" in text


def test_add_stage_and_check() -> None:
    report = IngestReport(rows_read=3, loaded=2, kept=2)
    report.add_stage("embed", 1.5)
    report.add_stage("embed", 0.5)
    assert report.stage_seconds == {"embed": 2.0}
    with pytest.raises(AssertionError, match="do not add up"):
        report.check()  # one row unaccounted for
    IngestReport(rows_read=2, loaded=2, kept=2).check()


def test_render_caps_long_lists() -> None:
    from kbsearch.ingest.report import RENDER_LIST_LIMIT, Problem

    report = IngestReport(rejected=[Problem("f", i, "empty question") for i in range(RENDER_LIST_LIMIT + 5)])
    assert "... and 5 more" in report.render()


def test_progress_bar_only_for_large_inputs_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jsonl"
    rows = [json.dumps({"question": f"question number {i}", "answer": "x"}) for i in range(2100)]
    path.write_text("\n".join(rows) + "\n")
    run_ingest([path], IngestSettings(dedupe=False), today=TODAY, progress=True)
    assert capsys.readouterr().err == ""  # stderr is not a terminal (a log file): no bar redraws in it
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run_ingest([path], IngestSettings(dedupe=False), today=TODAY, progress=True)
    assert "validate" in capsys.readouterr().err
    run_ingest([path], IngestSettings(dedupe=False), today=TODAY, progress=False)
    assert capsys.readouterr().err == ""
    small = tmp_path / "small.jsonl"
    small.write_text('{"question": "q", "answer": "a"}\n')
    run_ingest([small], IngestSettings(), today=TODAY, progress=True)
    assert capsys.readouterr().err == ""


def test_empty_directory_gives_an_empty_balanced_result(tmp_path: Path) -> None:
    result = run_ingest([tmp_path], IngestSettings(), today=TODAY)
    assert result.entries == [] and result.chunks == [] and result.report.arithmetic().startswith("read 0 = loaded 0")
