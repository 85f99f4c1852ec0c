"""The query engine's parts and their life: built from the settings, loaded once at startup, reported by
``/readyz``, closed at shutdown. ``query.QueryEngine`` adds the question path on top.

A server's ``load()`` loads every KB under ``home`` that was ever published, so readiness covers them all
(not only ``default_kb``, and not only after a first question), and ``watch()`` then loads each build and
each KB published later in the background: a KB is listed by ``/readyz`` once loaded, and no question
waits for a load. ``status()`` never raises and names no file-system path: it is what ``/readyz`` and
the build metrics show.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence

from kbsearch.config import Settings
from kbsearch.decide import Thresholds
from kbsearch.decide.human import HumanRequestMatcher
from kbsearch.embed.base import Embedder
from kbsearch.errors import BadInputError, IndexCorruptError, NotFoundError, without_paths
from kbsearch.index.store import Build, knowledge_bases
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
        self.settings, self.planner, self._clock = settings, planner, clock
        self.builds = BuildCache(settings.home, embedder, settings.device, settings.index.milvus_token)
        self.vector = VectorSearch(settings.retrieve, embedder)
        self.embedder = self.vector.model_embedder  # every model call of the service on one thread (retrieve.batching)
        self.bm25 = Bm25Stage(Bm25Search(settings.retrieve))
        self.first_stage = make_first_stage(settings.retrieve, self.vector, self.bm25.search)
        self.thresholds = Thresholds(settings.decide)
        self.human = HumanRequestMatcher(self.embedder, settings.decide)  # the KBs' hand-off rules (decide.human_request)
        self.observers = list(observers)
        self.reranker_error: str | None = None
        self.load_seconds: dict[str, float] = {}
        self.loaded = False
        self._models_tried = 0.0  # time.monotonic() of the last model load
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def load(self, kb: str | None = None) -> None:
        """Load the models and the build serving ``kb``, or (None, a server) of every KB under ``home``; idempotent.

        A model or a KB that fails to load is recorded, not raised: the service then runs degraded, and
        ``status()`` says why. KBs published later load on their first question, or earlier in a server
        (``watch()``).
        """
        if self.loaded:
            return
        self._load_models(("embedder", "reranker"))
        self.builds.embedder_ready = self.vector.error is None
        for name in [kb] if kb else knowledge_bases(self.settings.home) or [self.settings.default_kb]:
            try:
                self.builds.get(name)
            except NotFoundError:
                log.warning("knowledge base %r has no build yet; run `kbsearch ingest`", name)
            except (IndexCorruptError, BadInputError) as exc:
                log.error("knowledge base %r cannot be served: %s", name, exc)
        self.loaded = True

    def _load_models(self, names: Sequence[str]) -> None:
        """Load the named models (``embedder``, ``reranker``), recording each failure instead of raising."""
        self._models_tried = time.monotonic()
        for name in names:
            component = self.embedder if name == "embedder" else self.planner
            t = time.perf_counter()
            try:
                component.load()
                error = None
            except Exception as exc:  # any model-loading failure: serve without it, and say why in /readyz
                log.exception("%s failed to load", name)
                error = f"{type(exc).__name__}: {exc}"
            if name == "embedder":
                self.vector.error = error
            else:
                self.reranker_error = error
            self.load_seconds[name] = time.perf_counter() - t

    def retry_models(self) -> list[str]:
        """Load again a model that failed to load, and a build's vector index held by a server (Milvus) that did
        not, once ``model_load_retry_s`` has passed since the last try.

        A remote model server or a Milvus cluster that was not up when the service started (or a GPU that was
        busy) is picked up without a restart. Returns the models that loaded now.
        """
        failed = [name for name, error in (("embedder", self.vector.error), ("reranker", self.reranker_error)) if error]
        every = self.settings.model_load_retry_s
        if every <= 0 or time.monotonic() - self._models_tried < every:
            return []
        for kb in self.builds.retry_vectors():
            log.warning("knowledge base %r: its vector index loaded on a later try; serving with it", kb)
        if not failed:
            self._models_tried = time.monotonic()
            return []
        self._load_models(failed)
        if "embedder" in failed and self.vector.error is None:
            self.builds.embedder_ready = True
            self.builds.check_loaded()
        loaded = [name for name, error in (("embedder", self.vector.error), ("reranker", self.reranker_error))
                  if name in failed and error is None]
        for name in loaded:
            log.warning("%s loaded on a later try; serving with it", name)
        return loaded

    def refresh(self) -> list[str]:
        """Load what was published since: a KB's new build, a new KB. Returns the KBs whose build changed.

        Never raises: a build that does not load is recorded by the build cache (``status()`` says why).
        """
        before = {name: b.build_id for name, b in self.builds.loaded().items()}
        for name in knowledge_bases(self.settings.home):
            try:
                self.builds.get(name)
            except (NotFoundError, IndexCorruptError, BadInputError) as exc:
                log.debug("knowledge base %r not loaded: %s", name, exc)
        return [name for name, b in self.builds.loaded().items() if before.get(name) != b.build_id]

    def watch(self) -> None:
        """Run ``retry_models()`` and ``refresh()`` every ``index.watch_interval_s`` in a daemon thread until ``close()`` (a server)."""
        interval = self.settings.index.watch_interval_s
        if interval <= 0 or self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop_watching.wait(interval):
                try:
                    self.retry_models()
                    changed = self.refresh()
                except Exception:  # the watcher must outlive any surprise; the next round tries again
                    log.exception("looking for new builds failed")
                    continue
                if changed:
                    log.info("loaded new builds of %s", changed)

        self._watcher = threading.Thread(target=loop, name="kbsearch-build-watcher", daemon=True)
        self._watcher.start()

    def active_build(self, kb: str) -> Build:
        """``kb``'s active build, for commands that must not work on another one (``ask``, ``calibrate``, ``eval``).

        Raises:
            NotFoundError: no such KB.
            IndexCorruptError: the active build does not load (a server would serve an earlier build; a command
                exits 3 instead).
        """
        build = self.builds.get(kb)
        problem = self.builds.problems().get(kb)
        if problem is not None:
            raise IndexCorruptError(problem)
        return build

    def status(self) -> dict[str, object]:
        """Readiness: models and builds loaded, with reasons for anything that is not (no paths; never raises).

        Each KB served shows its build and ``fallback`` (None, or why it is not served from the build ACTIVE
        names); a KB with no build that loads shows ``error``. Ready when the models loaded and every KB found
        is served with its vector index.
        """
        kbs = {name: self._kb_status(name, b) for name, b in self.builds.loaded().items()}
        for name, why in self.builds.problems().items():
            if name in kbs:
                kbs[name]["fallback"] = why
            else:
                kbs[name] = {"build": None, "error": why}
        status = {"loaded": self.loaded, "embedder": self.vector.error or "ok",
                  "reranker": self.reranker_error or ("ok" if self.planner.enabled else "none"), "kbs": kbs,
                  "load_seconds": {k: round(v, 3) for k, v in self.load_seconds.items()},
                  "ready": self.loaded and self.vector.error is None and bool(kbs)
                  and all(v.get("vector") == "ok" for v in kbs.values())}
        return without_paths(status)

    def _kb_status(self, name: str, b: Build) -> dict[str, object]:
        """One served KB's line in ``status()``."""
        out: dict[str, object] = {
            "build": b.build_id, "model": b.manifest.model_id, "entries": len(b.entries), "rows": len(b.rows),
            "vector": b.vector_error or "ok", "bm25": b.bm25_error or "ok", "fallback": None,
            "reranker_state": self.planner.model_id}
        try:
            state = self.planner.describe(self.builds.kb_dir(name), b)
        except Exception as exc:  # readiness must answer whatever a reranker folder holds; the bug is logged
            log.exception("describing the reranker of %r failed", name)
            out["reranker"] = out["reranker_state"] = f"unreadable ({type(exc).__name__})"
            return out
        if state is not None:
            out["reranker"] = str(state)
            out["reranker_state"] = f"{self.planner.model_id} on, weight {state.weight}" if state.on else f"{self.planner.model_id} off"
        return out

    def close(self) -> None:
        """Stop the watcher and release the worker threads."""
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.vector.close()
