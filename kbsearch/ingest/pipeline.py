"""The ingest stage end to end: files -> parse -> validate -> expiry -> dedupe -> chunk.

Expired entries are filtered *before* dedupe, so an out-of-date entry can neither absorb nor be absorbed
by a current one; dated-policy flags are added after dedupe, on the entries that are kept. Stage
seconds are recorded as ``parse``, ``validate``, ``expiry`` (window filter + policy flags), ``dedupe``
and ``chunk``.

Two things make a run fail loudly instead of quietly building something wrong: an FAQ file without an
answer column is an error (``BadInputError`` naming the file and the columns it has) unless the run is
for an intent dataset (``answers_from_questions``), and ``check_rejects`` tells a caller when more rows
were rejected than it allows (``kbsearch ingest --max-rejects``, 0 by default).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kbsearch.config import IngestSettings
from kbsearch.errors import BadInputError
from kbsearch.ingest.chunk import chunk_entries
from kbsearch.ingest.dedupe import Deduper
from kbsearch.ingest.expiry import filter_valid, flag_dated
from kbsearch.ingest.parse import FIELD_ALIASES, ParsedFile, discover, parse_file
from kbsearch.ingest.report import IngestReport
from kbsearch.ingest.validate import validate
from kbsearch.types import Chunk, FaqEntry

#: Inputs with more rows than this get a progress bar when ``progress=True``.
PROGRESS_MIN_ROWS = 2000
#: How many bad rows a strict-mode error message lists before "... and N more".
STRICT_MESSAGE_LIMIT = 50


@dataclass(frozen=True)
class IngestResult:
    """What ingest hands to the index builder.

    Attributes:
        entries: Kept canonical entries (after expiry filter and dedupe), in input order.
        chunks: The chunks of those entries, in entry order.
        report: Counts, reasons and stage timings (``to_json()``, ``render()``, ``add_stage()``).
    """

    entries: list[FaqEntry]
    chunks: list[Chunk]
    report: IngestReport


@contextmanager
def _timed(report: IngestReport, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        report.add_stage(stage, time.perf_counter() - start)


@contextmanager
def _progress(enabled: bool, total: int, desc: str) -> Iterator[Callable[[int], object] | None]:
    """Yield ``tick(n)`` advancing a tqdm bar on stderr, or None when no bar is wanted."""
    if not enabled or total <= PROGRESS_MIN_ROWS:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="row", file=sys.stderr, leave=False, disable=None) as bar:  # no bar off a TTY
        yield bar.update


def answers_from_questions_setting(settings: IngestSettings) -> bool:
    """Whether the settings ask for answers from questions (intent datasets); off unless asked for."""
    return settings.answers_from_questions


def _answer_column_error(files: list[ParsedFile]) -> BadInputError:
    """The error for FAQ files that have no answer column: each file, the columns it has, what to do."""
    names = ", ".join(FIELD_ALIASES["answer"])
    listed = "\n".join(
        f"  {f.path}: no answer column among the columns found ({', '.join(f.columns) or 'none'})" for f in files
    )
    return BadInputError(
        f"{len(files)} file(s) without an answer column; ingest stopped before building anything:\n{listed}\n"
        f"Name the answer column one of: {names} (case, spaces, '_' and '-' ignored). An intent dataset, "
        "whose questions are their own answers, is read with --answers-from-questions "
        "(ingest.answers_from_questions)."
    )


def check_rejects(report: IngestReport, max_rejects: int) -> None:
    """Fail when more rows were rejected than allowed, or when any file could not be read at all.

    Args:
        report: The report of a run (its rows and files are listed there, with reasons).
        max_rejects: Rejected rows a caller accepts (``--max-rejects``); an unreadable file is never
            accepted, since every row in it would be lost without a line of its own in the report.

    Raises:
        BadInputError: Saying how many rows and files were bad.
    """
    rejected, unreadable = len(report.rejected), len(report.file_errors)
    if rejected <= max_rejects and not unreadable:
        return
    parts = []
    if rejected > max_rejects:
        parts.append(f"{rejected} rejected row(s), more than the {max_rejects} allowed (--max-rejects)")
    if unreadable:
        parts.append(f"{unreadable} unreadable file(s)")
    raise BadInputError(f"ingest found {' and '.join(parts)}; each is listed in the report with its reason")


def run_ingest(
    paths: list[Path],
    settings: IngestSettings,
    *,
    today: dt.date | None = None,
    strict: bool = False,
    progress: bool = False,
    answers_from_questions: bool | None = None,
) -> IngestResult:
    """Read FAQ files and directories into validated, deduplicated, chunked entries.

    Args:
        paths: Files and/or directories (walked recursively in sorted order).
        settings: The ``ingest`` group (dedupe, policy age, chunk size, answers from questions).
        today: The day validity windows and policy ages are judged on (default: today).
        strict: Raise instead of skipping when any row is rejected or any file is unreadable.
        progress: Show tqdm progress bars on stderr for inputs over ``PROGRESS_MIN_ROWS`` rows.
        answers_from_questions: Read an intent dataset: a file may lack an answer column and an empty
            answer is the question. None: the setting (``answers_from_questions_setting``).

    Returns:
        The kept entries, their chunks and the report.

    Raises:
        BadInputError: When a path does not exist; when a file of FAQs has no answer column (unless
            ``answers_from_questions``); or in strict mode when any row or file is bad (the message lists
            them as ``file:line: reason``).
    """
    today = today or dt.date.today()
    if answers_from_questions is None:
        answers_from_questions = answers_from_questions_setting(settings)
    report = IngestReport()

    with _timed(report, "parse"):
        files, report.skipped_files = discover([Path(p) for p in paths])
        records = []
        answerless: list[ParsedFile] = []
        for path in files:
            parsed = parse_file(path)
            if parsed.error is not None:
                report.file_errors.append(parsed.error)
                continue
            if parsed.records and "answer" not in parsed.fields:
                answerless.append(parsed)
            report.files.append(parsed.path)
            report.notes.extend(parsed.notes)
            report.rejected.extend(parsed.rejected)
            records.extend(parsed.records)
        report.rows_read = len(records) + len(report.rejected)
    if answerless and not answers_from_questions:
        raise _answer_column_error(answerless)

    with _timed(report, "validate"), _progress(progress, len(records), "validate") as tick:
        checked = validate(records, answers_from_questions=answers_from_questions, tick=tick)
        report.rejected.extend(checked.rejected)
        report.identical_repeats = checked.identical_repeats
        report.answers_from_question = checked.answers_from_question
        report.loaded = len(checked.entries)
    if strict and (report.rejected or report.file_errors):
        problems = [*report.file_errors, *report.rejected]
        listed = "\n".join(f"  {p}" for p in problems[:STRICT_MESSAGE_LIMIT])
        hidden = len(problems) - STRICT_MESSAGE_LIMIT
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        raise BadInputError(f"ingest found {len(problems)} bad rows/files (strict mode):\n{listed}{more}")

    with _timed(report, "expiry"):
        current, report.expired = filter_valid(checked.entries, today)

    with _timed(report, "dedupe"), _progress(progress, len(current), "dedupe") as tick:
        deduped = Deduper(settings).dedupe(current, tick=tick)
        report.merged = deduped.merged
        report.conflicts = deduped.conflicts
        report.possible_duplicates = deduped.possible_duplicates

    with _timed(report, "expiry"):
        entries, report.flagged = flag_dated(deduped.entries, today, settings.policy_max_age_days)

    with _timed(report, "chunk"):
        chunks = chunk_entries(entries, settings.chunk_max_chars)
    report.kept = len(entries)
    report.chunks = len(chunks)
    report.check()
    return IngestResult(entries=entries, chunks=chunks, report=report)
