"""Read FAQ files of every supported format into raw records with canonical field names.

Formats (by extension, case-insensitive):

* ``.jsonl`` / ``.ndjson``: one JSON object per line; a bad line is rejected, the rest is read.
* ``.json``: a list of objects, or ``{"entries": [...]}`` (a file of JSON lines is read as JSONL).
* ``.csv`` / ``.tsv``: a header row, then one entry per row; ``variants`` and ``tags`` cells are
  split at ``|``, ``；``, ``、`` and line breaks (``split_list``; a numbered list's ``1.``/``2、``
  markers are dropped).
* ``.xlsx``: every sheet whose row 1 is a header with a question column (openpyxl; date cells are read as
  dates). In a workbook of several sheets (one per category is common) rows are named
  ``file.xlsx[Sheet]:row``; an empty sheet is skipped, any other sheet is noted as not read, and a
  workbook with no such sheet is unreadable.
* ``.md`` / ``.markdown``: ``# Section``, ``## Question``, then the answer up to the next ``#``/``##``
  heading (``###`` and deeper belong to the answer). An optional HTML comment right after the
  question line carries the other fields, e.g. ``<!-- id: rt-1; valid_until: 2025-12-31;
  variants: 怎么退货|退货流程 -->`` (keys take the same aliases as columns).

Column and key names are matched through ``FIELD_ALIASES`` (English and the usual Chinese names,
case, spaces, ``_`` and ``-`` ignored; a trailing hint in brackets, as in MaxKB's ``分段内容（必填，问题答案）``,
is ignored too). Unknown columns are ignored and noted once per file. In JSON, ``meta`` is a free-form
bag: its keys that name a field (``meta.subject`` -> section) fill fields the object lacks, the rest is
ignored. ``ParsedFile.fields`` says which fields a file has at all, so the pipeline can refuse an FAQ
file without an answer column instead of guessing.

The import templates of the usual peers are read as they are downloaded:

* MaxKB's QA template (``分段标题（选填）, 分段内容（必填，…）, 问题（选填，单元格内一行一个）``, also the
  English and traditional-Chinese ones): ``分段内容`` is the answer; the ``问题`` cell holds one question
  per line, the first is the question and the others are variants; ``分段标题`` (``heading``) is the
  question when ``问题`` is empty, otherwise one more variant. The template's own sample row
  (``MaxKB产品介绍``) is skipped with a note.
* FastGPT's ``q,a,indexes`` CSV: ``indexes`` are variants, and so are the cells right of it (FastGPT lets
  indexes run on to the right, under empty headers or none).
* Dify's annotation CSV (``question,answer`` / ``问题,答案``, with a BOM) needs nothing special.

Text files are decoded as UTF-8 (BOM or not), UTF-16 with a BOM, or GB18030 (which covers GBK/GB2312,
common in Chinese Excel exports). A UTF-8 file with a few damaged bytes stays UTF-8 and only the rows
holding the damage are rejected; a file that is neither is reported as unreadable.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import itertools
import json
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbsearch.errors import BadInputError
from kbsearch.ingest.report import Problem

#: Extension -> format name.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".xlsx": "xlsx",
    ".md": "markdown",
    ".markdown": "markdown",
}

#: Canonical field -> accepted column/key names (compared after ``alias_key``).
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "faq_id", "faqid", "编号", "ID"),
    "question": ("question", "q", "title", "standard_question", "问题", "問題", "标准问题", "標準問題", "标准问", "问"),
    # 分段内容 / 分段內容 / Section content: MaxKB's QA template (apps/knowledge/template/csv_template_*.csv)
    "answer": ("answer", "a", "reply", "response", "答案", "回答", "答", "标准答案", "標準答案",
               "分段内容", "分段內容", "section content"),
    # indexes: FastGPT's q,a,indexes CSV (its knowledge-base "template import")
    "variants": (
        "variants", "similar", "similar_questions", "paraphrases", "alternates", "indexes",
        "相似问题", "相似问法", "相似问", "扩展问", "扩展问题", "相似問題",
    ),
    # MaxKB's 分段标题 (paragraph title): the question when the row has none, otherwise a variant
    "heading": ("heading", "分段标题", "分段標題", "section title"),
    "section": ("section", "category", "subject", "topic", "group", "分类", "类别", "栏目", "章节"),
    "valid_until": (
        "valid_until", "valid_to", "expires", "expires_at", "expiry", "expiry_date", "expiration",
        "end_date", "有效期至", "失效日期", "截止日期", "失效时间",
    ),
    "valid_from": (
        "valid_from", "effective", "effective_from", "effective_date", "start_date",
        "生效日期", "生效时间",
    ),
    "updated_at": (
        "updated_at", "updated", "last_updated", "modified", "update_time", "更新时间", "更新日期",
    ),
    "tags": ("tags", "tag", "labels", "标签"),
}

#: Keys that are known but carry no field of their own (JSON ``meta`` is unpacked separately).
_KNOWN_NON_FIELDS = frozenset({"meta"})

#: A hint after a column name, in full- or half-width brackets, up to the end: ``问题（选填，单元格内一行一个）``.
_HEADER_HINT = re.compile(r"\s*[（(\[【].*$", re.S)

#: The sample row of MaxKB's downloadable QA template (its 分段标题 in each language): not content.
MAXKB_SAMPLE_HEADINGS = frozenset({"MaxKB产品介绍", "MaxKB產品介紹", "MaxKB product introduction"})

#: MaxKB's content column (the answer) in each language of its template: its 问题 cells list one per line.
_MAXKB_CONTENT = frozenset({"分段内容", "分段內容", "sectioncontent"})

#: Share of non-ASCII characters that may be damaged before a file stops counting as UTF-8.
_UTF8_DAMAGE_TOLERANCE = 0.05


def alias_key(name: str) -> str:
    """Fold a column/key name for alias lookup: NFKC, lowercase, no spaces, ``_``, ``-`` or ``.``."""
    return re.sub(r"[\s_\-.]+", "", unicodedata.normalize("NFKC", name)).lower()


_ALIAS_TO_FIELD: dict[str, str] = {
    alias_key(alias): name for name, aliases in FIELD_ALIASES.items() for alias in aliases
}


def canonical_field(name: str) -> str | None:
    """Return the canonical field a column/key name stands for, or None when unknown.

    A trailing hint in brackets is ignored when the full name is not an alias itself:
    ``分段内容（必填，问题答案）`` -> ``answer``, ``Question (optional, one per line in the cell)`` -> ``question``.
    """
    name = str(name)
    found = _ALIAS_TO_FIELD.get(alias_key(name))
    if found is None:
        bare = _HEADER_HINT.sub("", name)
        found = _ALIAS_TO_FIELD.get(alias_key(bare)) if bare else None
    return found


@dataclass(frozen=True)
class RawRecord:
    """One entry as read, before validation.

    Attributes:
        file: The file it came from.
        line: 1-based line (text formats), sheet row (XLSX) or item number (JSON array).
        fields: Canonical field name -> value as read (str, list, number, date, None).
    """

    file: str
    line: int
    fields: dict[str, Any]

    @property
    def location(self) -> str:
        """``file:line``, the form reports and ``FaqEntry.source`` use."""
        return f"{self.file}:{self.line}"


@dataclass
class ParsedFile:
    """Everything read from one file.

    Attributes:
        path: The file.
        records: Rows that parsed into records.
        rejected: Rows that could not be parsed at all (invalid JSON line, damaged bytes, ...).
        notes: Remarks about the file (unknown columns, ignored text).
        error: Set when the file could not be read at all; then nothing else is.
        columns: The column names (tables) or keys (JSON) as found, in first-seen order.
        fields: The canonical fields those columns/keys stand for (Markdown: question, answer, section and
            whatever its metadata comments name). An FAQ file without ``answer`` here has no answer column.
    """

    path: str
    records: list[RawRecord] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    error: Problem | None = None
    columns: list[str] = field(default_factory=list)
    fields: set[str] = field(default_factory=set)


class _FileError(Exception):
    """The whole file is unreadable; the message says why."""


def _is_documentation(path: Path, root: Path) -> bool:
    """README files and hidden files/folders found while walking a directory are not FAQ content."""
    parts = path.relative_to(root).parts
    return path.name.upper().startswith("README") or any(p.startswith(".") for p in parts)


def discover(paths: list[Path]) -> tuple[list[Path], list[Problem]]:
    """Expand files and directories into the files to read, in a stable order.

    Directories are walked recursively in sorted order; files in them with an unsupported extension,
    README files and hidden files are returned as skipped (never silently ignored). A file named explicitly is always returned (an
    unsupported one then fails in ``parse_file`` and is reported as an unreadable file).

    Args:
        paths: Files and/or directories.

    Returns:
        ``(files to parse, skipped files)``.

    Raises:
        BadInputError: When a path does not exist.
    """
    files: list[Path] = []
    skipped: list[Problem] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if _is_documentation(child, path):
                    skipped.append(Problem(str(child), None, "documentation, not FAQ content (README or hidden file)"))
                elif child.suffix.lower() in SUPPORTED_EXTENSIONS:
                    files.append(child)
                else:
                    skipped.append(Problem(str(child), None, f"unsupported file type {child.suffix or '(none)'!r}"))
        elif path.is_file():
            files.append(path)
        else:
            raise BadInputError(f"{path}: no such file or directory")
    return files, skipped


def parse_file(path: Path) -> ParsedFile:
    """Read one file of any supported format. Never raises for bad content: see ``ParsedFile``."""
    result = ParsedFile(str(path))
    fmt = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    try:
        if fmt is None:
            known = ", ".join(sorted(SUPPORTED_EXTENSIONS))
            raise _FileError(f"unsupported file type {path.suffix or '(none)'!r} (supported: {known})")
        if fmt == "xlsx":
            _parse_xlsx(path, result)
        else:
            text, damaged = _decode(_read_bytes(path))
            if fmt in ("csv", "tsv"):
                _parse_csv(text, result, delimiter="\t" if fmt == "tsv" else ",")
            else:
                {"jsonl": _parse_jsonl, "json": _parse_json, "markdown": _parse_markdown}[fmt](text, result)
            if damaged:
                _reject_damaged(result)
    except _FileError as e:
        return ParsedFile(str(path), error=Problem(str(path), None, str(e)))
    return result


# --- decoding -------------------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _FileError(f"cannot read file: {e.strerror or e}") from e


def _decode(data: bytes) -> tuple[str, bool]:
    """Return ``(text, damaged)``; damaged means some bytes were replaced by U+FFFD."""
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(codec), False
            except UnicodeDecodeError as e:
                raise _FileError(f"cannot decode as UTF-16 (byte {e.start})") from e
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    lossy = data.decode("utf-8", errors="replace")
    non_ascii = sum(1 for ch in lossy if ord(ch) > 127)
    if lossy.count("\ufffd") <= _UTF8_DAMAGE_TOLERANCE * non_ascii:
        return lossy, True
    try:
        return data.decode("gb18030"), False
    except UnicodeDecodeError as e:
        raise _FileError(f"cannot decode as UTF-8 or GB18030/GBK (bad byte at offset {e.start})") from e


def _reject_damaged(result: ParsedFile) -> None:
    """Move records holding replaced (undecodable) bytes from records to rejected."""
    keep = []
    for rec in result.records:
        bad = [k for k, v in rec.fields.items() if "\ufffd" in json.dumps(v, ensure_ascii=False, default=str)]
        if bad:
            result.rejected.append(Problem(rec.file, rec.line, f"bytes that are not valid UTF-8 in {', '.join(bad)}"))
        else:
            keep.append(rec)
    result.records = keep


# --- record building ------------------------------------------------------------------------------

LIST_SEPARATORS = re.compile(r"[|；、]")
"""Within one line, a list field (variants, tags) written as text is split at ``|``, ``；`` or ``、``."""

#: ``1.``, ``2、``, ``3)`` at the start of a line: the markers of a numbered list (FastGPT's indexes).
_NUMBERED = re.compile(r"^\s*\d{1,3}\s*[.、．)）]\s*")


def split_list(text: str) -> list[str]:
    """Split a list written as text into its stripped, non-empty items.

    Lines are items; within a line ``|``, ``；`` and ``、`` separate items. When every line of a multi-line
    cell starts with a list number (``1. …``, ``2、…``) the numbers are dropped first, so that ``1、`` is not
    read as a separator.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and all(_NUMBERED.match(ln) for ln in lines):
        lines = [_NUMBERED.sub("", ln, count=1) for ln in lines]
    return [item.strip() for ln in lines for item in LIST_SEPARATORS.split(ln) if item.strip()]


def _split_list(value: Any) -> Any:
    """List text -> list (``split_list``); lists pass through; other values are left to validation."""
    if isinstance(value, str):
        return split_list(value)
    return value


def _record_from_mapping(
    obj: dict[str, Any], file: str, line: int, unknown: dict[str, None], *, unpack_meta: bool = False
) -> RawRecord:
    """Map an object's keys to canonical fields; unknown keys are collected (in first-seen order)."""
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        name = canonical_field(key)
        if name is None:
            if alias_key(str(key)) not in _KNOWN_NON_FIELDS:
                unknown.setdefault(str(key), None)
        elif name not in fields:
            fields[name] = value
    meta = obj.get("meta")
    if unpack_meta and isinstance(meta, dict):
        for key, value in meta.items():
            name = canonical_field(key)
            if name is not None and fields.get(name) in (None, ""):
                fields[name] = value
    return RawRecord(file, line, fields)


def _add_object(result: ParsedFile, obj: dict[str, Any], line: int, unknown: dict[str, None]) -> None:
    """Add a JSON object's record, and its keys and fields to the file's columns and fields."""
    record = _record_from_mapping(obj, result.path, line, unknown, unpack_meta=True)
    result.records.append(record)
    result.fields.update(record.fields)
    result.columns.extend(str(k) for k in obj if str(k) not in result.columns)


def _note_unknown(result: ParsedFile, unknown: dict[str, None], what: str, source: str | None = None) -> None:
    if unknown:
        result.notes.append(Problem(source or result.path, None, f"ignored unknown {what}: {', '.join(unknown)}"))


def _parse_jsonl(text: str, result: ParsedFile) -> None:
    unknown: dict[str, None] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            result.rejected.append(Problem(result.path, line_no, f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            result.rejected.append(Problem(result.path, line_no, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        _add_object(result, obj, line_no, unknown)
    _note_unknown(result, unknown, "keys")


def _parse_json(text: str, result: ParsedFile) -> None:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several documents: a JSON Lines file named .json
            _parse_jsonl(text, result)
            return
        raise _FileError(f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from e
    if isinstance(doc, dict) and isinstance(doc.get("entries"), list):
        doc = doc["entries"]
    if not isinstance(doc, list):
        raise _FileError('expected a JSON list of entries or {"entries": [...]}')
    unknown: dict[str, None] = {}
    for item_no, obj in enumerate(doc, start=1):
        if isinstance(obj, dict):
            _add_object(result, obj, item_no, unknown)
        else:
            result.rejected.append(Problem(result.path, item_no, f"expected a JSON object, got {type(obj).__name__}"))
    _note_unknown(result, unknown, "keys")


@dataclass(frozen=True)
class _Layout:
    """How the cells of a table's rows map to fields.

    Attributes:
        columns: Column index -> canonical field.
        width: Cells in the header row.
        tail: Index of FastGPT's ``indexes`` column when it is the last named one: it and every further
            filled cell, under an empty header or past the header, are variants (FastGPT lets indexes run
            on to the right). None otherwise, and then a row wider than the header is rejected.
        question_lines: The question cell holds one question per line (MaxKB's QA template): the first is
            the question, the others are variants.
        source: The name its rows and notes are reported under: the file, or ``file.xlsx[Sheet]``.
    """

    columns: dict[int, str]
    width: int
    tail: int | None
    question_lines: bool
    source: str


def _header_map(header: list[Any], result: ParsedFile, source: str | None = None) -> _Layout:
    """Read the header row; notes unknown and repeated columns; needs a question column.

    Args:
        source: The name the table's rows and notes are reported under (default the file's path).

    Raises:
        _FileError: no question column; nothing was added to ``result`` then.
    """
    source = source or result.path
    columns: dict[int, str] = {}
    unknown: dict[str, None] = {}
    names: list[str] = []
    repeated: list[Problem] = []
    for i, cell in enumerate(header):
        name = "" if cell is None else str(cell).strip()
        if not name:
            continue
        names.append(name)
        canon = canonical_field(name)
        if canon is None:
            unknown.setdefault(name, None)
        elif canon in columns.values():
            repeated.append(Problem(source, None, f"ignored column {name!r}: {canon} already read from an earlier column"))
        else:
            columns[i] = canon
    if "question" not in columns.values():
        shown = ", ".join(str(c) for c in header if c not in (None, ""))
        raise _FileError(f"no question column in the header row ({shown or 'empty'})")
    result.columns.extend(names)
    result.notes.extend(repeated)
    _note_unknown(result, unknown, "columns", source)
    result.fields.update(columns.values())
    # only FastGPT's own "indexes" column runs on: anywhere else a row wider than its header is a broken row
    # (an unquoted separator would otherwise shift part of an answer into the variants)
    last = max(i for i, cell in enumerate(header) if cell is not None and str(cell).strip())
    tail = last if _bare_key(header[last]) == "indexes" else None
    maxkb = "heading" in columns.values() or any(
        _bare_key(header[i]) in _MAXKB_CONTENT for i, name in columns.items() if name == "answer"
    )
    return _Layout(columns, len(header), tail, maxkb, source)


def _bare_key(name: Any) -> str:
    """A column name folded for lookup without its hint: ``分段内容（必填）`` -> ``分段内容``."""
    return alias_key(_HEADER_HINT.sub("", str(name)))


def _is_blank(cell: Any) -> bool:
    """An empty cell (None, or only whitespace)."""
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _row_record(row: list[Any], layout: _Layout, result: ParsedFile, line: int) -> None:
    """Turn a table row into a record (blank rows are not records; over-wide rows are rejected)."""
    if all(_is_blank(cell) for cell in row):
        return
    width = layout.width
    extra = [c for c in row[width:] if not _is_blank(c)]
    if extra and layout.tail is None:
        result.rejected.append(Problem(
            layout.source, line, f"{width + len(extra)} cells but the header has {width} (unquoted separator?)"
        ))
        return
    fields = {name: row[i] if i < len(row) else None for i, name in layout.columns.items()}
    if layout.question_lines and str(fields.get("heading") or "").strip() in MAXKB_SAMPLE_HEADINGS:
        result.notes.append(Problem(layout.source, line, "skipped the sample row of MaxKB's template"))
        return
    for name in ("variants", "tags"):
        if name in fields:
            fields[name] = _split_list(fields[name])
    if layout.tail is not None:  # the variants cell and every filled cell right of it
        fields["variants"] = [item for c in row[layout.tail:] if not _is_blank(c) for item in split_list(str(c))]
    question = fields.get("question")
    if layout.question_lines and isinstance(question, str):
        first, *others = [ln.strip() for ln in question.splitlines() if ln.strip()] or [""]
        fields["question"] = first
        fields["variants"] = [*others, *(fields.get("variants") or [])]
    result.records.append(RawRecord(layout.source, line, fields))


def _parse_csv(text: str, result: ParsedFile, *, delimiter: str = ",") -> None:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    previous_end = 0
    layout: _Layout | None = None
    try:
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if layout is None:
                if not row:
                    continue
                layout = _header_map(row, result)
                continue
            _row_record(row, layout, result, start)
    except csv.Error as e:
        raise _FileError(f"malformed {'TSV' if delimiter == chr(9) else 'CSV'} near line {reader.line_num}: {e}") from e
    if layout is None:
        raise _FileError("empty file (no header row)")


def _parse_xlsx(path: Path, result: ParsedFile) -> None:
    import openpyxl  # imported here: only XLSX input needs it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError, ValueError) as e:
        raise _FileError(f"cannot open as XLSX: {e}") from e
    try:
        named = len(book.worksheets) > 1
        read = False
        unread: list[str] = []
        for sheet in book.worksheets:
            source = f"{result.path}[{sheet.title}]" if named else result.path
            rows = sheet.iter_rows(values_only=True)
            header = list(next(rows, None) or ())
            try:
                layout = _header_map(header, result, source)
            except _FileError as e:
                # an empty sheet (a workbook's untouched Sheet2) is no content to report
                if not all(_is_blank(c) for row in itertools.chain([header], rows) for c in row):
                    unread.append(f"sheet {sheet.title!r}: {e}" if named else str(e))
                    result.notes.append(Problem(result.path, None, f"sheet {sheet.title!r} not read: {e}"))
                continue
            read = True
            for row_no, row in enumerate(rows, start=2):
                _row_record([_xlsx_value(c) for c in row], layout, result, row_no)
        if not read:
            prefix = "no sheet has a question column in its header row: " if named else ""
            raise _FileError(prefix + "; ".join(unread) if unread else "empty workbook (no header row)")
    finally:
        book.close()


def _xlsx_value(cell: Any) -> Any:
    """Excel numbers that are whole (ids typed as numbers) read as ``"12"``, not ``12.0``."""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    if isinstance(cell, int) and not isinstance(cell, bool):
        return str(cell)
    if isinstance(cell, dt.datetime) and cell.time() == dt.time(0):
        return cell.date()
    return cell


_MD_HEADING = re.compile(r"^(#{1,2})\s+(.*?)(?:\s+#+)?\s*$")  # "## C#" keeps its "#"
_MD_FENCE = re.compile(r"^\s*(```|~~~)")
_MD_META = re.compile(r"^\s*<!--(.*?)-->\s*$", re.S)


def _parse_markdown(text: str, result: ParsedFile) -> None:
    lines = text.splitlines()
    section = ""
    current: tuple[int, str] | None = None  # (line, question)
    body: list[str] = []
    stray: list[int] = []
    unknown: dict[str, None] = {}
    in_fence = False

    def flush() -> None:
        if current is None:
            return
        line_no, question = current
        fields: dict[str, Any] = {}
        rest = body
        first = next((i for i, ln in enumerate(body) if ln.strip()), None)
        if first is not None and body[first].lstrip().startswith("<!--"):
            end = next((i for i in range(first, len(body)) if "-->" in body[i]), None)
            match = _MD_META.match("\n".join(body[first:end + 1])) if end is not None else None
            if match:
                fields = _markdown_meta(match.group(1), unknown)
                rest = body[end + 1:]
        fields.setdefault("section", section)
        fields["question"] = question
        fields["answer"] = "\n".join(rest).strip()
        result.records.append(RawRecord(result.path, line_no, fields))
        result.fields.update(fields)

    for line_no, line in enumerate(lines, start=1):
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _MD_HEADING.match(line)
        if heading and len(heading.group(1)) == 1:
            flush()
            current, body, section = None, [], heading.group(2)
        elif heading:
            flush()
            current, body = (line_no, heading.group(2)), []
        elif current is not None:
            body.append(line)
        elif line.strip():
            stray.append(line_no)
    flush()
    if stray:
        shown = ", ".join(map(str, stray[:10])) + (" ..." if len(stray) > 10 else "")
        result.notes.append(Problem(result.path, None, f"ignored text outside any '## question' (lines {shown})"))
    _note_unknown(result, unknown, "metadata keys")


def _markdown_meta(text: str, unknown: dict[str, None]) -> dict[str, Any]:
    """``key: value; key: value`` (or one per line) -> canonical fields."""
    fields: dict[str, Any] = {}
    for part in re.split(r"[;\n；]", text):
        if not part.strip():
            continue
        match = re.match(r"\s*([^:：]+?)\s*[:：]\s*(.*?)\s*$", part, re.S)
        name = canonical_field(match.group(1)) if match else None
        if match is None or name is None:
            unknown.setdefault((match.group(1) if match else part).strip(), None)
            continue
        value = match.group(2)
        fields[name] = _split_list(value) if name in ("variants", "tags") else value
    return fields
