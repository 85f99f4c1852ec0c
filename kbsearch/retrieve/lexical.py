"""The BM25 first stage: the lexical ranking, and the fallback when the vector path fails."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kbsearch.codes import FallbackCause
from kbsearch.config import RetrieveSettings
from kbsearch.errors import BackendError
from kbsearch.retrieve.base import Query, Retrieval
from kbsearch.retrieve.candidates import candidates_of
from kbsearch.types import Candidate

if TYPE_CHECKING:
    from kbsearch.index.store import Build
    from kbsearch.telemetry.trace import Trace


class Bm25Search:
    """The build's BM25 top ``retrieve.bm25_top_k`` rows, one candidate per FAQ.

    Args:
        settings: The ``retrieve`` group.
    """

    def __init__(self, settings: RetrieveSettings) -> None:
        self.settings = settings

    def search(self, query: Query, build: Build, trace: Trace) -> tuple[list[Candidate], np.ndarray, int]:
        """Candidates by normalised BM25, every row's normalised score (computed in the same pass), and the
        FAQs found before the validity filter.

        Raises:
            BackendError: cause ``bm25-missing`` (the build's BM25 index did not load) or ``bm25-error``.
        """
        if build.bm25 is None:
            raise BackendError(build.bm25_error or "BM25 index missing", FallbackCause.BM25_MISSING)
        with trace.span("bm25") as span:
            found = build.bm25.search(query.text, self.settings.bm25_top_k)
            cands, n = candidates_of(found.rows, found.normalised, build, query, "bm25")
            span.candidates = len(cands)
        return cands, found.all_normalised, n


class Bm25Stage:
    """``first_stage = "bm25"``, and the fallback of every other first stage."""

    name = "bm25"

    def __init__(self, search: Bm25Search) -> None:
        self.search = search

    def retrieve(self, query: Query, build: Build, trace: Trace) -> Retrieval:
        """See :class:`~kbsearch.retrieve.base.FirstStage`."""
        cands, _, found = self.search.search(query, build, trace)
        trace.keep("bm25", cands)
        return Retrieval(tuple(cands), "bm25", found)
