"""Pair judgement: do two questions mean the same? (``POST /similarity``, ``kbsearch similar``)

The judge is a pair model trained by ``kbsearch finetune`` (a cross-encoder with one logit), loaded
from ``pair.model``; P(same meaning) = sigmoid(logit) is compared with ``pair.threshold``.
"""

from __future__ import annotations

import logging
from typing import Any

from kbsearch.config import PairSettings
from kbsearch.errors import NotReadyError
from kbsearch.rerank.base import Reranker
from kbsearch.rerank.cross_encoder import CrossEncoderReranker

log = logging.getLogger(__name__)


class PairJudge:
    """Scores a pair of texts with the configured pair model.

    Args:
        settings: The ``pair`` group (model, threshold, max_length, batch size).
        device: Where the model runs.
        model: A loaded-or-loadable scorer to use instead of the configured folder (tests).
    """

    def __init__(self, settings: PairSettings, device: str = "auto", model: Reranker | None = None):
        self.threshold = settings.threshold
        self.model_id = settings.model
        self.error: str | None = None
        self._model = model
        if model is None and settings.model:
            self._model = CrossEncoderReranker(settings.model, batch_size=settings.batch_size,
                                               max_length=settings.max_length, device=device)

    def load(self) -> None:
        """Load the model; a failure is kept in ``error`` (``judge`` then raises NotReadyError)."""
        if self._model is None:
            return
        try:
            self._model.load()
        except Exception as exc:  # any model-loading failure: /similarity says why, /ask keeps serving
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("pair model failed to load: %s", self.error)

    def describe(self) -> dict[str, Any]:
        """The configured model, threshold and load error."""
        return {"pair_model": self.model_id or None, "threshold": self.threshold, "error": self.error}

    def judge(self, a: str, b: str) -> tuple[bool, float]:
        """``(similar, P(same meaning))`` for the pair.

        Raises:
            NotReadyError: no pair model is configured, or it failed to load.
        """
        if self._model is None:
            raise NotReadyError("no pair model configured: train one with `kbsearch finetune` and set "
                                "KBSEARCH_PAIR__MODEL to its folder")
        if self.error is not None:
            raise NotReadyError(f"pair model {self.model_id!r} failed to load: {self.error}")
        score = float(self._model.score(a, [b])[0])
        return score >= self.threshold, score
