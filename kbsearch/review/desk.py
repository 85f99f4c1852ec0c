"""Operator decisions on logged questions, and publishing them as a new build.

A decision is one row of the ``decisions`` table: ``attach`` (the question becomes a variant of an FAQ),
``draft`` (a new FAQ; questions attached to it are ``attach`` rows naming its id) or ``out_of_scope``
(the question is not for the KB; it leaves the knowledge gaps). Each keeps who and when, and can be
undone. Its state follows from two columns: ``build_id`` (set when a build first includes it) and
``undone_at``:

- pending: not undone, not in a build yet (``publish`` adds it);
- published: not undone, in a build;
- undoing: undone after it was published (``publish`` removes it; then ``build_id`` is cleared);
- undone: undone and not in any build.

``publish`` turns the pending changes into ``BuildChanges`` and calls ``publish_changes``: only the new
rows are embedded, and the build is swapped in atomically. ``overlay`` applies every live decision to
freshly ingested entries, so the next ``kbsearch ingest``/``rebuild-index`` keeps them. A rollback can serve
a build without a published decision's change (made before it was published) or with an undone one's (made
before its removal): ``after_rollback`` sets each decision's state from the build now served, so the next
publish re-applies or removes what it lacks or still has.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from kbsearch.config import Settings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BadInputError, NotFoundError
from kbsearch.index.builder import BuildResult
from kbsearch.index.incremental import BuildChanges, apply_changes, publish_changes
from kbsearch.index.lock import kb_writer
from kbsearch.index.store import active_build_id, build_time, load_entries
from kbsearch.ingest.chunk import chunk_entries
from kbsearch.questionlog.db import DecisionRecord, utcnow
from kbsearch.types import Chunk, FaqEntry

Action = Literal["attach", "draft", "out_of_scope"]
ACTIONS: tuple[str, ...] = ("attach", "draft", "out_of_scope")
#: Limits on what one call may carry.
MAX_QUESTIONS = 1000
MAX_TEXT = 2000
MAX_ANSWER = 20_000

D = DecisionRecord


@dataclass(frozen=True)
class Decision:
    """One decision as operators see it."""

    id: int
    kb: str
    action: str
    question: str
    faq_id: str | None
    answer: str | None
    section: str | None
    request_id: str | None
    actor: str
    created_at: str
    state: Literal["pending", "published", "undoing", "undone"]
    build_id: str | None
    undone_at: str | None
    undone_by: str | None

    @classmethod
    def of(cls, r: DecisionRecord) -> Decision:
        """The view of a table row."""
        if r.undone_at is None:
            state = "published" if r.build_id else "pending"
        else:
            state = "undoing" if r.build_id else "undone"
        return cls(id=r.id, kb=r.kb, action=r.action, question=r.question, faq_id=r.faq_id, answer=r.answer,
                   section=r.section, request_id=r.request_id, actor=r.actor, created_at=r.created_at.isoformat(),
                   state=state, build_id=r.build_id, undone_at=r.undone_at.isoformat() if r.undone_at else None,
                   undone_by=r.undone_by)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Draft:
    """A new FAQ an operator writes from logged questions."""

    question: str
    answer: str
    section: str = ""
    id: str | None = None


@dataclass(frozen=True)
class PublishResult:
    """What ``publish`` did: the new build (None when nothing was pending) and the decisions it applied."""

    build_id: str | None
    applied: int
    removed: int
    build: BuildResult | None


@dataclass(frozen=True)
class RollbackReview:
    """What ``after_rollback`` changed: the decisions (ids) whose state it set from build ``build_id``.

    Attributes:
        pending: Published, but the build lacks their change: the next publish re-applies them.
        published: Pending, but the build has their change already.
        undoing: Undone and taken out, but the build still has their change: the next publish removes it.
        undone: Undone and waiting to be taken out, but the build never had their change.
    """

    build_id: str
    pending: list[int]
    published: list[int]
    undoing: list[int]
    undone: list[int]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    def notes(self) -> list[str]:
        """One line per kind of change, for the CLI."""
        lines = [(self.pending, "published decision(s) are not in this build and are pending again"),
                 (self.published, "pending decision(s) are in this build already: published"),
                 (self.undoing, "undone decision(s) are still in this build: undoing again"),
                 (self.undone, "undone decision(s) are not in this build: nothing left to take out")]
        notes = [f"review: {len(ids)} {what} ({', '.join(map(str, ids))})" for ids, what in lines if ids]
        if self.pending or self.undoing:
            notes.append("run `kbsearch review publish` to serve the decisions as they stand")
        return notes


@dataclass(frozen=True)
class ImportResult:
    """A bulk import of ``{question, faq_id}`` rows: the decisions stored and the rows rejected (with why)."""

    decisions: list[Decision]
    rejected: list[str]


def _clean(text: Any, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadInputError(f"{what} must be a non-empty text")
    text = text.strip()
    if len(text) > limit:
        raise BadInputError(f"{what} is longer than {limit} characters")
    return text


class ReviewDesk:
    """Stores, lists, undoes, exports and publishes operator decisions for every KB.

    Args:
        settings: ``home`` (the KBs) and the ``ingest`` group (how drafted answers are chunked).
        engine: The operations database (``kbsearch.questionlog.db.open_database``).
        entries_of: The active build's entries of a KB (a service passes its loaded builds'); default:
            read from the active build's files.
    """

    def __init__(self, settings: Settings, engine: Engine,
                 entries_of: Callable[[str], dict[str, FaqEntry]] | None = None) -> None:
        self.settings, self.engine = settings, engine
        self._entries_of = entries_of or (lambda kb: active_entries(settings.kb_dir(kb)))
        self._publish_lock = threading.Lock()

    def _entries(self, kb: str) -> dict[str, FaqEntry]:
        return self._entries_of(kb)

    # -- deciding ---------------------------------------------------------------------------------
    def decide(self, kb: str, action: str, questions: Sequence[str], *, actor: str,
               request_ids: Sequence[str | None] = (), faq_id: str | None = None,
               draft: Draft | None = None) -> list[Decision]:
        """Record one decision per question.

        ``attach`` needs ``faq_id`` (an FAQ of the active build or of a live draft); ``draft`` needs
        ``draft`` (its question becomes the new FAQ's question, the given questions its variants);
        ``out_of_scope`` needs neither. ``request_ids[i]``, when given, is the logged question ``questions[i]``.

        Raises:
            BadInputError: an unknown action, an empty or too long text, an unknown FAQ id (named).
            NotFoundError: the KB does not exist.
        """
        if action not in ACTIONS:
            raise BadInputError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        least = 0 if action == "draft" else 1  # a draft's own question is enough
        if not least <= len(questions) <= MAX_QUESTIONS:
            raise BadInputError(f"give {least} to {MAX_QUESTIONS} questions")
        texts = [_clean(q, f"questions[{i}]") for i, q in enumerate(questions)]
        ids = list(request_ids) + [None] * (len(texts) - len(request_ids))
        actor = _clean(actor, "actor", 128)
        entries = self._entries(kb)
        now = utcnow()
        rows: list[dict[str, Any]] = []
        if action == "draft":
            if draft is None:
                raise BadInputError("a draft needs its question, answer and section")
            faq_id = draft.id.strip() if draft.id and draft.id.strip() else f"op-{uuid.uuid4().hex[:10]}"
            if faq_id in entries or faq_id in self._draft_ids(kb):
                raise BadInputError(f"FAQ id {faq_id!r} already exists")
            rows.append({"action": "draft", "question": _clean(draft.question, "draft.question"), "faq_id": faq_id,
                         "answer": _clean(draft.answer, "draft.answer", MAX_ANSWER),
                         "section": (draft.section or "").strip()[:256], "request_id": None})
            action = "attach"
        elif action == "attach":
            faq_id = _clean(faq_id, "faq_id", 256)
            if faq_id not in entries and faq_id not in self._draft_ids(kb):
                raise BadInputError(f"unknown FAQ id {faq_id!r} in knowledge base {kb!r}")
        else:
            faq_id = None
        rows += [{"action": action, "question": t, "faq_id": faq_id, "answer": None, "section": None, "request_id": r}
                 for t, r in zip(texts, ids)]
        with Session(self.engine) as conn, conn.begin():
            new_ids = [conn.execute(insert(D).values(kb=kb, actor=actor, created_at=now, **row)).inserted_primary_key[0]
                       for row in rows]
            records = conn.execute(select(D).where(D.id.in_(new_ids)).order_by(D.id)).scalars().all()
            return [Decision.of(r) for r in records]

    def _draft_ids(self, kb: str) -> set[str]:
        with Session(self.engine) as conn:
            return set(conn.execute(select(D.faq_id).where(D.kb == kb, D.action == "draft", D.undone_at.is_(None))).scalars())

    def undo(self, decision_id: int, *, actor: str) -> Decision:
        """Undo a decision (a draft takes the questions attached to it along); the next publish removes it.

        Raises:
            NotFoundError: no such decision. BadInputError: it is already undone.
        """
        actor = _clean(actor, "actor", 128)
        with Session(self.engine) as conn, conn.begin():
            rec = conn.execute(select(D).where(D.id == decision_id)).scalar_one_or_none()
            if rec is None:
                raise NotFoundError(f"no decision {decision_id}")
            if rec.undone_at is not None:
                raise BadInputError(f"decision {decision_id} is already undone")
            now = utcnow()
            targets = [D.id == decision_id]
            if rec.action == "draft":
                targets.append((D.kb == rec.kb) & (D.faq_id == rec.faq_id) & (D.action == "attach"))
            for t in targets:
                conn.execute(update(D).where(t, D.undone_at.is_(None)).values(undone_at=now, undone_by=actor))
            return Decision.of(conn.execute(select(D).where(D.id == decision_id)).scalar_one())

    def list(self, kb: str, *, include_undone: bool = True, limit: int = 1000) -> list[Decision]:
        """The KB's decisions, newest first."""
        stmt = select(D).where(D.kb == kb)
        if not include_undone:
            stmt = stmt.where(D.undone_at.is_(None))
        with Session(self.engine) as conn:
            return [Decision.of(r) for r in conn.execute(stmt.order_by(D.id.desc()).limit(limit)).scalars()]

    def pending(self, kb: str) -> int:
        """How many decisions the next publish would apply or remove."""
        with Session(self.engine) as conn:
            return conn.execute(select(func.count()).select_from(D).where(*_to_publish(kb))).scalar_one()

    def decided_request_ids(self, kb: str) -> set[str]:
        """Request ids of logged questions with a live decision (they leave the knowledge gaps)."""
        with Session(self.engine) as conn:
            return set(conn.execute(select(D.request_id).where(D.kb == kb, D.undone_at.is_(None),
                                                               D.request_id.is_not(None))).scalars())

    # -- publishing -------------------------------------------------------------------------------
    def _changes(self, records: Iterable[DecisionRecord], existing: set[str], adding: bool) -> BuildChanges:
        """The build changes of live (``adding``) or withdrawn decisions."""
        variants: dict[str, list[str]] = {}
        drafts: dict[str, FaqEntry] = {}
        records = list(records)
        for r in records:
            if r.action == "draft":
                drafts[r.faq_id] = FaqEntry(id=r.faq_id, question=r.question, answer=r.answer or r.question,
                                            section=r.section or "", source=f"review:decision-{r.id}")
        for r in records:
            if r.action != "attach":
                continue
            if adding and r.faq_id in drafts and r.faq_id not in existing:  # into the new FAQ itself
                e = drafts[r.faq_id]
                if r.question not in e.variants and r.question != e.question:
                    drafts[r.faq_id] = dataclasses.replace(e, variants=(*e.variants, r.question))
            elif r.faq_id in existing:
                variants.setdefault(r.faq_id, []).append(r.question)
        if not adding:
            return BuildChanges(remove_variants={k: v for k, v in variants.items() if k not in drafts},
                                remove_entries=[i for i in drafts if i in existing])
        added = [e for e in drafts.values() if e.id not in existing]
        chunks: list[Chunk] = chunk_entries(added, self.settings.ingest.chunk_max_chars)
        return BuildChanges(add_variants=variants, add_entries=added, add_chunks=chunks)

    def publish(self, kb: str, embedder: Embedder) -> PublishResult:
        """Apply the pending decisions (and remove the undone ones) as a new build of ``kb``, swapped in atomically.

        Only the new rows are embedded. Returns ``build_id=None`` when nothing is pending. Holds the KB's
        writer lock throughout, so an ingest or another publish never interleaves with it.

        Raises:
            KbBusyError: another writer held the KB's lock for the whole wait.
        """
        with self._publish_lock, kb_writer(self.settings, kb, "review publish"):
            entries = self._entries(kb)
            with Session(self.engine) as conn:
                todo = conn.execute(select(D).where(*_to_publish(kb))).scalars().all()
            add = [r for r in todo if r.undone_at is None]
            remove = [r for r in todo if r.undone_at is not None]
            if not todo:
                return PublishResult(build_id=None, applied=0, removed=0, build=None)
            existing = set(entries)
            minus = self._changes(remove, existing, adding=False)
            plus = self._changes(add, existing - set(minus.remove_entries), adding=True)
            changes = BuildChanges(add_variants=plus.add_variants, add_entries=plus.add_entries,
                                   add_chunks=plus.add_chunks, remove_variants=minus.remove_variants,
                                   remove_entries=minus.remove_entries)
            report = {"review": {"applied": [r.id for r in add], "removed": [r.id for r in remove]}}
            built = publish_changes(self.settings, kb, embedder, changes, report=report)
            with Session(self.engine) as conn, conn.begin():
                if add:
                    conn.execute(update(D).where(D.id.in_([r.id for r in add])).values(build_id=built.build_id))
                if remove:
                    conn.execute(update(D).where(D.id.in_([r.id for r in remove])).values(build_id=None))
            return PublishResult(build_id=built.build_id, applied=len(add), removed=len(remove), build=built)

    def overlay(self, kb: str, entries: list[FaqEntry], chunks: list[Chunk]) -> tuple[list[FaqEntry], list[Chunk], list[str]]:
        """Every live decision of ``kb`` applied to freshly ingested entries (``kbsearch ingest``/``rebuild-index``).

        Returns the entries, their chunks and notes (e.g. a decision whose FAQ is no longer in the input).
        """
        with Session(self.engine) as conn:
            live = conn.execute(select(D).where(D.kb == kb, D.action != "out_of_scope", D.undone_at.is_(None))
                                .order_by(D.id)).scalars().all()
        if not live:
            return entries, chunks, []
        existing = {e.id for e in entries}
        drafted = {r.faq_id for r in live if r.action == "draft"}
        notes = [f"decision {r.id}: FAQ {r.faq_id!r} is not in the input; its question {r.question!r} was not attached"
                 for r in live if r.action == "attach" and r.faq_id not in existing and r.faq_id not in drafted]
        notes += [f"decision {r.id}: drafted FAQ {r.faq_id!r} is now in the input; the input's version is kept"
                  for r in live if r.action == "draft" and r.faq_id in existing]
        changes = self._changes([r for r in live if r.faq_id in existing or r.faq_id in drafted], existing, adding=True)
        out_entries, out_chunks, _ = apply_changes(entries, chunks, changes)
        return out_entries, out_chunks, notes

    def after_rollback(self, kb: str) -> RollbackReview:
        """Set each decision's state of ``kb`` from the build now active, after a rollback moved ACTIVE.

        A decision is in the build when it has its change: the attached question among the FAQ's question and
        variants, the drafted FAQ's id among the entries. In it, a decision is published (or undoing when
        undone); not in it, pending (or undone). Reading the build, rather than comparing build ids, also
        covers decisions a later full ingest marked and rolling forward. An undone decision becomes undoing
        only in a build made before it was undone: in a later one (an ingest) the change came from the input
        files, which the next publish must not take out. Holds the KB's writer lock, so the build cannot move
        meanwhile.

        Raises:
            NotFoundError: the KB has no active build. IndexCorruptError: its entries are unreadable.
            KbBusyError: another writer held the KB's lock for the whole wait.
        """
        with self._publish_lock, kb_writer(self.settings, kb, "review after rollback"):
            kb_dir = self.settings.kb_dir(kb)
            build_id = active_build_id(kb_dir)
            if build_id is None:
                raise NotFoundError(f"knowledge base {kb!r} has no active build")
            entries = {e.id: e for e in load_entries(kb_dir, build_id)}
            made = build_time(build_id)
            with Session(self.engine) as conn, conn.begin():
                rows = conn.execute(select(D.id, D.action, D.faq_id, D.question, D.undone_at, D.build_id)
                                    .where(D.kb == kb, D.action != "out_of_scope").order_by(D.id)).all()
                into: list[Any] = []  # in the build but not marked so
                out: list[Any] = []  # marked so but not in the build
                for r in rows:
                    entry = entries.get(r.faq_id)
                    has = entry is not None and (r.action == "draft" or r.question.strip() in
                                                 {entry.question.strip(), *(v.strip() for v in entry.variants)})
                    ours = r.undone_at is None or (made is not None and made < r.undone_at)
                    if has and ours and r.build_id is None:
                        into.append(r)
                    elif not has and r.build_id is not None:
                        out.append(r)
                if into:
                    conn.execute(update(D).where(D.id.in_([r.id for r in into])).values(build_id=build_id))
                if out:
                    conn.execute(update(D).where(D.id.in_([r.id for r in out])).values(build_id=None))
        return RollbackReview(build_id=build_id, pending=[r.id for r in out if r.undone_at is None],
                              published=[r.id for r in into if r.undone_at is None],
                              undoing=[r.id for r in into if r.undone_at is not None],
                              undone=[r.id for r in out if r.undone_at is not None])

    def mark_built(self, kb: str, build_id: str) -> None:
        """Record that ``build_id`` (a full ingest with ``overlay``) holds every live decision of ``kb``."""
        with Session(self.engine) as conn, conn.begin():
            conn.execute(update(D).where(D.kb == kb, D.undone_at.is_(None), D.action != "out_of_scope")
                         .values(build_id=build_id))
            conn.execute(update(D).where(D.kb == kb, D.undone_at.is_not(None)).values(build_id=None))

    # -- files ------------------------------------------------------------------------------------
    def export(self, kb: str, fmt: Literal["jsonl", "csv"]) -> str:
        """The FAQs the live decisions touch, as they are after the decisions, in an ingest format.

        Each line/row is a whole FAQ (``id, question, answer, variants, section``): ingesting the file
        next to the KB's sources, or editing the sources to match, keeps the operators' work.
        """
        entries = self._entries(kb)
        with Session(self.engine) as conn:
            live = conn.execute(select(D).where(D.kb == kb, D.action != "out_of_scope", D.undone_at.is_(None))
                                .order_by(D.id)).scalars().all()
        touched = {r.faq_id for r in live}
        base = [e for e in entries.values() if e.id in touched]
        drafted = {r.faq_id for r in live if r.action == "draft"}
        changes = self._changes([r for r in live if r.faq_id in entries or r.faq_id in drafted], set(entries), adding=True)
        out, _, _ = apply_changes(base, [], BuildChanges(add_variants=changes.add_variants,
                                                         add_entries=changes.add_entries, add_chunks=changes.add_chunks))
        rows = [{"id": e.id, "question": e.question, "answer": e.answer, "variants": list(e.variants),
                 "section": e.section} for e in out]
        if fmt == "jsonl":
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "question", "answer", "variants", "section"])
        for r in rows:
            w.writerow([r["id"], r["question"], r["answer"], "|".join(r["variants"]), r["section"]])
        return buf.getvalue()

    def import_labels(self, kb: str, name: str, data: bytes, *, actor: str) -> ImportResult:
        """Attach labelled questions in bulk: a CSV/TSV, JSONL or XLSX file of ``question, faq_id`` rows.

        Good rows are stored even when others are rejected (each rejection names its row and why).

        Raises:
            BadInputError: the file cannot be read or has no ``question``/``faq_id`` columns.
        """
        rows = read_labels(name, data)
        entries = self._entries(kb)
        known = set(entries) | self._draft_ids(kb)
        by_faq: dict[str, list[str]] = {}
        rejected = []
        for where, question, faq_id in rows:
            if not question:
                rejected.append(f"{name}:{where}: empty question")
            elif len(question) > MAX_TEXT:
                rejected.append(f"{name}:{where}: question longer than {MAX_TEXT} characters")
            elif faq_id not in known:
                rejected.append(f"{name}:{where}: unknown FAQ id {faq_id!r}")
            else:
                by_faq.setdefault(faq_id, []).append(question)
        decisions = []
        for faq_id, questions in by_faq.items():
            for start in range(0, len(questions), MAX_QUESTIONS):
                decisions += self.decide(kb, "attach", questions[start:start + MAX_QUESTIONS], actor=actor, faq_id=faq_id)
        return ImportResult(decisions=decisions, rejected=rejected)


def _to_publish(kb: str) -> tuple[Any, ...]:
    """The decisions of ``kb`` the next publish applies (pending) or takes out (undone after publishing)."""
    return (D.kb == kb, D.action != "out_of_scope",
            (D.undone_at.is_(None) & D.build_id.is_(None)) | (D.undone_at.is_not(None) & D.build_id.is_not(None)))


def active_entries(kb_dir: Path) -> dict[str, FaqEntry]:
    """The active build's entries, read from its checksummed entries file (the indexes are not loaded).

    Raises:
        NotFoundError: the KB has no active build. IndexCorruptError: its entries are unreadable.
    """
    return {e.id: e for e in load_entries(kb_dir)}


QUESTION_KEYS = ("question", "问题", "用户问题", "query", "text")
FAQ_KEYS = ("faq_id", "id", "faq", "标准问题id", "答案id", "label")


def read_labels(name: str, data: bytes) -> list[tuple[str, str, str]]:
    """``(where, question, faq_id)`` of each row of a labels file (CSV/TSV with UTF-8/BOM/GB18030, JSONL, XLSX).

    Raises:
        BadInputError: an unknown format, undecodable text, or no question / faq_id column (named).
    """
    suffix = Path(name).suffix.lower()
    records: list[tuple[str, dict[str, Any]]]
    if suffix == ".xlsx":
        from openpyxl import load_workbook

        try:
            ws = load_workbook(io.BytesIO(data), read_only=True).active
        except Exception as exc:  # openpyxl raises many kinds on a bad file
            raise BadInputError(f"{name}: not a readable XLSX file ({type(exc).__name__})") from exc
        it = ws.iter_rows(values_only=True)
        header = [str(h or "").strip() for h in next(it, [])]
        records = [(f"row {i}", dict(zip(header, row))) for i, row in enumerate(it, start=2)]
    else:
        for enc in ("utf-8-sig", "gb18030"):
            try:
                text = data.decode(enc)
                break
            except UnicodeDecodeError:
                continue
        else:
            raise BadInputError(f"{name}: not UTF-8 or GB18030 text")
        if suffix in (".jsonl", ".json"):
            records = []
            for i, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise BadInputError(f"{name}:{i}: not valid JSON: {exc}") from exc
                if not isinstance(obj, dict):
                    raise BadInputError(f"{name}:{i}: each line must be a JSON object")
                records.append((f"line {i}", obj))
        elif suffix in (".csv", ".tsv", ".txt"):
            reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
            records = [(f"line {i}", row) for i, row in enumerate(reader, start=2)]
        else:
            raise BadInputError(f"{name}: use .csv, .tsv, .jsonl or .xlsx")

    def pick(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
        low = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        for k in keys:
            if k in low:
                return "" if low[k] is None else str(low[k]).strip()
        return None

    out = []
    for where, row in records:
        q, f = pick(row, QUESTION_KEYS), pick(row, FAQ_KEYS)
        if q is None or f is None:
            raise BadInputError(f"{name}:{where}: needs a question column ({', '.join(QUESTION_KEYS)}) and an "
                                f"FAQ id column ({', '.join(FAQ_KEYS)})")
        out.append((where, q, f))
    return out
