"""Collapse ranked index rows into one entry per FAQ: the one grouping rule serving and training share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def group_rows(rows: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float], row_faq: Sequence[str],
               keep: Callable[[int], bool] | None = None) -> list[tuple[str, int, float]]:
    """``(faq_id, best row, its score)`` per FAQ, best first (ties keep the input order).

    Args:
        rows: Row numbers, best first (-1 = no row, as FAISS pads).
        scores: Each row's score.
        row_faq: The FAQ id of every row of the build.
        keep: Rows to consider (e.g. not the variant itself); None: every row.
    """
    best: dict[str, tuple[int, float]] = {}
    for r, s in zip(np.asarray(rows).tolist(), np.asarray(scores).tolist()):
        if r < 0 or (keep is not None and not keep(r)):
            continue
        faq = row_faq[r]
        current = best.get(faq)
        if current is None or float(s) > current[1]:
            best[faq] = (r, float(s))
    return sorted(((faq, r, s) for faq, (r, s) in best.items()), key=lambda t: -t[2])
