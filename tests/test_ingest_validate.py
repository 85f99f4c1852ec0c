"""Every bad row is rejected with file, line and reason; ids are stable; strict mode raises."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import pytest

from kbsearch.config import IngestSettings
from kbsearch.errors import BadInputError
from kbsearch.ingest import run_ingest
from kbsearch.ingest.pipeline import answers_from_questions_setting
from kbsearch.ingest.validate import RowError, derived_id, parse_date

TODAY = dt.date(2025, 6, 1)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), "utf-8")
    return path


def reasons(result) -> dict[int, str]:
    return {p.line: p.reason for p in result.report.rejected}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2024-03-05", dt.date(2024, 3, 5)), ("2024/3/5", dt.date(2024, 3, 5)), ("2024.03.05", dt.date(2024, 3, 5)),
     ("2024年3月5日", dt.date(2024, 3, 5)), ("2024 年 3 月 5 日", dt.date(2024, 3, 5)), ("２０２４年３月５日", dt.date(2024, 3, 5)),
     ("2024-03-05T10:20:30", dt.date(2024, 3, 5)), ("2024-03-05T10:20:30Z", dt.date(2024, 3, 5)),
     ("2024-03-05 10:20:30+08:00", dt.date(2024, 3, 5)), ("2024/03/05 10:20", dt.date(2024, 3, 5)),
     (dt.datetime(2024, 3, 5, 9), dt.date(2024, 3, 5)), ("", None), (None, None)],
)
def test_accepted_dates(text: object, expected: dt.date | None) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize("text", ["next week", "2024-02-30", "05/03/2024", "2024年13月1日", "20240305x"])
def test_unparseable_dates(text: str) -> None:
    with pytest.raises(RowError, match="unparseable date"):
        parse_date(text)


def test_each_rejection_reason_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "kb.jsonl", [
        {"id": "ok", "question": "good", "answer": "fine"},                       # 1
        {"id": "e1", "question": "  ", "answer": "x"},                             # 2 empty question
        {"id": "e2", "question": "q2", "answer": ""},                              # 3 empty answer
        {"id": "e3", "question": "q3", "answer": "x", "valid_until": "soon"},      # 4 bad date
        {"id": "e4", "question": "q4", "answer": "x", "updated_at": "yesterday"},  # 5 bad date
        {"id": "e5", "question": "q5", "answer": "x", "valid_from": "2025-02-01", "valid_until": "2025-01-01"},  # 6
        {"id": "ok", "question": "good", "answer": "different"},                   # 7 same id, other content
        '{"id": "e6", "question": "broken", ',                                     # 8 invalid JSON
        '["not", "an", "object"]',                                                 # 9
        {"id": "e7", "question": ["a", "list"], "answer": "x"},                    # 10 wrong shape
        {"id": "last", "question": "still read", "answer": "after the bad lines"},  # 11
    ])
    result = run_ingest([path], IngestSettings(), today=TODAY)
    got = reasons(result)
    assert got[2] == "empty question"
    assert got[3] == "empty answer"
    assert got[4] == "valid_until: unparseable date 'soon'"
    assert got[5] == "updated_at: unparseable date 'yesterday'"
    assert got[6] == "valid_from 2025-02-01 is after valid_until 2025-01-01"
    assert got[7] == f"id 'ok' already used by {path}:1 with different content"
    assert got[8].startswith("invalid JSON")
    assert got[9] == "expected a JSON object, got list"
    assert got[10] == "question must be text, got a JSON list"
    assert sorted(got) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert [e.id for e in result.entries] == ["ok", "last"]
    assert all(str(p).startswith(f"{path}:") for p in result.report.rejected)


def test_identical_repeats_are_folded_and_counted(tmp_path: Path) -> None:
    row = {"id": "a", "question": "q", "answer": "x", "variants": ["v"]}
    path = write_jsonl(tmp_path / "kb.jsonl", [row, row, {"id": "b", "question": "q2", "answer": "y"}, row])
    report = run_ingest([path], IngestSettings(), today=TODAY).report
    assert (report.rows_read, report.loaded, report.identical_repeats, len(report.rejected)) == (4, 2, 2, 0)


def test_empty_answers_are_rejected_unless_answers_from_questions(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "kb.jsonl", [{"id": "i1", "question": "card arrival", "answer": None},
                                               {"id": "i2", "question": "card lost"},
                                               {"id": "i3", "question": "card fee", "answer": "  "},
                                               {"id": "i4", "question": "top up", "answer": "In the app."}])
    default = run_ingest([path], IngestSettings(), today=TODAY)
    assert [e.id for e in default.entries] == ["i4"] and default.report.answers_from_question == 0
    assert {(p.line, p.reason) for p in default.report.rejected} == {(1, "empty answer"), (2, "empty answer"),
                                                                    (3, "empty answer")}
    intents = run_ingest([path], IngestSettings(), today=TODAY, answers_from_questions=True)
    assert [e.answer for e in intents.entries] == ["card arrival", "card lost", "card fee", "In the app."]
    assert intents.report.answers_from_question == 3 and not intents.report.rejected


def test_answers_from_questions_setting_is_off_unless_asked_for() -> None:
    assert answers_from_questions_setting(IngestSettings()) is False
    assert answers_from_questions_setting(IngestSettings(answers_from_questions=True)) is True


@pytest.mark.parametrize("text", ["长期有效", "永久", "永久有效", " 长期 ", "長期有效", "Permanent", "无期限"])
def test_valid_until_that_never_ends(tmp_path: Path, text: str) -> None:
    path = write_jsonl(tmp_path / "kb.jsonl", [{"question": "q", "answer": "a", "有效期至": text}])
    (entry,) = run_ingest([path], IngestSettings(), today=TODAY).entries
    assert entry.valid_until is None


def test_no_end_words_are_not_a_start_date(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "kb.jsonl", [{"question": "q", "answer": "a", "生效日期": "永久"}])
    (bad,) = run_ingest([path], IngestSettings(), today=TODAY).report.rejected
    assert bad.reason == "valid_from: unparseable date '永久'"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("怎么退货|退货流程", ("怎么退货", "退货流程")),
     ("怎么退货；退货流程；如何退", ("怎么退货", "退货流程", "如何退")),
     ("怎么退货、退货流程", ("怎么退货", "退货流程")),
     ("怎么退货\n退货流程\r\n如何退", ("怎么退货", "退货流程", "如何退")),
     ("1. 怎么退货\n2. 退货流程", ("怎么退货", "退货流程")),
     ("1、怎么退货\n2、退货流程", ("怎么退货", "退货流程")),
     ("2.5G套餐怎么办理", ("2.5G套餐怎么办理",)),
     (" | 怎么退货 ||、", ("怎么退货",))],
)
def test_variant_separators(tmp_path: Path, cell: str, expected: tuple[str, ...]) -> None:
    path = tmp_path / "kb.csv"
    path.write_text('question,answer,variants\n如何退货？,七天内可退。,"' + cell + '"\n', "utf-8")
    (entry,) = run_ingest([path], IngestSettings(), today=TODAY).entries
    assert entry.variants == expected


def test_derived_ids_are_stable_and_content_based() -> None:
    a = derived_id("如何退货？", "七天内可退。")
    assert re.fullmatch(r"faq-[0-9a-f]{12}", a)
    assert a == derived_id(" 如何退货？ ", "七天内可退。")          # surrounding whitespace
    assert a == derived_id("如何退货?", "七天内可退。")             # NFKC folds the full-width ？
    assert derived_id("ＡＢＣ", "x") == derived_id("ABC", "x")       # width folding
    assert a != derived_id("如何退货？", "十天内可退。")
    assert a == "faq-" + hashlib.sha1("如何退货?\x1f七天内可退。".encode()).hexdigest()[:12]


def test_missing_ids_are_derived_and_collisions_explained(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "kb.jsonl", [
        {"question": "q", "answer": "x", "section": "A"},
        {"question": "q", "answer": "x", "section": "B"},
    ])
    result = run_ingest([path], IngestSettings(), today=TODAY)
    assert [e.id for e in result.entries] == [derived_id("q", "x")]
    (bad,) = result.report.rejected
    assert bad.line == 2 and "derived from question+answer" in bad.reason and f"{path}:1" in bad.reason


def test_variants_are_cleaned(tmp_path: Path) -> None:
    row = {"question": "q", "answer": "x", "variants": ["v1", " v1 ", "", "q", "v2"]}
    path = write_jsonl(tmp_path / "kb.jsonl", [row])
    (entry,) = run_ingest([path], IngestSettings(), today=TODAY).entries
    assert entry.variants == ("v1", "v2")


def test_strict_mode_raises_listing_every_bad_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "kb.jsonl", [{"question": "", "answer": "x"}, {"question": "ok", "answer": "y"},
                                               {"question": "q", "answer": "z", "valid_until": "31/12/2024"}])
    with pytest.raises(BadInputError) as info:
        run_ingest([path], IngestSettings(), today=TODAY, strict=True)
    message = str(info.value)
    assert f"{path}:1: empty question" in message
    assert f"{path}:3: valid_until: unparseable date '31/12/2024'" in message
    assert info.value.exit_code == 2
    # the same input without strict: skipped and reported, the good row kept
    result = run_ingest([path], IngestSettings(), today=TODAY)
    assert [e.question for e in result.entries] == ["ok"] and len(result.report.rejected) == 2


def test_strict_mode_passes_clean_input(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "kb.jsonl", [{"question": "ok", "answer": "y"}])
    assert len(run_ingest([path], IngestSettings(), today=TODAY, strict=True).entries) == 1
