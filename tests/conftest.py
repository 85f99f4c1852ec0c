"""Shared fixtures: session-scoped real models (loaded once per run), and a small KB built with the hash fake.

Tiers (strict markers, see ``pyproject.toml``): ``pytest -m "not slow"`` is the day-to-day run (no real
weights trained, no real servers); the README's test command runs everything.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kbsearch.config import Settings
from kbsearch.embed.e5_small import E5SmallEmbedder, materialize_e5_small
from kbsearch.embed.fake import HashEmbedder
from kbsearch.index.builder import BuildResult, build_index
from kbsearch.rerank.base import Reranker
from kbsearch.rerank.plan import SharedRerankPlanner
from kbsearch.service.query import QueryEngine
from servers import CLI
from support import REPO, SMALL_KB, one_chunk

# No KB reranker trains behind a test's back (ingest and serve start one in the background by default):
# the tests that want one run `kbsearch train-reranker`, and the background path is tested with this set.
os.environ["KBSEARCH_KB_RERANKER__AUTO_TRAIN"] = "false"

TODAY = dt.date(2026, 11, 22)
"""The day the small KB's questions are asked on (``old-1`` expired in 2023)."""


@pytest.fixture(scope="session")
def e5_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A model cache with the bundled e5-small materialised once per run (about 25 s, 940 MB with the ONNX export)."""
    cache = tmp_path_factory.mktemp("model-cache")
    started = time.perf_counter()
    materialize_e5_small(cache)
    print(f"\nmaterialise e5-small: {time.perf_counter() - started:.2f}s")
    yield cache
    shutil.rmtree(cache)  # 940 MB; pytest would keep it with the last three runs' temp dirs


@pytest.fixture(scope="session")
def e5_embedder(e5_cache: Path) -> E5SmallEmbedder:
    """The real e5-small embedder, loaded once per run (on the CPU)."""
    emb = E5SmallEmbedder(e5_cache, device="cpu")
    started = time.perf_counter()
    emb.load()
    print(f"\nfirst load of e5-small (verify + sentence-transformers): {time.perf_counter() - started:.2f}s")
    return emb


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Settings for the small KB under a fresh home, with the hash fake embedder and thresholds that suit it."""
    return Settings(home=tmp_path / "home", embed={"backend": "hash"},
                    decide={"threshold_vector": 0.5, "threshold_bm25": 0.2}, retrieve={"vector_timeout_s": 0.5})


@pytest.fixture()
def built(settings: Settings) -> BuildResult:
    """The small KB's first four entries built as ``default`` with the hash fake."""
    entries = SMALL_KB[:4]
    return build_index(settings, "default", entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})


@pytest.fixture()
def make_engine(settings: Settings) -> Iterator[Callable[..., QueryEngine]]:
    """``make_engine(settings=..., embedder=..., reranker=..., today=...)``: a loaded engine, closed after the test."""
    engines: list[QueryEngine] = []

    def make(s: Settings | None = None, embedder: object = None, reranker: Reranker | None = None,
             today: dt.date = TODAY, planner: object = None, observers: tuple = ()) -> QueryEngine:
        engine = QueryEngine(s or settings, embedder or HashEmbedder(dim=64),
                             planner or SharedRerankPlanner(reranker, (s or settings).rerank.doc),
                             clock=lambda: today, observers=observers)
        engine.load()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(scope="session")
def ingested_home(tmp_path_factory):
    """The sample KB ingested once per run by the real CLI (e5-small), then its own reranker trained by
    ``kbsearch train-reranker`` as the background training would: (home, ingest summary with the
    training's result as ``trained_reranker``).

    Tests that change the home copy it first.
    """
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "KBSEARCH_HOME": str(home)}
    ingest = subprocess.run(CLI + ["ingest", str(REPO / "kb"), "--json"], env=env, capture_output=True,
                            text=True, timeout=900)
    assert ingest.returncode == 0, ingest.stderr
    train = subprocess.run(CLI + ["train-reranker", "--json"], env=env, capture_output=True, text=True, timeout=1800)
    assert train.returncode == 0, train.stderr
    return home, {**json.loads(ingest.stdout), "trained_reranker": json.loads(train.stdout)}
