"""Writing the question log off the request path.

``QuestionLog.observe`` is a ``QueryEngine`` observer: it turns the finished trace into a row (the question
redacted first) and puts it on a bounded queue without waiting. One background thread takes up to
``batch_size`` rows at a time (waiting at most ``flush_interval_s``) and inserts them in one transaction.
A full queue drops the new row; a database error (read-only file, deleted file, server down) drops the
batch and the next batch tries again on a fresh connection; an SQLite file deleted under the service is
re-created (and said so in the log) rather than written into the unlinked file. Either way the question was already
answered, and the drops are counted (``kbsearch_questionlog_dropped_total{reason}``). Old rows are
deleted every hour past ``retention_days``.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import queue
import threading
import time
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kbsearch.config import QuestionLogSettings
from kbsearch.questionlog.db import Base, FeedbackRecord, QuestionRecord, utcnow
from kbsearch.questionlog.redact import redact
from kbsearch.telemetry.trace import Trace

log = logging.getLogger(__name__)

#: How often old rows are purged (seconds).
RETENTION_EVERY_S = 3600.0
#: Request ids remembered in memory, so feedback for a question still in the queue is accepted.
RECENT_IDS = 100_000


def detect_language(text: str) -> str:
    """``zh`` (mostly CJK), ``en`` (mostly Latin letters), ``mixed``, or ``other``."""
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    if not cjk and not latin:
        return "other"
    if cjk and latin and min(cjk, latin / 4) >= 1 and latin >= 8:
        return "mixed"  # a few Latin letters (a product name) in a Chinese question stay zh
    return "zh" if cjk else "en"


def record_of(trace: Trace, settings: QuestionLogSettings) -> dict[str, Any]:
    """The ``questions`` row of one finished trace (the question redacted when ``settings.redact``)."""
    d = trace.decision
    timings = trace.timings_ms()
    total = timings.pop("total", None)
    results = [{"id": h.entry.id, "question": h.entry.question, "score": round(h.score, 6), "ranked_by": h.ranked_by,
                "matched": h.matched.kind} for h in trace.results[: settings.results_kept]]
    question = redact(trace.question) if settings.redact else trace.question
    return {
        "ts": trace.started_at, "request_id": trace.request_id, "kb": trace.kb, "question": question,
        "lang": detect_language(trace.question), "mode": trace.mode or "canned", "answered": trace.answered,
        "degraded": trace.degraded, "reason": str(trace.reason) if trace.reason is not None else None,
        "causes": [str(c) for c, _ in trace.fallbacks],
        "top_id": results[0]["id"] if results else None, "top_question": results[0]["question"] if results else None,
        "top_score": d.score if d is not None else None, "score_kind": d.score_kind if d is not None else None,
        "threshold": d.threshold if d is not None else None, "results": results,
        "index_version": trace.index_version, "latency_ms": total, "stages_ms": timings,
        "unexpected": trace.unexpected, "context": _context(trace.context, settings) or None,
    }


def _context(context: dict[str, Any], settings: QuestionLogSettings) -> dict[str, Any]:
    """The chatbot's context, its free-text metadata values redacted like the question."""
    if not settings.redact or "metadata" not in context:
        return context
    meta = {k: redact(v) if isinstance(v, str) else v for k, v in context["metadata"].items()}
    return {**context, "metadata": meta}


class QuestionLog:
    """The question log of one service: an observer that queues rows, and the thread that writes them.

    Args:
        settings: The ``questionlog`` group.
        engine: The operations database (``open_database``).
    """

    def __init__(self, settings: QuestionLogSettings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=settings.queue_size)
        self.written = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None
        self._recent: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._recent_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_purge = 0.0
        db = engine.url.database if engine.dialect.name == "sqlite" else None
        self._db_path = db if db and db != ":memory:" else None
        self._inode: int | None = None
        self._schema_ok = False

    # -- the request path -------------------------------------------------------------------------
    def observe(self, trace: Trace) -> None:
        """Queue the finished question (never blocks; a full queue drops it and counts the drop)."""
        try:
            row = record_of(trace, self.settings)
        except Exception:  # a record that cannot be built is a bug; the question is already answered
            log.exception("could not build the question-log record of %s", trace.request_id)
            self.dropped["error"] += 1
            return
        with self._recent_lock:
            self._recent[trace.request_id] = trace.kb
            if len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped["queue-full"] += 1

    def kb_of(self, request_id: str) -> str | None:
        """The KB a request id was asked on: from memory (still queued) or the database; None when unknown.

        Raises:
            SQLAlchemyError: the database cannot be read.
        """
        with self._recent_lock:
            kb = self._recent.get(request_id)
        if kb is not None:
            return kb
        with self.engine.connect() as conn:
            return conn.execute(select(QuestionRecord.kb).where(QuestionRecord.request_id == request_id)
                                .order_by(QuestionRecord.id.desc()).limit(1)).scalar()

    def feedback(self, request_id: str, kb: str, *, helpful: bool | None, clicked_id: str | None,
                 comment: str | None) -> bool:
        """Store feedback on one request (a repeat updates the row); return True when it was an update.

        Raises:
            SQLAlchemyError: the database cannot be written.
        """
        now = utcnow()
        values = {"helpful": helpful, "clicked_id": clicked_id, "comment": comment, "updated_at": now}
        try:
            return self._store_feedback(request_id, kb, now, values)
        except IntegrityError:
            # Another replica (or thread) inserted this request's first feedback between our read and our
            # insert (a chatbot retry landing elsewhere): the row exists now, so the second try updates it.
            return self._store_feedback(request_id, kb, now, values)

    def _store_feedback(self, request_id: str, kb: str, now: dt.datetime, values: dict[str, Any]) -> bool:
        with self.engine.begin() as conn:
            existing = conn.execute(select(FeedbackRecord.request_id).where(FeedbackRecord.request_id == request_id)).scalar()
            if existing is None:
                conn.execute(insert(FeedbackRecord).values(request_id=request_id, kb=kb, created_at=now, **values))
                return False
            conn.execute(FeedbackRecord.__table__.update().where(FeedbackRecord.request_id == request_id).values(**values))
            return True

    # -- the writer thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="kbsearch-questionlog", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout`` seconds) and stop the thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout)
            self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is written (tests, exports); False when it did not empty in time."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    @property
    def queued(self) -> int:
        """Rows waiting to be written."""
        return self._queue.qsize()

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take()
            if batch:
                self._write(batch)
            if time.monotonic() - self._last_purge > RETENTION_EVERY_S:
                self._last_purge = time.monotonic()
                self.purge()

    def _take(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.settings.flush_interval_s
        while len(batch) < self.settings.batch_size:
            wait = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=max(wait, 0.0)) if wait > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _reopen_if_replaced(self) -> None:
        """Create the tables if the database was down at startup; an SQLite file deleted or replaced under a
        pooled connection would swallow writes unseen: re-create it."""
        if not self._schema_ok:
            Base.metadata.create_all(self.engine)
            self._schema_ok = True
        if self._db_path is None:
            return
        try:
            inode = os.stat(self._db_path).st_ino
        except FileNotFoundError:
            inode = None
        if self._inode is not None and inode != self._inode:
            log.error("question log: %s was deleted or replaced; re-creating it", self._db_path)
            self.engine.dispose()
            Base.metadata.create_all(self.engine)
            inode = os.stat(self._db_path).st_ino
        self._inode = inode

    def _write(self, batch: list[dict[str, Any]]) -> None:
        try:
            self._reopen_if_replaced()
            with self.engine.begin() as conn:
                conn.execute(insert(QuestionRecord), batch)
            self.written += len(batch)
            self.last_error = None
        except (SQLAlchemyError, OSError) as exc:  # read-only, unwritable or unreachable database: drop, count, go on
            self.dropped["db-error"] += len(batch)
            if self.last_error is None:
                log.error("question log: dropped %d records: %s", len(batch), exc)
            self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            self.engine.dispose()  # the next batch opens a fresh connection (a re-created file, a restarted server)
        finally:
            for _ in batch:
                self._queue.task_done()

    def purge(self, now: dt.datetime | None = None) -> int:
        """Delete questions and feedback older than ``retention_days`` (0 keeps everything); return how many."""
        days = self.settings.retention_days
        if days <= 0:
            return 0
        cutoff = (now or utcnow()) - dt.timedelta(days=days)
        try:
            with self.engine.begin() as conn:
                n = conn.execute(delete(QuestionRecord).where(QuestionRecord.ts < cutoff)).rowcount
                n += conn.execute(delete(FeedbackRecord).where(FeedbackRecord.updated_at < cutoff)).rowcount
            return n
        except SQLAlchemyError as exc:
            log.error("question log: retention purge failed: %s", exc)
            return 0

    def stats(self) -> dict[str, Any]:
        """Counters for ``/metrics`` and ``/readyz``: written, dropped by reason, queued, the last error."""
        return {"written": self.written, "dropped": dict(self.dropped), "queued": self.queued,
                "last_error": self.last_error}
