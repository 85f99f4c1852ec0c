"""The HTTP API: a thin FastAPI layer over ``QueryEngine``.

Routes parse, call one library function and render. Errors map through one table
(``KbsearchError.http_status``): unknown KB 404, bad input 422, not ready / backend down 503. Backend
failures inside a question never reach here: the query path degrades instead.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from kbsearch import __version__
from kbsearch.api.models import AskRequest, AskResponse, SimilarityRequest, SimilarityResponse
from kbsearch.config import Settings
from kbsearch.errors import KbsearchError
from kbsearch.service.query import QueryEngine
from kbsearch.service.similarity import PairJudge

log = logging.getLogger(__name__)


def get_engine(request: Request) -> QueryEngine:
    """The app's QueryEngine (a dependency, so tests and routes share one way to reach it)."""
    return request.app.state.engine


EngineDep = Annotated[QueryEngine, Depends(get_engine)]


def create_app(settings: Settings, engine: QueryEngine | None = None, judge: PairJudge | None = None) -> FastAPI:
    """Build the app; the engine (and its models) load at startup, before the port serves /readyz ok."""
    if engine is None:
        from kbsearch.service import make_engine

        engine = make_engine(settings)
    judge = judge or PairJudge(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.load()
        judge.load()
        yield
        engine.close()

    app = FastAPI(title="kbsearch", version=__version__, lifespan=lifespan,
                  description="Customer-service FAQ retrieval: answers from the knowledge base or hands off.")
    app.state.engine = engine

    @app.exception_handler(KbsearchError)
    async def _kbsearch_error(request: Request, exc: KbsearchError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content={"detail": str(exc), "error": type(exc).__name__})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(engine: EngineDep) -> JSONResponse:
        """The index and the models are loaded (503 with the reasons otherwise)."""
        status = engine.status()
        return JSONResponse(status_code=200 if status["ready"] else 503, content=status)

    @app.post("/ask", response_model=AskResponse)
    def ask(body: AskRequest, engine: EngineDep) -> AskResponse:
        """Answer a question with the best FAQ entry, or hand off to a human."""
        request_id = uuid.uuid4().hex
        answer = engine.ask(body.question, kb=body.kb, top_k=body.top_k, explain=body.explain)
        log.info("ask request_id=%s kb=%s answered=%s mode=%s", request_id, body.kb or engine.settings.default_kb,
                 answer.answered, answer.mode)
        return AskResponse.from_answer(answer, request_id)

    @app.post("/similarity", response_model=SimilarityResponse)
    def similarity(body: SimilarityRequest) -> SimilarityResponse:
        """Do two texts mean the same? The pair model's P(same meaning) against pair_threshold.

        503 when no pair model is configured (``KBSEARCH_PAIR_MODEL``) or it failed to load.
        """
        similar, score = judge.judge(body.a, body.b)
        return SimilarityResponse(similar=similar, score=score, threshold=judge.threshold, model=judge.model_id)

    return app
