"""Ingest reads every supported format, the Chinese and English field aliases, and the encodings."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from kbsearch.config import IngestSettings
from kbsearch.errors import BadInputError
from kbsearch.ingest import run_ingest
from kbsearch.ingest.parse import canonical_field

DATA = Path(__file__).parent / "data" / "ingest"
TODAY = dt.date(2025, 6, 1)
ZH_HEADER = "编号,标准问题,答案,相似问法,类别,有效期至,标签"
ZH_ROW = "c-1,如何开具发票？,在订单详情页点击“申请发票”。,怎么开发票|发票怎么开,发票,2099年12月31日,财务|发票"


@pytest.fixture(scope="module")
def settings() -> IngestSettings:
    return IngestSettings()


def ingest(paths: list[Path], settings: IngestSettings, **kw):
    return run_ingest(paths, settings, today=TODAY, **kw)


def by_id(result) -> dict:
    return {e.id: e for e in result.entries}


@pytest.mark.parametrize(
    ("alias", "field"),
    [("问题", "question"), ("标准问题", "question"), ("问", "question"), ("Q", "question"),
     ("答案", "answer"), ("回答", "answer"), ("答", "answer"), ("a", "answer"),
     ("相似问题", "variants"), ("相似问法", "variants"), ("扩展问", "variants"),
     ("分类", "section"), ("类别", "section"), ("栏目", "section"), ("章节", "section"), ("Category", "section"),
     ("有效期至", "valid_until"), ("失效日期", "valid_until"), ("截止日期", "valid_until"), ("expires", "valid_until"),
     ("生效日期", "valid_from"), ("生效时间", "valid_from"), ("更新时间", "updated_at"), ("更新日期", "updated_at"),
     ("标签", "tags"), ("编号", "id"), ("ID", "id"), ("id", "id"), ("Valid Until", "valid_until"),
     ("valid-from", "valid_from"), ("备注", None),
     # hints after the name (MaxKB's template), FastGPT's indexes
     ("分段内容（必填，问题答案）", "answer"), ("分段标题（选填）", "heading"), ("問題（選填，單元格內一行一個）", "question"),
     ("Section content (required, question answer)", "answer"), ("答案(必填)", "answer"), ("indexes", "variants"),
     ("（选填）", None)],
)
def test_column_aliases(alias: str, field: str | None) -> None:
    assert canonical_field(alias) == field


def test_markdown_sections_questions_metadata_and_code_fences(settings: IngestSettings) -> None:
    result = ingest([DATA / "faq_zh.md"], settings)
    entries = by_id(result)
    assert [e.question for e in result.entries] == ["如何退货？", "退货运费谁承担？", "How do I reset my password?"]
    rt = entries["rt-1"]
    assert rt.section == "退货政策"
    assert rt.valid_until == dt.date(2099, 12, 31)
    assert rt.variants == ("怎么退货", "退货流程")
    assert rt.tags == ("售后", "退货")
    # ### belongs to the answer, and a '#' line inside a code fence is not a section
    assert "### 退货条件" in rt.answer and "# 这不是标题" in rt.answer
    assert rt.source.endswith("faq_zh.md:3")
    assert entries["acct-1"].section == "Account"
    assert entries["acct-1"].updated_at == "2024-05-01T10:00:00"
    shipping = next(e for e in result.entries if e.question == "退货运费谁承担？")
    assert shipping.id.startswith("faq-") and shipping.section == "退货政策"


def test_jsonl_english_aliases_meta_and_unknown_keys(settings: IngestSettings) -> None:
    result = ingest([DATA / "faq_en.jsonl"], settings)
    entries = by_id(result)
    ship = entries["ship-1"]
    assert (ship.question, ship.answer) == ("How long does shipping take?", "3-5 business days.")
    assert ship.section == "Shipping"
    assert ship.variants == ("delivery time", "when will my order arrive")
    assert ship.valid_until == dt.date(2099, 1, 31)
    abroad = next(e for e in result.entries if e.question == "Do you ship abroad?")
    assert abroad.section == "Shipping"  # from meta.subject
    assert abroad.tags == ("intl", "shipping")
    assert entries["pay-1"].valid_from == dt.date(2020, 1, 1)
    notes = [n.reason for n in result.report.notes]
    assert notes == ["ignored unknown keys: notes"]


@pytest.mark.parametrize("shape", ["list", "entries"])
def test_json_document(tmp_path: Path, settings: IngestSettings, shape: str) -> None:
    items = [{"id": "j1", "问题": "如何改地址", "答案": "在订单页修改。"}, {"id": "j2", "question": "Q2", "answer": "A2"}]
    path = tmp_path / "kb.json"
    path.write_text(json.dumps(items if shape == "list" else {"entries": items}, ensure_ascii=False), "utf-8")
    result = ingest([path], settings)
    assert [(e.id, e.question) for e in result.entries] == [("j1", "如何改地址"), ("j2", "Q2")]
    assert result.entries[1].source.endswith("kb.json:2")


def test_json_document_of_wrong_shape_is_a_file_error(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "kb.json"
    path.write_text('{"faqs": []}', "utf-8")
    result = ingest([path], settings)
    assert result.entries == [] and len(result.report.file_errors) == 1
    assert "kb.json" in str(result.report.file_errors[0]) and "entries" in str(result.report.file_errors[0])


def test_csv_with_chinese_headers(settings: IngestSettings) -> None:
    result = ingest([DATA / "faq_zh.csv"], settings)
    c1, c2 = result.entries
    assert (c1.id, c1.question, c1.section) == ("c-1", "如何开具发票？", "发票")
    assert c1.variants == ("怎么开发票", "发票怎么开")
    assert (c1.valid_from, c1.valid_until, c1.updated_at) == (dt.date(2020, 1, 1), dt.date(2099, 12, 31), "2024-03-05")
    assert c1.tags == ("财务", "发票")
    assert c2.variants == () and c2.valid_until is None
    assert c2.source.endswith("faq_zh.csv:3")
    assert [n.reason for n in result.report.notes] == ["ignored unknown columns: 备注"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030"])
def test_csv_encodings(tmp_path: Path, settings: IngestSettings, encoding: str) -> None:
    path = tmp_path / f"kb-{encoding}.csv"
    path.write_bytes(f"{ZH_HEADER}\n{ZH_ROW}\n".encode(encoding))
    result = ingest([path], settings)
    assert not result.report.file_errors and not result.report.rejected
    (entry,) = result.entries
    assert (entry.id, entry.question, entry.answer) == ("c-1", "如何开具发票？", "在订单详情页点击“申请发票”。")


def test_tsv(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "kb.tsv"
    path.write_text("问题\t回答\t扩展问\n怎么注销账户\t在设置中点击注销。\t注销账号|删除账户\n", "utf-8")
    (entry,) = ingest([path], settings).entries
    assert entry.question == "怎么注销账户" and entry.variants == ("注销账号", "删除账户")


def test_undecodable_file_is_reported_by_name(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "broken.csv"
    path.write_bytes(b"question,answer\n\x81\x20\xff\xfe\x80,x\n")
    result = ingest([path], settings)
    (err,) = result.report.file_errors
    assert err.file.endswith("broken.csv") and "decode" in err.reason
    with pytest.raises(BadInputError, match=r"broken\.csv"):
        ingest([path], settings, strict=True)


def test_utf8_file_with_one_damaged_row_rejects_only_that_row(tmp_path: Path, settings: IngestSettings) -> None:
    rows = "".join(f"怎么修改第{i}个收货地址,在地址簿中编辑第{i}个地址。\n" for i in range(10))
    data = ("问题,答案\n" + rows).encode("utf-8").replace("第3个收货".encode(), b"\xe7\x3f\xff")
    path = tmp_path / "damaged.csv"
    path.write_bytes(data)
    result = ingest([path], settings)
    assert len(result.entries) == 9
    (bad,) = result.report.rejected
    assert (bad.line, "not valid UTF-8" in bad.reason) == (5, True)


def test_xlsx_with_chinese_headers_and_date_cells(tmp_path: Path, settings: IngestSettings) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["ID", "问题", "答案", "相似问题", "分类", "有效期至", "生效时间", "备注"])
    sheet.append([101, "如何修改手机号？", "在账户设置中修改。", "换手机号|改手机号", "账户", dt.datetime(2099, 1, 1), "2021/05/06", "x"])
    sheet.append([None, None, None, None, None, None, None, None])  # a blank row is not a record
    sheet.append([102, "如何注销？", "联系客服。", None, "账户", None, None, None])
    book.create_sheet("headers only").append(["问题", "答案"])  # read, and adds nothing
    path = tmp_path / "kb.xlsx"
    book.save(path)
    result = ingest([path], settings)
    first, second = result.entries
    assert (first.id, first.question, first.section) == ("101", "如何修改手机号？", "账户")
    assert first.variants == ("换手机号", "改手机号")
    assert (first.valid_until, first.valid_from) == (dt.date(2099, 1, 1), dt.date(2021, 5, 6))
    assert second.source.endswith("kb.xlsx[Sheet]:4")  # a workbook of several sheets names the sheet
    assert result.report.rows_read == 2
    assert [n.reason for n in result.report.notes] == ["ignored unknown columns: 备注"]


def test_xlsx_reads_every_sheet_and_names_it(tmp_path: Path, settings: IngestSettings) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    returns = book.active
    returns.title = "退货"
    returns.append(["问题", "答案"])
    returns.append(["怎么退货？", "在订单页申请退货。"])
    invoices = book.create_sheet("Invoices")
    invoices.append(["Question", "Answer", "Category"])
    invoices.append(["How do I get an invoice?", "Request it on the order page.", "Billing"])
    invoices.append(["Can I change the invoice title?", None, "Billing"])
    book.create_sheet("Sheet3")  # empty: skipped without a word
    book.create_sheet("说明").append(["本表由客服部维护，每月更新"])  # not an FAQ table: a note names it
    path = tmp_path / "kb.xlsx"
    book.save(path)
    result = ingest([path], settings)
    returns_entry, invoice = result.entries
    assert returns_entry.source == f"{path}[退货]:2" and invoice.source == f"{path}[Invoices]:2"
    assert invoice.section == "Billing"
    assert [str(p) for p in result.report.rejected] == [f"{path}[Invoices]:3: empty answer"]
    assert [str(n) for n in result.report.notes] == [
        f"{path}: sheet '说明' not read: no question column in the header row (本表由客服部维护，每月更新)"]
    assert result.report.rows_read == 3 and result.report.files == [str(path)]


def test_xlsx_without_any_faq_sheet_is_a_file_error(tmp_path: Path, settings: IngestSettings) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.active.append(["名称", "数量"])
    book.active.append(["发票", 3])
    path = tmp_path / "one.xlsx"
    book.save(path)
    (error,) = ingest([path], settings).report.file_errors
    assert str(error) == f"{path}: no question column in the header row (名称, 数量)"  # one sheet: not named
    book.create_sheet("Notes").append(["see the wiki"])
    book.create_sheet("Empty")
    book.save(path)
    (error,) = ingest([path], settings).report.file_errors
    assert str(error) == (f"{path}: no sheet has a question column in its header row: sheet 'Sheet': "
                          "no question column in the header row (名称, 数量); sheet 'Notes': no question column in "
                          "the header row (see the wiki)")


def test_corrupt_xlsx_is_a_file_error(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "bad.xlsx"
    path.write_bytes(b"not a zip file")
    result = ingest([path], settings)
    assert result.report.file_errors[0].file.endswith("bad.xlsx")


def test_unknown_columns_noted_once_per_file(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "kb.csv"
    path.write_text("question,answer,owner,priority\n" + "".join(f"q{i},a{i},me,1\n" for i in range(5)), "utf-8")
    result = ingest([path], settings)
    assert len(result.entries) == 5
    assert [n.reason for n in result.report.notes] == ["ignored unknown columns: owner, priority"]


def test_csv_without_question_column_is_a_file_error(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "kb.csv"
    path.write_text("标题,内容\nx,y\n", "utf-8")
    (err,) = ingest([path], settings).report.file_errors
    assert "no question column" in err.reason


def test_csv_row_with_too_many_cells_is_rejected(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "kb.csv"
    path.write_text("question,answer\nq1,a1\nq2,a, with comma\nq3,a3\n", "utf-8")
    result = ingest([path], settings)
    assert [e.question for e in result.entries] == ["q1", "q3"]
    (bad,) = result.report.rejected
    assert bad.line == 3 and "3 cells" in bad.reason


def test_directory_recursion_sorted_and_unknown_extensions_reported(tmp_path: Path, settings: IngestSettings) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a.jsonl").write_text('{"question": "q-a", "answer": "x"}\n', "utf-8")
    (tmp_path / "b" / "c.csv").write_text("q,a\nq-c,y\n", "utf-8")
    (tmp_path / "b" / "notes.txt").write_text("not an faq", "utf-8")
    (tmp_path / "b" / "README.md").write_text("# About\n## Files\nthis folder holds FAQs\n", "utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.jsonl").write_text('{"question": "q-h", "answer": "h"}\n', "utf-8")
    (tmp_path / "Z.MD").write_text("## q-z\nz\n", "utf-8")
    result = ingest([tmp_path], settings)
    assert [e.question for e in result.entries] == ["q-z", "q-a", "q-c"]  # sorted paths: Z.MD < a.jsonl < b/
    skipped = {Path(p.file).name: p.reason for p in result.report.skipped_files}
    assert ".txt" in skipped["notes.txt"]
    assert "documentation" in skipped["README.md"] and "documentation" in skipped["x.jsonl"]


def test_explicit_unsupported_file_is_an_error_and_missing_path_raises(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "kb.txt"
    path.write_text("q", "utf-8")
    assert ingest([path], settings).report.file_errors[0].file.endswith("kb.txt")
    with pytest.raises(BadInputError, match="no such file"):
        ingest([tmp_path / "missing.jsonl"], settings)


def test_markdown_text_outside_questions_is_noted(tmp_path: Path, settings: IngestSettings) -> None:
    path = tmp_path / "kb.md"
    path.write_text("Intro text.\n# S\nmore intro\n## Q1 ##\nA1\n## Do you teach C#\nYes.\n", "utf-8")
    result = ingest([path], settings)
    assert [(e.question, e.answer) for e in result.entries] == [("Q1", "A1"), ("Do you teach C#", "Yes.")]
    assert {e.section for e in result.entries} == {"S"}
    assert "lines 1, 3" in result.report.notes[0].reason


def test_same_content_gets_the_same_id_in_every_format(tmp_path: Path, settings: IngestSettings) -> None:
    (tmp_path / "a.csv").write_text("问题,答案\n如何退货？,七天内可退。\n", "utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"问题": "如何退货？", "答案": "七天内可退。"}, ensure_ascii=False) + "\n", "utf-8")
    (tmp_path / "c.md").write_text("## 如何退货？\n\n七天内可退。\n", "utf-8")
    result = ingest([tmp_path], settings)
    assert len(result.entries) == 1 and result.report.identical_repeats == 2
