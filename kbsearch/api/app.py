"""The HTTP API: a thin FastAPI layer over ``QueryEngine``.

Routes parse, call one library function and render. Errors map through one table
(``KbsearchError.http_status``): unknown KB 404, bad input 422, not ready / backend down 503. Backend
failures inside a question never reach here: the query path degrades instead. Every question is counted
in ``GET /metrics`` (Prometheus) and logged as one JSON line, both read from its trace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from sqlalchemy.exc import SQLAlchemyError

from kbsearch import __version__
from kbsearch.api.admin import MAX_UPLOAD, PAGE_HEADERS, STATIC, Operations, admin_router, unavailable_router
from kbsearch.api.auth import Guard
from kbsearch.api.guards import Admission, BodyLimit, PathHeaders, on_http_error, on_unexpected_error, on_validation_error
from kbsearch.api.models import (
    REQUEST_ID_PATTERN,
    AskRequest,
    AskResponse,
    FeedbackRequest,
    FeedbackResponse,
    SimilarityRequest,
    SimilarityResponse,
)
from kbsearch.config import Settings
from kbsearch.errors import BusyError, KbsearchError
from kbsearch.questionlog.db import open_database, try_create_tables
from kbsearch.questionlog.writer import QuestionLog
from kbsearch.rerank.kb import request_training
from kbsearch.review.desk import ReviewDesk
from kbsearch.service.query import QueryEngine
from kbsearch.service.similarity import PairJudge
from kbsearch.telemetry.logs import question_logger
from kbsearch.telemetry.metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger(__name__)

#: Swagger UI 5 (``swagger-ui-bundle.js``, ``swagger-ui.css``), ReDoc 2 (``redoc.standalone.js``) and a favicon, as
#: the PyPI package ``fastapi-offline`` ships them: ``/docs`` and ``/redoc`` load nothing from a CDN.
DOCS_ASSETS = resources.files("fastapi_offline") / "static"
DOCS_ASSETS_PATH = "/docs/static"
#: The docs pages load nothing from another origin: ReDoc 2 always shows Redocly's logo from its CDN, which would
#: otherwise leave the intranet (the pages need inline script and styles, blob: workers and data: images).
DOCS_CSP = "default-src 'self' 'unsafe-inline' blob: data:; frame-ancestors 'none'; base-uri 'none'"


def get_engine(request: Request) -> QueryEngine:
    """The app's QueryEngine (a dependency, so tests and routes share one way to reach it)."""
    return request.app.state.engine


EngineDep = Annotated[QueryEngine, Depends(get_engine)]
RequestId = Annotated[str | None, Header(alias="X-Request-ID", pattern=REQUEST_ID_PATTERN,
                                         description="The chatbot's id for this question; echoed back (default: a new one).")]


def make_operations(settings: Settings, engine: QueryEngine) -> Operations | None:
    """The question log, its database and the review desk (None when ``questionlog.enabled`` is off)."""
    if not settings.questionlog.enabled:
        return None
    db = open_database(settings.database_url, create=False)
    error = try_create_tables(db)
    if error is not None:  # the service still answers; records are dropped (and counted) until the database is back
        log.error("question log database unavailable: %s", error)
    return Operations(db=db, log=QuestionLog(settings.questionlog, db),
                      desk=ReviewDesk(settings, db, entries_of=lambda kb: engine.builds.get(kb).entries))


def _train_what_is_not_covered(settings: Settings, engine: QueryEngine) -> None:
    """At start: a KB whose reranker does not cover its build (a training killed, or never run) gets one
    trained in the background (``kb_reranker.auto_train``); the service starts either way."""
    for kb, build in engine.builds.loaded().items():
        try:
            request_training(settings, kb, build.entries.values())
        except (OSError, KbsearchError) as exc:
            log.warning("could not start the KB reranker training for %r: %s", kb, exc)


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` and ReDoc at ``/redoc`` from the package, as FastAPI's "Custom Docs UI Static
    Assets (Self-Hosting)" shows: the pages FastAPI renders, pointed at ``DOCS_ASSETS`` mounted on
    ``DOCS_ASSETS_PATH`` instead of a CDN, so they work on an intranet. The app must be made with
    ``docs_url=None, redoc_url=None``."""
    openapi_url, redirect_url = app.openapi_url, app.swagger_ui_oauth2_redirect_url
    assert openapi_url is not None and redirect_url is not None
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy's path prefix, as FastAPI's own /docs
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI", oauth2_redirect_url=root + redirect_url,
            swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
            # no badge from the public validator: it would send the schema's URL off the intranet
            swagger_ui_parameters={"validatorUrl": None})
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{DOCS_ASSETS_PATH}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
                              with_google_fonts=False)  # the system fonts: Google's are not on an intranet
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page


def create_app(settings: Settings, engine: QueryEngine | None = None, judge: PairJudge | None = None,
               guard: Guard | None = None) -> FastAPI:
    """Build the app; the engine (and its models) load at startup, before the port serves /readyz ok.

    The engine gets the app's observers: the Prometheus metrics, the per-question log line and the
    question log.

    Raises:
        BadInputError: the dashboard would be served off loopback without an operator key.
    """
    guard = guard or Guard(settings)
    if engine is None:
        from kbsearch.service import make_engine

        engine = make_engine(settings)
    judge = judge or PairJudge(settings.pair, settings.device)
    ops = make_operations(settings, engine)
    metrics = Metrics(settings.telemetry, settings.decide)
    metrics.watch(engine.status)
    engine.observers += [metrics.observe, question_logger(settings.telemetry)]
    if ops is not None:
        metrics.watch_questionlog(ops.log.stats)
        engine.observers.append(ops.log.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.load()
        judge.load()
        engine.watch()
        _train_what_is_not_covered(settings, engine)
        if ops is not None:
            ops.log.start()
        yield
        if ops is not None:
            ops.log.close()
            ops.db.dispose()
        engine.close()

    app = FastAPI(title="kbsearch", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Customer-service FAQ retrieval: answers from the knowledge base or hands off.")
    add_docs(app)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.ops = ops
    app.state.guard = guard
    client = [Depends(guard.client)]

    @app.exception_handler(SQLAlchemyError)
    async def _database_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("operations database error on %s: %s", request.url.path, str(exc).splitlines()[0][:300])
        return JSONResponse(status_code=503, content={"detail": "the question log database is unavailable",
                                                      "error": "DatabaseUnavailable"})

    @app.exception_handler(KbsearchError)
    async def _kbsearch_error(request: Request, exc: KbsearchError) -> JSONResponse:
        headers = {"Retry-After": str(settings.api.retry_after_s)} if isinstance(exc, BusyError) else None
        return JSONResponse(status_code=exc.http_status, content={"detail": str(exc), "error": type(exc).__name__},
                            headers=headers)

    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected_error)
    app.add_middleware(BodyLimit, default=settings.api.max_body_bytes,
                       per_path={"/admin/api/decisions/import": MAX_UPLOAD + 64 * 1024})
    if settings.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.api.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"], expose_headers=["X-Request-ID"])
    admission = Admission(settings.api.max_in_flight, settings.api.max_queue, settings.api.queue_timeout_s)
    app.state.admission = admission
    metrics.watch_admission(admission.stats)

    # The probes are async: they run on the event loop and never wait in the thread pool behind questions.
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(engine: EngineDep) -> JSONResponse:
        """The index and the models are loaded (503 with the reasons otherwise)."""
        status = engine.status()
        return JSONResponse(status_code=200 if status["ready"] else 503, content=status)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/ask", response_model=AskResponse, dependencies=client,
              responses={429: {"description": "Too many questions in flight: retry after Retry-After seconds"}})
    async def ask(body: AskRequest, engine: EngineDep, response: Response, request: Request,
                  request_id: RequestId = None) -> AskResponse:
        """Answer a question with the best FAQ entry, or hand off to a human.

        The ``X-Request-ID`` header (or a new id) becomes ``request_id`` and is echoed in the response header.
        ``explain`` needs an operator key (it shows candidates and thresholds). Past ``api.max_in_flight``
        questions and ``api.max_queue`` waiting, 429 with ``Retry-After``.
        """
        if body.explain:
            guard.admin_actor(request)
        answer = await admission.run(lambda: run_in_threadpool(
            engine.ask, body.question, kb=body.kb, top_k=body.top_k, explain=body.explain, request_id=request_id,
            context=body.context()))
        response.headers["X-Request-ID"] = answer.request_id
        return AskResponse.from_answer(answer)

    @app.post("/feedback", response_model=FeedbackResponse, dependencies=client,
              responses={404: {"description": "Unknown request_id"}, 503: {"description": "The question log is off or down"}})
    def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Record what the user did with an answer: a thumb, a click on a result, a comment.

        A repeat for the same ``request_id`` replaces the earlier feedback.
        """
        if ops is None:
            raise HTTPException(503, "the question log is off (KBSEARCH_QUESTIONLOG__ENABLED)")
        try:
            kb = ops.log.kb_of(body.request_id)
            if kb is None:
                raise HTTPException(404, f"unknown request_id {body.request_id!r}")
            updated = ops.log.feedback(body.request_id, kb, helpful=body.helpful, clicked_id=body.clicked_id,
                                       comment=body.comment)
        except SQLAlchemyError as exc:
            log.error("feedback not stored: %s", exc)
            raise HTTPException(503, "the question log database is unavailable") from exc
        return FeedbackResponse(request_id=body.request_id, updated=updated)

    @app.post("/similarity", response_model=SimilarityResponse)
    def similarity(body: SimilarityRequest) -> SimilarityResponse:
        """Do two texts mean the same? The pair model's P(same meaning) against pair.threshold.

        503 when no pair model is configured (``KBSEARCH_PAIR__MODEL``) or it failed to load.
        """
        similar, score = judge.judge(body.a, body.b)
        return SimilarityResponse(similar=similar, score=score, threshold=judge.threshold, model=judge.model_id)

    if settings.dashboard.enabled:
        app.include_router(admin_router(settings, engine, ops, guard) if ops is not None else unavailable_router(guard))
        app.mount("/dashboard/static", StaticFiles(directory=str(STATIC)), name="dashboard-static")
        app.add_middleware(PathHeaders, prefix="/dashboard", headers=PAGE_HEADERS)
    return app
