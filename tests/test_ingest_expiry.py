"""Entries outside their validity window are excluded; old dated-policy text is flagged but kept."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from kbsearch.config import IngestSettings
from kbsearch.ingest import run_ingest
from kbsearch.ingest.expiry import dated_policies, filter_valid, flag_dated
from kbsearch.types import FaqEntry

TODAY = dt.date(2025, 6, 1)


def entry(i: str, answer: str = "x", **kw) -> FaqEntry:
    return FaqEntry(id=i, question=f"q {i}", answer=answer, source=f"t:{i}", **kw)


def test_validity_window_filter_is_inclusive() -> None:
    entries = [
        entry("past", valid_until=TODAY - dt.timedelta(days=1)),
        entry("last-day", valid_until=TODAY),
        entry("first-day", valid_from=TODAY),
        entry("future", valid_from=TODAY + dt.timedelta(days=1)),
        entry("open"),
    ]
    kept, expired = filter_valid(entries, TODAY)
    assert [e.id for e in kept] == ["last-day", "first-day", "open"]
    assert [(n.id, n.reason) for n in expired] == [
        ("past", "valid_until 2025-05-31 is before 2025-06-01"),
        ("future", "valid_from 2025-06-02 is after 2025-06-01 (not yet valid)"),
    ]


@pytest.mark.parametrize(
    ("text", "label"),
    [("根据2024年新规，退货期限为7天。", "2024"), ("2023年起，运费由买家承担。", "2023"),
     ("自2022年3月1日起执行新标准。", "2022-03-01"), ("本活动截至2023.6.30。", "2023-06-30"),
     ("This offer is effective until 2023-12-31.", "2023-12-31"), ("As of January 2022, fees apply.", "2022-01"),
     ("Valid through 2023 for all members.", "2023"), ("Under the 2021 policy you may return items.", "2021"),
     ("Since March 5, 2020 we ship abroad.", "2020-03-05")],
)
def test_dated_policy_phrases(text: str, label: str) -> None:
    assert [found[1] for found in dated_policies(text)] == [label]


@pytest.mark.parametrize("text", ["共有2000年的历史", "价格2024元", "2023年前三季度的数据", "call 2023 4567", "订单号20231231"])
def test_numbers_that_are_not_policy_dates(text: str) -> None:
    assert dated_policies(text) == []


def test_old_policies_flagged_recent_ones_not() -> None:
    entries = [entry("old", "根据2023年新规，7天内可退。"), entry("recent", "根据2025年新规，7天内可退。"),
               entry("plain", "7天内可退。"),
               FaqEntry(id="q-only", question="2022年起的运费规则是什么？", answer="买家承担。", source="t:q")]
    flagged, notes = flag_dated(entries, TODAY, max_age_days=365)
    assert [e.flags for e in flagged] == [("dated-policy:2023",), (), (), ("dated-policy:2022",)]
    assert [n.id for n in notes] == ["old", "q-only"]
    assert "2023年新规" in notes[0].reason and "> 365" in notes[0].reason


def test_max_age_setting_decides() -> None:
    e = [entry("p", "As of January 2025, fees apply.")]  # 151 days before TODAY
    assert flag_dated(e, TODAY, max_age_days=365)[0][0].flags == ()
    assert flag_dated(e, TODAY, max_age_days=150)[0][0].flags == ("dated-policy:2025-01",)


def test_pipeline_excludes_expired_and_keeps_flagged(tmp_path: Path) -> None:
    rows = [
        {"id": "gone", "question": "旧活动规则", "answer": "活动已结束。", "有效期至": "2024年12月31日"},
        {"id": "soon", "question": "新活动规则", "answer": "下月开始。", "生效日期": "2025-07-01"},
        {"id": "flag", "question": "运费谁出？", "answer": "2023年起运费由买家承担。"},
        {"id": "ok", "question": "怎么联系客服？", "answer": "拨打热线。", "valid_until": "2025-06-01"},
    ]
    path = tmp_path / "kb.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    result = run_ingest([path], IngestSettings(policy_max_age_days=365), today=TODAY)
    assert [e.id for e in result.entries] == ["flag", "ok"]
    assert result.entries[0].flags == ("dated-policy:2023",)
    report = result.report
    assert [n.id for n in report.expired] == ["gone", "soon"] and [n.id for n in report.flagged] == ["flag"]
    assert (report.loaded, report.kept, len(report.expired)) == (4, 2, 2)
    assert all(c.faq_id in {"flag", "ok"} for c in result.chunks)


def test_expired_duplicate_does_not_absorb_a_current_entry(tmp_path: Path) -> None:
    rows = [
        {"id": "old", "question": "如何退货？", "answer": "七天内可退，运费自理，详见旧规则。", "valid_until": "2024-01-01"},
        {"id": "new", "question": "如何退货", "answer": "七天内可退。"},
    ]
    path = tmp_path / "kb.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    result = run_ingest([path], IngestSettings(), today=TODAY)
    assert [e.id for e in result.entries] == ["new"] and not result.report.merged
