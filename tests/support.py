"""Plain helpers shared by the tests (fixtures live in the test modules that use them)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from kbsearch.types import Chunk, FaqEntry

REPO = Path(__file__).resolve().parents[1]


def benchmarks_dir() -> Path | None:
    """``../shared/benchmarks`` beside the checkout (or $KBSEARCH_BENCHMARKS), when present."""
    env = os.environ.get("KBSEARCH_BENCHMARKS")
    for p in ([Path(env)] if env else []) + [REPO.parent / "shared" / "benchmarks"]:
        if p.is_dir():
            return p
    return None


def record_fsyncs(monkeypatch) -> list[str]:
    """Make ``os.fsync`` record the path of each descriptor it flushes (and still flush it); the list fills as it runs."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def entry(id: str, question: str, answer: str, **kw) -> FaqEntry:
    """A FaqEntry with defaults for the fields a test does not care about."""
    return FaqEntry(id=id, question=question, answer=answer, **kw)


def one_chunk(e: FaqEntry) -> Chunk:
    """The single chunk of a short entry, prefixed as ingest would."""
    prefix = f"【{e.section}】" if e.section else ""
    return Chunk(faq_id=e.id, ordinal=0, heading="", text=f"{prefix}{e.question}\n{e.answer}", body=e.answer)


SMALL_KB = [
    entry("ret-1", "如何申请退货？", "在订单详情页点击申请退货，7天内无理由退货。", section="退货", variants=("怎么退货",)),
    entry("pay-1", "支持哪些付款方式？", "支持银行卡、云杉钱包和信用卡分期。", section="支付"),
    entry("en-ship", "How long does shipping take?", "Standard shipping takes 3-5 working days.",
          section="Shipping", variants=("When will my parcel arrive?",)),
    entry("en-pw", "How do I reset my password?", "Use 'Forgot password' on the sign-in page.", section="Account"),
    entry("old-1", "双十一活动规则", "2023年双十一满300减50。", valid_until=dt.date(2023, 11, 30)),
]


def sample_questions() -> list[tuple[str, str]]:
    """(question, expected id or 'handoff') rows of docs/sample_questions.md's table."""
    rows = []
    for line in (REPO / "docs" / "sample_questions.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] and not set(cells[0]) <= set("-: ") and cells[0].lower() != "question":
            rows.append((cells[0], cells[1].strip("`")))
    return rows
