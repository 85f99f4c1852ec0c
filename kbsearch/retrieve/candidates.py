"""Turn grouped rows into ``Candidate`` values of the FAQs a build serves today."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from kbsearch.retrieve.base import Query
from kbsearch.retrieve.grouping import group_rows
from kbsearch.types import Candidate

if TYPE_CHECKING:
    from kbsearch.index.store import Build


def candidates_of(rows: np.ndarray, scores: np.ndarray, build: Build, query: Query,
                  kind: Literal["vector", "bm25"]) -> tuple[list[Candidate], int]:
    """One candidate per FAQ valid on ``query.today`` (best row wins), best first, scored as ``kind``
    (``vector`` or ``bm25``); and how many FAQs were found before the validity filter."""
    grouped = group_rows(rows, scores, build.row_faq)
    out, found, today = [], 0, query.today
    for faq, r, s in grouped:
        entry = build.entries.get(faq)
        if entry is None:  # a row of an entry the build does not serve
            continue
        found += 1
        if entry.is_valid_on(today):
            out.append(Candidate.found(entry, build.rows[r], kind, s))
    return out, found
