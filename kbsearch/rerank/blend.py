"""Blend a reranker's scores with the first stage's over the rerank window (the KB reranker's way of helping).

Within the window, candidates are ordered by ``(1 - w) * z(first-stage score) + w * z(logit(P))``, where
``z`` standardises over the window, so the first stage's scale (cosine, linear fusion, RRF, BM25) does not
matter and a weight picked by the self-check on vector scores carries over to the fused stage. ``w`` = 1
is the reranker's order alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BLEND_WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
"""Blend weights the self-check tries, smallest first (a tie keeps the one nearer the first stage)."""


def blend(first: Sequence[float], probs: Sequence[float], weight: float) -> list[float]:
    """Ordering keys for a window of candidates: ``(1 - w) * z(first) + w * z(logit(probs))``.

    ``weight`` >= 1 returns the logits alone (the reranker's order).
    """
    logits = [math.log(max(p, 1e-6) / max(1.0 - p, 1e-6)) for p in probs]
    if weight >= 1.0:
        return logits

    def z(xs: Sequence[float]) -> list[float]:
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) or 1.0
        return [(x - mean) / sd for x in xs]

    return [(1.0 - weight) * a + weight * b for a, b in zip(z(first), z(logits))]
