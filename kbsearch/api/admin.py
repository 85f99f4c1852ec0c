"""The operator side of the API: ``/dashboard`` (static page and assets shipped in the package) and the
``/admin`` routes it reads and acts through.

Every ``/admin/api`` route depends on ``Guard.admin_actor`` (an operator key or session): there is no
unguarded admin route. The dashboard reads the question log (not Prometheus), so it works on a fresh
machine with nothing else running. Routes parse, call one library function and render.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, Response, UploadFile
from fastapi import Body
from fastapi import Path as FastApiPath
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from sqlalchemy.engine import Engine

from kbsearch.api.auth import SESSION_COOKIE, Guard
from kbsearch.api.models import AskResponse, DecisionRequest, HitTestRequest, KbRequest, LoginRequest, RulesRequest
from kbsearch.config import KB_NAME_PATTERN, Settings
from kbsearch.decide.human import load_rules, save_rules
from kbsearch.errors import BadInputError
from kbsearch.index import history
from kbsearch.index.store import BUILD_ID_PATTERN, knowledge_bases
from kbsearch.questionlog import report
from kbsearch.questionlog.report import Window
from kbsearch.questionlog.writer import QuestionLog
from kbsearch.rerank.kb import request_training
from kbsearch.review.desk import Draft, ReviewDesk
from kbsearch.review.gaps import find_gaps
from kbsearch.service.query import QueryEngine

STATIC = resources.files("kbsearch.api") / "static"
#: Headers of the dashboard page and its assets: nothing but our own files runs, nothing frames it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: Most bytes a bulk-label upload may have.
MAX_UPLOAD = 20 * 1024 * 1024


@dataclass
class Operations:
    """What the operator routes work on: the database, the question log and the review desk."""

    db: Engine
    log: QuestionLog
    desk: ReviewDesk


def _when(value: str | None, name: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadInputError(f"{name} must be an ISO-8601 date or datetime, not {value[:40]!r}") from exc
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t


KbParam = Annotated[str | None, Query(pattern=KB_NAME_PATTERN)]


def admin_actor(request: Request) -> str:
    """The operator making the request (the app's ``Guard``); 401 without an operator key or session."""
    return request.app.state.guard.admin_actor(request)


def window(kb: KbParam = None, since: str | None = None, until: str | None = None) -> Window:
    """The KB and time range of a dashboard request (``since``/``until``: ISO-8601, UTC when no zone)."""
    return Window(kb=kb, since=_when(since, "since"), until=_when(until, "until"))


Actor = Annotated[str, Depends(admin_actor)]
Win = Annotated[Window, Depends(window)]


def admin_router(settings: Settings, engine: QueryEngine, ops: Operations, guard: Guard) -> APIRouter:
    """The ``/dashboard`` page and every ``/admin`` route."""
    router = APIRouter()
    api = APIRouter(prefix="/admin/api", dependencies=[Depends(admin_actor)])

    @router.get("/dashboard", include_in_schema=False)
    def dashboard() -> FileResponse:
        """The operator dashboard (its data comes from /admin/api, which needs an operator key)."""
        return FileResponse(str(STATIC / "dashboard.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @router.post("/admin/login")
    def login(body: LoginRequest, response: Response) -> dict[str, Any]:
        """Exchange an operator key for a session cookie (HttpOnly, SameSite=Strict)."""
        session = guard.login(body.key)
        if session is None:
            raise HTTPException(401, "not an operator key")
        token, owner = session
        response.set_cookie(SESSION_COOKIE, token, max_age=int(guard.session_seconds), httponly=True, samesite="strict",
                            path="/")
        return {"ok": True, "actor": owner}

    @router.post("/admin/logout")
    def logout(response: Response) -> dict[str, bool]:
        """End the session."""
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return {"ok": True}

    @api.get("/me")
    def me(actor: Actor) -> dict[str, Any]:
        """Who is logged in, the KBs, and the lines the charts draw."""
        d, t = settings.dashboard, settings.decide
        return {"actor": actor, "kbs": knowledge_bases(settings.home), "default_kb": settings.default_kb,
                "lines": {"handoff": d.handoff_line, "latency_ms": d.latency_line_ms, "low_rate": d.low_rate,
                          "min_views": d.min_views},
                "thresholds": {"vector": t.threshold_vector, "rerank": t.threshold_rerank, "bm25": t.threshold_bm25},
                "questionlog": ops.log.stats()}

    @api.get("/overview")
    def overview(w: Win) -> dict[str, Any]:
        """Volume, rates, mode and reason mix, feedback and latency."""
        return report.overview(ops.db, w)

    @api.get("/timeseries")
    def timeseries(w: Win, bucket: Literal["hour", "day"] = "hour") -> dict[str, Any]:
        """Rates and latency per hour or day."""
        return report.timeseries(ops.db, w, bucket)

    @api.get("/scores")
    def scores(w: Win) -> dict[str, Any]:
        """The top-1 score distribution per score kind, with the thresholds."""
        t = settings.decide
        return report.score_histogram(ops.db, w, {"vector": t.threshold_vector, "rerank": t.threshold_rerank,
                                                  "bm25": t.threshold_bm25})

    @api.get("/faqs")
    def faqs(w: Win) -> dict[str, Any]:
        """The most asked FAQs and the weak ones (low helpfulness or clicks)."""
        d = settings.dashboard
        return report.faq_stats(ops.db, w, low_rate=d.low_rate, min_views=d.min_views)

    @api.get("/gaps")
    def gaps(w: Win) -> dict[str, Any]:
        """Handed-off and unhelpful questions without a decision, clustered by meaning."""
        kb = w.kb or settings.default_kb
        w = Window(kb=kb, since=w.since, until=w.until)
        decided = ops.desk.decided_request_ids(kb)
        rows = [r for r in report.gap_questions(ops.db, w, settings.dashboard.gap_max_questions)
                if r["request_id"] not in decided]
        clusters = find_gaps(rows, engine.embedder, engine.builds.get(kb), settings.dashboard.gap_distance)
        return {"clusters": [c.to_json() for c in clusters], "clustered": len(rows),
                "algorithm": f"agglomerative clustering (scikit-learn), average linkage, cosine distance < "
                             f"{settings.dashboard.gap_distance}, {engine.embedder.model_id} embeddings"}

    @api.get("/questions")
    def questions(w: Win, status: report.Status = "all", q: Annotated[str | None, Query(max_length=200)] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        """One page of the question log, filtered."""
        result = report.questions(ops.db, w, status=status, text=q, limit=limit, offset=offset)
        states = {d.request_id: f"{d.action}{':' + d.faq_id if d.faq_id else ''}"
                  for d in ops.desk.list(w.kb or settings.default_kb, include_undone=False) if d.request_id}
        for row in result["rows"]:
            row["review"] = states.get(row["request_id"])
        return result

    @api.get("/export")
    def export(w: Win, format: Literal["csv", "jsonl"] = "csv", status: report.Status = "all",
               q: Annotated[str | None, Query(max_length=200)] = None) -> StreamingResponse:
        """The filtered question log as a CSV or JSONL download."""
        ops.log.flush(2.0)
        media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson; charset=utf-8"
        name = f"questions-{w.kb or 'all'}.{format}"
        return StreamingResponse(report.export(ops.db, w, format, status=status, text=q), media_type=media,
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @api.get("/entries")
    def entries(kb: KbParam = None, q: Annotated[str, Query(max_length=200)] = "",
                limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
        """FAQs of the active build whose id, question or section contains ``q`` (the FAQ picker)."""
        build = engine.builds.get(kb or settings.default_kb)
        needle = q.strip().casefold()
        found = [e for e in build.entries.values()
                 if not needle or needle in e.id.casefold() or needle in e.question.casefold() or needle in e.section.casefold()]
        return {"entries": [{"faq_id": e.id, "question": e.question, "section": e.section} for e in found[:limit]]}

    @api.post("/hit-test", response_model=AskResponse)
    def hit_test(body: HitTestRequest) -> AskResponse:
        """Ask with explain, as /ask would answer, without counting it as traffic."""
        return AskResponse.from_answer(engine.ask(body.question, kb=body.kb, explain=True, observe=False))

    @api.post("/decisions")
    def decide(body: DecisionRequest, actor: Actor) -> dict[str, Any]:
        """Attach questions to an FAQ, mark them out of scope, or draft a new FAQ from them."""
        draft = Draft(**body.draft.model_dump()) if body.draft is not None else None
        made = ops.desk.decide(body.kb, body.action, body.questions, actor=actor, request_ids=body.request_ids,
                               faq_id=body.faq_id, draft=draft)
        return {"decisions": [d.to_json() for d in made], "pending": ops.desk.pending(body.kb)}

    @api.get("/decisions")
    def decisions(kb: KbParam = None, include_undone: bool = True) -> dict[str, Any]:
        """The KB's decisions, newest first, and how many the next publish applies."""
        kb = kb or settings.default_kb
        return {"decisions": [d.to_json() for d in ops.desk.list(kb, include_undone=include_undone)],
                "pending": ops.desk.pending(kb)}

    @api.post("/decisions/{decision_id}/undo")
    def undo(decision_id: Annotated[int, FastApiPath(ge=1, le=2**63 - 1)], actor: Actor) -> dict[str, Any]:
        """Undo a decision (the next publish takes it out of the served build)."""
        return {"decision": ops.desk.undo(decision_id, actor=actor).to_json()}

    @api.get("/decisions/export")
    def export_decisions(kb: KbParam = None, format: Literal["csv", "jsonl"] = "jsonl") -> Response:
        """The FAQs the decisions touch, as they are after them, in an ingest format."""
        kb = kb or settings.default_kb
        media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson; charset=utf-8"
        return Response(ops.desk.export(kb, format), media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="review-{kb}.{format}"'})

    @api.post("/decisions/import")
    async def import_labels(actor: Actor, file: Annotated[UploadFile, File()], kb: KbParam = None) -> dict[str, Any]:
        """Attach labelled questions in bulk (CSV/TSV, JSONL or XLSX with question and faq_id columns)."""
        data = await file.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise HTTPException(413, f"the file is larger than {MAX_UPLOAD // (1024 * 1024)} MB")
        name = re.sub(r"[^\w.\-]", "_", file.filename or "labels.csv")[:100]
        done = ops.desk.import_labels(kb or settings.default_kb, name, data, actor=actor)
        return {"imported": len(done.decisions), "rejected": done.rejected, "pending": ops.desk.pending(kb or settings.default_kb)}

    @api.post("/publish")
    def publish(body: KbRequest) -> dict[str, Any]:
        """Publish the pending decisions as a new build (only new rows embedded; atomic swap)."""
        done = ops.desk.publish(body.kb, engine.embedder)
        b = done.build
        return {"build_id": done.build_id, "applied": done.applied, "removed": done.removed,
                "embedded_rows": b.embedded if b else 0, "reused_rows": b.reused if b else 0,
                "seconds": round(sum(b.seconds.values()), 3) if b else 0.0,
                "kb_reranker": request_training(settings, body.kb) if b else None}

    @api.get("/builds")
    def builds(kb: KbParam = None) -> dict[str, Any]:
        """The KB's builds on disk, newest first, the active one marked."""
        kb = kb or settings.default_kb
        return {"kb": kb, "builds": [b.to_json() for b in history.list_builds(settings, kb)]}

    @api.get("/builds/{build_id}")
    def build(build_id: Annotated[str, FastApiPath(pattern=BUILD_ID_PATTERN)], kb: KbParam = None) -> dict[str, Any]:
        """One build's manifest and report summary."""
        return history.show_build(settings, kb or settings.default_kb, build_id)

    @api.post("/builds/rollback")
    def rollback(kb: Annotated[str, Body(pattern=KB_NAME_PATTERN)],
                 build_id: Annotated[str, Body(pattern=BUILD_ID_PATTERN)]) -> dict[str, Any]:
        """Make another build on disk active again, once it loads in full (429 while another writer holds the KB);
        the review decisions' states then follow it (``review``: what changed)."""
        done = history.rollback(settings, kb, build_id)
        engine.builds.get(kb)  # serve it now: /readyz shows it before the next question
        return {**done.to_json(), "review": ops.desk.after_rollback(kb).to_json(),
                "kb_reranker": request_training(settings, kb)}

    @api.get("/rules")
    def rules(kb: KbParam = None) -> dict[str, Any]:
        """The KB's hand-off phrases (asking for a person)."""
        r = load_rules(engine.builds.kb_dir(kb or settings.default_kb))
        return {"phrases": list(r.phrases), "default": r.is_default}

    @api.put("/rules")
    def put_rules(body: RulesRequest) -> dict[str, Any]:
        """Replace the KB's hand-off phrases."""
        kb_dir = engine.builds.kb_dir(body.kb)
        engine.builds.get(body.kb)  # 404 for a KB that does not exist
        save_rules(kb_dir, body.phrases)
        r = load_rules(kb_dir)
        return {"phrases": list(r.phrases), "default": r.is_default}

    router.include_router(api)
    return router


def unavailable_router(guard: Guard) -> APIRouter:
    """``/admin/api`` when the question log is off: 503 for operators, 401 for everyone else."""
    router = APIRouter()

    @router.api_route("/admin/api/{path:path}", methods=["GET", "POST", "PUT"], include_in_schema=False,
                      dependencies=[Depends(admin_actor)])
    def off(path: str) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": "the question log is off (KBSEARCH_QUESTIONLOG__ENABLED)"})

    return router
