"""The ``kb`` reranker: each knowledge base's own pair model, trained from its variants.

``kbsearch ingest`` (with ``rerank_backend = "kb"``, the default) trains a cross-encoder from the
bundled e5-small base on the KB's variants and their hard negatives (``kbsearch.finetune.kb``), and
keeps it under ``indexes/<kb>/rerankers/<key>/``; ``ACTIVE`` names the one in use. Training is
cached: the key is a hash of the training pairs, the recipe and the base, so re-ingesting the same
variants reuses the model. Its card records a self-check on held-out variants, which also picks the
blend weight ``w``: the stage orders its window by ``blend`` of the first-stage score and the model's
(``w`` = 1: the model alone). When no weight beat the first stage there (or the KB has no variants, so
nothing was trained), the query path skips the stage for that KB and says why in the response notes.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kbsearch.config import Settings
from kbsearch.errors import BackendError
from kbsearch.finetune.train import CARD
from kbsearch.rerank.cross_encoder import CrossEncoderReranker

RERANKERS = "rerankers"
"""Folder of a KB's trained rerankers, beside its builds."""

ACTIVE = "ACTIVE"
"""File in ``RERANKERS`` naming the key of the reranker in use."""

KB_RERANKER_DOC = "question"
"""What a KB reranker reads per candidate (``rerank_doc``): the matched question or variant, as it trained."""

SKIP = "SKIP"
"""File in ``RERANKERS`` saying why the KB has no reranker in use (e.g. no variants)."""


BLEND_WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
"""Blend weights the self-check tries, smallest first (a tie keeps the one nearer the first stage)."""


def blend(first: Sequence[float], probs: Sequence[float], weight: float) -> list[float]:
    """Ordering keys for a window of candidates: ``(1 - w) * z(first) + w * z(logit(probs))``.

    ``z`` standardises over the window (mean 0, s.d. 1), so the first stage's score scale (cosine,
    linear fusion, RRF, BM25) does not matter and the self-check's weight, picked on vector scores,
    carries over to the fused stage. ``weight`` 1: the reranker's order alone.
    """
    logits = [math.log(max(p, 1e-6) / max(1.0 - p, 1e-6)) for p in probs]
    if weight >= 1.0:
        return logits

    def z(xs: Sequence[float]) -> list[float]:
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) or 1.0
        return [(x - mean) / sd for x in xs]

    return [(1.0 - weight) * a + weight * b for a, b in zip(z(first), z(logits))]


def kb_reranker_weight(path: Path) -> float:
    """The blend weight a KB reranker's self-check chose (1.0 for a card from before blending)."""
    card = json.loads((Path(path) / CARD).read_text(encoding="utf-8"))
    return float((card.get("self_check") or {}).get("weight", 1.0))


def active_kb_reranker(kb_dir: Path, *, force: bool = False) -> tuple[Path | None, str]:
    """The folder of ``kb_dir``'s reranker in use, or None and why there is none.

    ``force`` returns the trained model even when its self-check said not to use it (evaluation).
    """
    folder = Path(kb_dir) / RERANKERS
    try:
        key = (folder / ACTIVE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        try:
            return None, (folder / SKIP).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None, "no KB reranker trained yet (kbsearch ingest trains one when the KB has variants)"
    path = folder / key
    card = path / CARD
    if not card.is_file():
        return None, f"KB reranker {path} is incomplete (no model card)"
    check = json.loads(card.read_text(encoding="utf-8")).get("self_check") or {}
    if not check.get("use", False) and not force:
        return None, f"KB reranker off: {check.get('reason', 'its self-check did not pass')}"
    return path, "ok"


class KbReranker:
    """``rerank_backend = "kb"``: resolves and loads each KB's own reranker on first use.

    The query path asks ``for_kb(kb_dir)`` per question (``force``: also where the self-check failed); ``score`` itself is not used (it raises).
    Loaded models are kept per folder, so a retrained KB reranker is picked up on its next question.
    """

    enabled: bool = True
    model_id: str = "kb"

    def __init__(self, settings: Settings, *, force: bool = False) -> None:
        self.settings = settings
        self.force = force  # use a KB's model even where its self-check failed (``kbsearch eval`` shows both)
        self._models: dict[Path, CrossEncoderReranker] = {}
        self._weights: dict[Path, float] = {}
        self._resolved: dict[Path, tuple[int, tuple[Path | None, str]]] = {}  # kb dir -> (folder mtime, answer)
        self._lock = threading.Lock()

    def load(self) -> None:
        """Nothing to load up front: each KB's model loads on its first question."""

    def for_kb(self, kb_dir: Path) -> tuple[CrossEncoderReranker | None, str, float]:
        """The loaded reranker for the KB in ``kb_dir`` and its blend weight, or None and why the stage is
        skipped. The folder comes from the asking engine's settings, which may name another home than
        the ones this reranker was made with (``kbsearch eval`` ingests into a temporary home).

        Raises:
            BackendError (or another ``kbsearch.errors`` error): the KB's model failed to load.
        """
        path, why = self.resolve(kb_dir)
        if path is None:
            return None, why, 0.0
        model = self._models.get(path)
        if model is None:
            with self._lock:
                model = self._models.get(path)
                if model is None:
                    model = CrossEncoderReranker(str(path), batch_size=self.settings.rerank_batch_size,
                                                 max_length=self.settings.kb_reranker_max_length,
                                                 device=self.settings.device)
                    model.load()
                    self._models[path] = model
        return model, "ok", self._weights[path]

    def resolve(self, kb_dir: Path) -> tuple[Path | None, str]:
        """``active_kb_reranker`` for this reranker's ``force``, re-read only when the rerankers folder
        changes (training switches models by replacing files in it): one stat per question."""
        try:
            mtime = (Path(kb_dir) / RERANKERS).stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        cached = self._resolved.get(kb_dir)
        if cached is None or cached[0] != mtime:
            cached = (mtime, active_kb_reranker(kb_dir, force=self.force))
            if cached[1][0] is not None:  # a re-check may have changed the weight of a model already loaded
                self._weights[cached[1][0]] = kb_reranker_weight(cached[1][0])
            self._resolved[kb_dir] = cached
        return cached[1]

    def score(self, query: str, docs: list[str]) -> list[float]:
        """Not used: the query path scores with ``for_kb(kb_dir)``'s model.

        Raises:
            BackendError: always.
        """
        raise BackendError("the kb reranker scores per knowledge base: call for_kb(kb) first")

    def describe(self) -> dict[str, Any]:
        """Backend and the KB models loaded so far."""
        return {"backend": "kb", "enabled": True, "model_id": self.model_id,
                "loaded": sorted(str(p) for p in self._models)}
