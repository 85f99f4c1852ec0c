"""What the operator dashboard reads: volume, rates, latency, scores, FAQs and the log itself.

Every function takes the operations database and a ``Window`` (KB and time range) and returns plain
JSON-ready values. Counts are SQL aggregates (portable between SQLite and PostgreSQL); percentiles and
histograms are computed here from the window's rows, at most ``MAX_ROWS`` of the most recent ones.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from kbsearch.codes import CANNED
from kbsearch.questionlog.db import FeedbackRecord, QuestionRecord

#: Rows read per window for percentiles and histograms (the most recent ones).
MAX_ROWS = 200_000
#: Columns of the question-log export, in order.
EXPORT_COLUMNS = ("ts", "request_id", "kb", "question", "lang", "mode", "answered", "degraded", "reason", "causes",
                  "top_id", "top_score", "score_kind", "threshold", "index_version", "latency_ms", "helpful",
                  "clicked_id", "comment", "context", "results", "stages_ms")

Status = Literal["all", "answered", "handed_off", "unhelpful"]
Q, F = QuestionRecord, FeedbackRecord


@dataclass(frozen=True)
class Window:
    """Which questions a report covers: one KB (None = all) from ``since`` to ``until`` (None = open)."""

    kb: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def where(self, stmt: Select[Any]) -> Select[Any]:
        """``stmt`` restricted to the window."""
        if self.kb is not None:
            stmt = stmt.where(Q.kb == self.kb)
        if self.since is not None:
            stmt = stmt.where(Q.ts >= self.since)
        if self.until is not None:
            stmt = stmt.where(Q.ts < self.until)
        return stmt


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def overview(engine: Engine, window: Window) -> dict[str, Any]:
    """Totals, hand-off / degraded / canned rates, mode and reason mix, feedback counts, P50/P95 latency."""
    with engine.connect() as conn:
        rows = conn.execute(window.where(select(Q.mode, Q.answered, Q.degraded, Q.reason, func.count())
                                         .group_by(Q.mode, Q.answered, Q.degraded, Q.reason))).all()
        lat = [r for (r,) in conn.execute(window.where(select(Q.latency_ms).where(Q.latency_ms.is_not(None))
                                                       .order_by(Q.ts.desc()).limit(MAX_ROWS)))]
        fb = conn.execute(window.where(
            select(func.count(F.request_id), func.sum(case((F.helpful.is_(True), 1), else_=0)),
                   func.sum(case((F.helpful.is_(False), 1), else_=0)),
                   func.sum(case((F.clicked_id.is_not(None), 1), else_=0)))
            .select_from(F).join(Q, Q.request_id == F.request_id))).one()
    total = answered = degraded = canned = 0
    modes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for mode, ans, deg, reason, n in rows:
        total += n
        answered += n if ans else 0
        degraded += n if deg else 0
        canned += n if reason in CANNED else 0
        modes[mode] = modes.get(mode, 0) + n
        if reason:
            reasons[reason] = reasons.get(reason, 0) + n
    handed = total - answered
    return {"total": total, "answered": answered, "handed_off": handed, "handoff_rate": _rate(handed, total),
            "degraded": degraded, "degraded_rate": _rate(degraded, total), "canned": canned,
            "canned_rate": _rate(canned, total), "modes": modes, "reasons": reasons,
            "feedback": {"helpful": int(fb[1] or 0), "unhelpful": int(fb[2] or 0), "clicked": int(fb[3] or 0)},
            "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95)}}


def timeseries(engine: Engine, window: Window, bucket: Literal["hour", "day"] = "hour") -> dict[str, Any]:
    """Per hour or day: questions, hand-off and degraded rates, P50/P95 latency."""
    with engine.connect() as conn:
        rows = conn.execute(window.where(select(Q.ts, Q.answered, Q.degraded, Q.latency_ms))
                            .order_by(Q.ts.desc()).limit(MAX_ROWS)).all()
    groups: dict[dt.datetime, list[Any]] = {}
    for ts, ans, deg, lat in rows:
        key = ts.replace(minute=0, second=0, microsecond=0)
        if bucket == "day":
            key = key.replace(hour=0)
        groups.setdefault(key, []).append((ans, deg, lat))
    points = []
    for key in sorted(groups):
        g = groups[key]
        lats = [lat for _, _, lat in g if lat is not None]
        points.append({"t": key.isoformat(), "total": len(g), "handoff_rate": sum(1 for a, _, _ in g if not a) / len(g),
                       "degraded_rate": sum(1 for _, d, _ in g if d) / len(g), "p50_ms": _pct(lats, 50),
                       "p95_ms": _pct(lats, 95)})
    return {"bucket": bucket, "points": points}


def score_histogram(engine: Engine, window: Window, thresholds: dict[str, float], width: float = 0.02) -> dict[str, Any]:
    """The top-1 deciding score per score kind, in bins of ``width``, answered vs handed off, with the threshold."""
    with engine.connect() as conn:
        rows = conn.execute(window.where(select(Q.score_kind, Q.top_score, Q.answered, Q.threshold)
                                         .where(Q.top_score.is_not(None), Q.score_kind.is_not(None)))
                            .order_by(Q.ts.desc()).limit(MAX_ROWS)).all()
    kinds: dict[str, dict[str, Any]] = {}
    for kind, score, ans, threshold in rows:
        k = kinds.setdefault(kind, {"threshold": threshold if threshold is not None else thresholds.get(kind), "bins": {}})
        lo = round(np.floor(score / width) * width, 4)
        b = k["bins"].setdefault(lo, {"lo": lo, "hi": round(lo + width, 4), "answered": 0, "handed_off": 0})
        b["answered" if ans else "handed_off"] += 1
    return {"kinds": {kind: {"threshold": k["threshold"], "bins": [k["bins"][lo] for lo in sorted(k["bins"])]}
                      for kind, k in kinds.items()}, "width": width}


def faq_stats(engine: Engine, window: Window, *, low_rate: float, min_views: int, limit: int = 20) -> dict[str, Any]:
    """The most asked FAQs (answered questions by top FAQ), and the weak ones: helped or clicked under
    ``low_rate`` with at least ``min_views`` views."""
    stmt = window.where(
        select(Q.top_id, func.max(Q.top_question), func.count(),
               func.sum(case((F.helpful.is_(True), 1), else_=0)), func.sum(case((F.helpful.is_(False), 1), else_=0)),
               func.sum(case((F.clicked_id == Q.top_id, 1), else_=0)), func.count(F.request_id))
        .select_from(Q).outerjoin(F, F.request_id == Q.request_id)
        .where(Q.answered.is_(True), Q.top_id.is_not(None)).group_by(Q.top_id))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    out = []
    for faq_id, question, views, helpful, unhelpful, clicks, rated in rows:
        judged = int(helpful or 0) + int(unhelpful or 0)
        out.append({"faq_id": faq_id, "question": question, "views": int(views), "helpful": int(helpful or 0),
                    "unhelpful": int(unhelpful or 0), "clicks": int(clicks or 0), "feedback": int(rated or 0),
                    "help_rate": _rate(int(helpful or 0), judged), "click_rate": _rate(int(clicks or 0), int(views))})
    out.sort(key=lambda r: (-r["views"], r["faq_id"]))
    weak = [r for r in out if r["views"] >= min_views and (
        (r["help_rate"] is not None and r["help_rate"] < low_rate) or (r["click_rate"] is not None and r["click_rate"] < low_rate))]
    return {"top": out[:limit], "weak": weak[:limit]}


def _status(stmt: Select[Any], status: Status) -> Select[Any]:
    if status == "answered":
        return stmt.where(Q.answered.is_(True))
    if status == "handed_off":
        return stmt.where(Q.answered.is_(False))
    if status == "unhelpful":
        return stmt.where(F.helpful.is_(False))
    return stmt


def _log_select(window: Window, status: Status, text: str | None) -> Select[Any]:
    stmt = window.where(select(Q, F.helpful, F.clicked_id, F.comment).select_from(Q)
                        .outerjoin(F, F.request_id == Q.request_id))
    stmt = _status(stmt, status)
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        like = f"%{escaped}%"
        stmt = stmt.where(or_(Q.question.like(like, escape="\\"), Q.request_id == text, Q.top_id == text))
    return stmt


def _row(q: QuestionRecord, helpful: bool | None, clicked: str | None, comment: str | None) -> dict[str, Any]:
    return {"request_id": q.request_id, "ts": q.ts.isoformat(), "kb": q.kb, "question": q.question, "lang": q.lang,
            "mode": q.mode, "answered": q.answered, "degraded": q.degraded, "reason": q.reason, "causes": q.causes,
            "top_id": q.top_id, "top_question": q.top_question, "top_score": q.top_score,
            "score_kind": q.score_kind, "threshold": q.threshold, "results": q.results,
            "index_version": q.index_version, "latency_ms": q.latency_ms, "stages_ms": q.stages_ms,
            "context": q.context, "helpful": helpful, "clicked_id": clicked, "comment": comment}


def questions(engine: Engine, window: Window, *, status: Status = "all", text: str | None = None, limit: int = 50,
              offset: int = 0) -> dict[str, Any]:
    """One page of the question log, newest first, with its feedback; and how many match in all."""
    stmt = _log_select(window, status, text)
    with Session(engine) as conn:
        total = conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
        page = conn.execute(stmt.order_by(Q.ts.desc(), Q.id.desc()).limit(limit).offset(offset)).all()
    return {"total": total, "rows": [_row(*r) for r in page]}


def gap_questions(engine: Engine, window: Window, limit: int) -> list[dict[str, Any]]:
    """The most recent handed-off or unhelpful questions (not canned: those are outages, not gaps)."""
    stmt = window.where(select(Q, F.helpful, F.clicked_id, F.comment).select_from(Q)
                        .outerjoin(F, F.request_id == Q.request_id)
                        .where(or_(and_(Q.answered.is_(False), Q.reason.not_in([str(r) for r in CANNED])),
                                   F.helpful.is_(False))))
    with Session(engine) as conn:
        return [_row(*r) for r in conn.execute(stmt.order_by(Q.ts.desc()).limit(limit))]


def export(engine: Engine, window: Window, fmt: Literal["csv", "jsonl"], *, status: Status = "all",
           text: str | None = None, chunk: int = 1000) -> Iterator[str]:
    """The matching log rows as CSV (with a header) or JSON lines, streamed in chunks, oldest first."""
    stmt = _log_select(window, status, text).order_by(Q.ts, Q.id)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(EXPORT_COLUMNS)
        yield "\ufeff" + buf.getvalue()  # a BOM, so spreadsheet programs read the Chinese text as UTF-8
    with Session(engine) as conn:
        result = conn.execute(stmt, execution_options={"yield_per": chunk})
        for part in result.partitions(chunk):
            buf = io.StringIO()
            writer = csv.writer(buf) if fmt == "csv" else None
            for r in part:
                row = _row(*r)
                if writer is None:
                    buf.write(json.dumps({k: row.get(k) for k in EXPORT_COLUMNS}, ensure_ascii=False) + "\n")
                else:
                    writer.writerow([json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else
                                     ("" if v is None else v) for v in (row.get(k) for k in EXPORT_COLUMNS)])
            yield buf.getvalue()
