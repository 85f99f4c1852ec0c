"""The query engine's parts and their life: built from the settings, loaded once at startup, reported by
``/readyz``, closed at shutdown. ``query.QueryEngine`` adds the question path on top.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence

from kbsearch.config import Settings
from kbsearch.decide import Thresholds
from kbsearch.decide.human import HumanRequestMatcher
from kbsearch.embed.base import Embedder
from kbsearch.errors import IndexCorruptError, NotFoundError
from kbsearch.rerank.base import RerankPlanner
from kbsearch.retrieve import Bm25Search, Bm25Stage, VectorSearch, make_first_stage
from kbsearch.service.builds import BuildCache
from kbsearch.telemetry.trace import Trace

log = logging.getLogger(__name__)


class EngineParts:
    """The stages a query engine runs, each given its settings group, and their loading and readiness.

    Args:
        settings: All settings; each stage gets its group.
        embedder: The question embedder (must match the builds' model).
        planner: Decides per KB which reranker runs (``kbsearch.rerank.make_rerank_planner``).
        clock: Returns "today" for validity checks (tests inject a fixed day).
        observers: Called with each finished question's trace (metrics, logs); their errors are logged, not raised.
    """

    def __init__(self, settings: Settings, embedder: Embedder, planner: RerankPlanner,
                 clock: Callable[[], dt.date] = dt.date.today, observers: Sequence[Callable[[Trace], None]] = ()):
        self.settings, self.embedder, self.planner, self._clock = settings, embedder, planner, clock
        self.builds = BuildCache(settings.home, embedder, settings.device)
        self.vector = VectorSearch(settings.retrieve, embedder)
        self.bm25 = Bm25Stage(Bm25Search(settings.retrieve))
        self.first_stage = make_first_stage(settings.retrieve, self.vector, self.bm25.search)
        self.thresholds = Thresholds(settings.decide)
        self.human = HumanRequestMatcher(embedder, settings.decide)  # the KBs' hand-off rules (decide.human_request)
        self.observers = list(observers)
        self.reranker_error: str | None = None
        self.load_seconds: dict[str, float] = {}
        self.loaded = False

    def load(self, kb: str | None = None) -> None:
        """Load the models and the active build of ``kb`` (default ``default_kb``); idempotent.

        A model that fails to load is recorded, not raised: the service then runs degraded, and
        ``status()`` says why. Other KBs load on their first question.
        """
        if self.loaded:
            return
        for name, component in (("embedder", self.embedder), ("reranker", self.planner)):
            t = time.perf_counter()
            try:
                component.load()
            except Exception as exc:  # any model-loading failure: serve without it, and say why in /readyz
                log.exception("%s failed to load", name)
                error = f"{type(exc).__name__}: {exc}"
                if name == "embedder":
                    self.vector.error = error
                else:
                    self.reranker_error = error
            self.load_seconds[name] = time.perf_counter() - t
        self.builds.embedder_ready = self.vector.error is None
        kb = kb or self.settings.default_kb
        try:
            self.builds.get(kb)
        except NotFoundError:
            log.warning("knowledge base %r has no build yet; run `kbsearch ingest`", kb)
        except IndexCorruptError as exc:
            log.error("knowledge base %r is corrupt: %s", kb, exc)
        self.loaded = True

    def status(self) -> dict[str, object]:
        """Readiness: models and builds loaded, with reasons for anything that is not."""
        kbs: dict[str, dict[str, object]] = {}
        for name, b in self.builds.loaded().items():
            kbs[name] = {"build": b.build_id, "model": b.manifest.model_id, "entries": len(b.entries),
                         "rows": len(b.rows), "vector": b.vector_error or "ok", "bm25": b.bm25_error or "ok",
                         "reranker_state": self.planner.model_id}
            state = self.planner.describe(self.builds.kb_dir(name))
            if state is not None:
                kbs[name]["reranker"] = str(state)
                kbs[name]["reranker_state"] = f"{self.planner.model_id} on, weight {state.weight}" if state.on else f"{self.planner.model_id} off"
        return {"loaded": self.loaded, "embedder": self.vector.error or "ok",
                "reranker": self.reranker_error or ("ok" if self.planner.enabled else "none"), "kbs": kbs,
                "load_seconds": {k: round(v, 3) for k, v in self.load_seconds.items()},
                "ready": self.loaded and self.vector.error is None and bool(kbs)
                and all(v["vector"] == "ok" for v in kbs.values())}

    def close(self) -> None:
        """Release the worker threads."""
        self.vector.close()
