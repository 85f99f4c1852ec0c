"""The import templates support teams already have, read as downloaded; FAQ files without an answer column.

Each fixture follows a peer's published column layout (cited at the fixture); the texts are our own.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from kbsearch.config import IngestSettings
from kbsearch.errors import BadInputError
from kbsearch.ingest import run_ingest

TODAY = dt.date(2025, 6, 1)

# MaxKB's QA template, 1Panel-dev/MaxKB apps/knowledge/template/csv_template_zh.csv (earlier
# apps/dataset/template/): this header row, with its hints and the doubled closing bracket, then a sample row
# whose 分段标题 is "MaxKB产品介绍"; 问题 holds one question per line. The .xlsx templates
# (excel_template_{zh,en,zh_Hant}.xlsx) have the same three columns on a first sheet named after the
# sample, and an empty second sheet "Sheet1".
MAXKB_CSV_HEADER = "分段标题（选填）,分段内容（必填，问题答案，最长不超过4096个字符））,问题（选填，单元格内一行一个）"
MAXKB_XLSX_HEADERS = {
    "zh": (("分段标题（选填）", "分段内容（必填，问题答案）", "问题（选填，单元格内一行一个）"), "MaxKB产品介绍"),
    "en": (("Section title (optional)", "Section content (required, question answer)",
            "Question (optional, one per line in the cell)"), "MaxKB product introduction"),
    "zh_Hant": (("分段標題（選填）", "分段內容（必填，問題答案）", "問題（選填，單元格內一行一個）"), "MaxKB產品介紹"),
}


def ingest(paths: list[Path], **kw):
    return run_ingest(paths, IngestSettings(), today=TODAY, **kw)


def test_maxkb_csv_template_as_downloaded(tmp_path: Path) -> None:
    path = tmp_path / "maxkb.csv"
    path.write_text(
        MAXKB_CSV_HEADER + "\n"
        '"MaxKB产品介绍","这一行是模板自带的示例。\n第二行。","示例问题？\n另一个示例"\n'
        '退货政策,"七天无理由退货，自签收次日起算。\n商品需保持完好。","如何退货？\n怎么退货\n退货流程\n"\n'
        "发票怎么开,在订单详情页申请电子发票。,\n"
        ",满99元包邮。,\n",
        "utf-8",
    )
    result = ingest([path])
    returns, invoice = result.entries
    assert (returns.question, returns.variants) == ("如何退货？", ("怎么退货", "退货流程", "退货政策"))
    assert returns.answer == "七天无理由退货，自签收次日起算。\n商品需保持完好。"
    assert (invoice.question, invoice.variants) == ("发票怎么开", ())  # no 问题: the title is the question
    assert invoice.source.endswith("maxkb.csv:10")  # lines of the file: cells span several
    (bad,) = result.report.rejected  # content without a title or a question is not an FAQ entry
    assert (bad.line, bad.reason) == (11, "empty question")
    assert [str(n) for n in result.report.notes] == [f"{path}:2: skipped the sample row of MaxKB's template"]
    assert result.report.rows_read == 3


@pytest.mark.parametrize("lang", sorted(MAXKB_XLSX_HEADERS))
def test_maxkb_xlsx_template_in_each_language(tmp_path: Path, lang: str) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    header, sample = MAXKB_XLSX_HEADERS[lang]
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = sample
    sheet.append(header)
    sheet.append([sample, "模板示例内容。", "示例问题？\n另一个示例\n"])
    sheet.append([None, "在“我的-设置-账户安全”中修改密码。", "怎么改密码\n修改登录密码\n"])
    book.create_sheet("Sheet1")
    path = tmp_path / f"maxkb_{lang}.xlsx"
    book.save(path)
    result = ingest([path])
    (entry,) = result.entries
    assert (entry.question, entry.variants) == ("怎么改密码", ("修改登录密码",))
    assert entry.answer == "在“我的-设置-账户安全”中修改密码。" and entry.source.endswith(":3")
    assert not result.report.rejected and "sample row" in result.report.notes[0].reason


# FastGPT's template import (labring/FastGPT, the dataset "template import" modal; doc.fastgpt.io
# .../knowledge_base/template): header q,a,indexes, one QA pair per row, indexes a numbered list
# ("1. …\n2. …") and further indexes in the cells to the right. The Chinese template's header ends with an
# empty column ("q,a,indexes,"); the English one has no column for the fourth cell at all.
@pytest.mark.parametrize("header", ["q,a,indexes", "q,a,indexes,"])
def test_fastgpt_q_a_indexes_csv(tmp_path: Path, header: str) -> None:
    path = tmp_path / "fastgpt.csv"
    path.write_text(
        f"{header}\n"
        '"怎么退货？","七天内在订单页申请退货。","1. 如何退货？\n2. 退货流程是什么？\n3. 可以退货吗？","退货要多久？"\n'
        '"支持哪些付款方式？","银行卡和云杉钱包。","付款方式"\n'
        '"发票怎么开？","在订单页申请电子发票。",""\n',
        "utf-8",
    )
    result = ingest([path])
    returns, pay, invoice = result.entries
    assert returns.question == "怎么退货？" and returns.answer == "七天内在订单页申请退货。"
    assert returns.variants == ("如何退货？", "退货流程是什么？", "可以退货吗？", "退货要多久？")
    assert pay.variants == ("付款方式",) and invoice.variants == ()
    assert not result.report.rejected and not result.report.notes


@pytest.mark.parametrize("header", ["q,indexes,a", "question,answer,variants"])
def test_a_row_wider_than_the_header_is_still_rejected_unless_fastgpt_indexes_end_it(tmp_path: Path,
                                                                                      header: str) -> None:
    """An unquoted comma in an answer must not shift half of it into the variants."""
    path = tmp_path / "kb.csv"
    path.write_text(f"{header}\n怎么退货？,七天内可退,需保持完好。,退货流程\n", "utf-8")
    (bad,) = ingest([path]).report.rejected
    assert "4 cells but the header has 3" in bad.reason


# Dify's annotation bulk import (langgenius/dify web/app/components/app/annotation/batch-add-annotation-modal/
# csv-downloader.tsx): a CSV written with a BOM, header question,answer (English UI) or 问题,答案 (Chinese UI),
# one annotation per row; its annotation export writes Question,Answer / 问题,答案.
@pytest.mark.parametrize("header", ["问题,答案", "question,answer", "Question,Answer"])
def test_dify_annotation_csv(tmp_path: Path, header: str) -> None:
    path = tmp_path / "dify.csv"
    path.write_bytes(("\ufeff" + f"{header}\r\n如何修改手机号？,在账户设置中修改。\r\n"
                      '"Can I pay in installments?","Yes, on orders of ¥300 or more."\r\n').encode("utf-8"))
    result = ingest([path])
    assert [(e.question, e.answer) for e in result.entries] == [
        ("如何修改手机号？", "在账户设置中修改。"), ("Can I pay in installments?", "Yes, on orders of ¥300 or more.")]
    assert not result.report.rejected and not result.report.notes


def test_faq_file_without_an_answer_column_is_an_error_naming_file_and_columns(tmp_path: Path) -> None:
    good = tmp_path / "a.csv"
    good.write_text("问题,答案\n如何退货？,七天内可退。\n", "utf-8")
    bad = tmp_path / "b.csv"
    bad.write_text("问题,内容,分类\n如何退货？,七天内可退。,售后\n", "utf-8")
    with pytest.raises(BadInputError) as info:
        ingest([tmp_path])
    message = str(info.value)
    assert f"{bad}: no answer column among the columns found (问题, 内容, 分类)" in message
    assert str(good) not in message and "--answers-from-questions" in message and "答案" in message
    assert info.value.exit_code == 2


def test_jsonl_without_an_answer_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    rows = [{"id": "1", "question": "如何退货？", "content": "七天内可退。"}, {"id": "2", "question": "q2"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    found = r"kb\.jsonl: no answer column among the columns found \(id, question, content\)"
    with pytest.raises(BadInputError, match=found):
        ingest([path])


def test_intent_dataset_without_answers_is_read_when_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "intents.csv"
    path.write_text("question,variants\ncard arrival,where is my card|card not arrived\ncard lost,I lost my card\n",
                    "utf-8")
    result = ingest([path], answers_from_questions=True)
    assert [(e.question, e.answer) for e in result.entries] == [("card arrival",) * 2, ("card lost",) * 2]
    assert result.report.answers_from_question == 2


def test_empty_answers_in_a_file_with_an_answer_column_are_rejected_rows(tmp_path: Path) -> None:
    """FastGPT's plain-chunk mode (q = content, a empty) is not an FAQ: each row is rejected, with its line."""
    path = tmp_path / "chunks.csv"
    path.write_text("q,a,indexes\n退货规则全文……,,\n如何退货？,七天内可退。,\n", "utf-8")
    result = ingest([path])
    assert [e.question for e in result.entries] == ["如何退货？"]
    assert [(p.line, p.reason) for p in result.report.rejected] == [(2, "empty answer")]
