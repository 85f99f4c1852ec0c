"""The operations database: its schema and how to open it.

One SQLAlchemy 2 database holds the question log (``questions``), the chatbot's feedback (``feedback``)
and the operators' review decisions (``decisions``, written by ``kbsearch.review``). By default it is
SQLite in WAL mode under ``home`` (readers never block the writer thread); any SQLAlchemy URL works
unchanged, e.g. PostgreSQL shared by several replicas. Tables are created on first use.

Feedback is keyed by ``request_id`` and not tied to ``questions`` by a foreign key: the question row is
written in the background and may land after the chatbot's thumbs-up.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive values: they are read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    """The declarative base every table of the operations database derives from."""


class QuestionRecord(Base):
    """One question asked through ``/ask`` (its text redacted when ``questionlog.redact`` is on)."""

    __tablename__ = "questions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    kb: Mapped[str] = mapped_column(String(64))
    question: Mapped[str] = mapped_column(Text)
    lang: Mapped[str] = mapped_column(String(8))
    mode: Mapped[str] = mapped_column(String(16))
    answered: Mapped[bool] = mapped_column(Boolean)
    degraded: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    causes: Mapped[list[str]] = mapped_column(JSON)
    top_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    top_question: Mapped[str | None] = mapped_column(Text, nullable=True)
    top_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    index_version: Mapped[str] = mapped_column(String(64))
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    stages_ms: Mapped[dict[str, float]] = mapped_column(JSON)
    unexpected: Mapped[str | None] = mapped_column(Text, nullable=True)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_questions_kb_ts", "kb", "ts"),)


class FeedbackRecord(Base):
    """The chatbot's feedback on one answer: a thumb, a click on a result, a comment (one row per request)."""

    __tablename__ = "feedback"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kb: Mapped[str] = mapped_column(String(64))
    helpful: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    clicked_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class DecisionRecord(Base):
    """An operator's decision on a logged question (``kbsearch.review``)."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kb: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))
    question: Mapped[str] = mapped_column(Text)
    faq_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    section: Mapped[str | None] = mapped_column(String(256), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    build_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    undone_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    undone_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) never block the writer thread
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash loses at most the last batches
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def open_database(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url`` (SQLite gets WAL mode and its folder is created), with the tables created.

    Args:
        url: A SQLAlchemy URL (``sqlite:////abs/path.db``, ``postgresql+psycopg://...``).
        create: Create missing tables.
    """
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        try:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # reported by the first connection, like any other unreachable database
    engine = create_engine(url, pool_pre_ping=True, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        Base.metadata.create_all(engine)
    return engine


def try_create_tables(engine: Engine) -> str | None:
    """Create missing tables; the error (one line) when the database cannot be reached, else None."""
    try:
        Base.metadata.create_all(engine)
        return None
    except (SQLAlchemyError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)
