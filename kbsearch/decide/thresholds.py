"""Thresholds per score kind: the global setting, or a KB's calibrated one (``kbsearch calibrate``).

A KB's calibrations live in ``<kb>/thresholds.json`` (score kind -> threshold, margin, and the model,
reranker and first stage they were measured with). One is used only when the service decides with the
same configuration; otherwise the setting applies and ``explain`` says why.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from kbsearch.config import DecideSettings
from kbsearch.errors import NotFoundError
from kbsearch.index.store import active_build_id
from kbsearch.types import ScoreKind

THRESHOLDS = "thresholds.json"


def read_thresholds(kb_dir: Path) -> dict[str, dict[str, Any]]:
    """The KB's calibrated thresholds by score kind (``{}`` when never calibrated or unreadable)."""
    try:
        data = json.loads((kb_dir / THRESHOLDS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def write_thresholds(kb_dir: Path, update: dict[str, dict[str, Any]]) -> Path:
    """Merge ``update`` (score kind -> calibration) into the KB's thresholds file, atomically.

    Raises:
        NotFoundError: the KB has no active build.
    """
    if active_build_id(kb_dir) is None:
        raise NotFoundError(f"knowledge base {kb_dir.name!r} has no active build to calibrate")
    data = {**read_thresholds(kb_dir), **update}
    tmp = kb_dir / f".{THRESHOLDS}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, kb_dir / THRESHOLDS)
    return kb_dir / THRESHOLDS


class Thresholds:
    """The threshold and margin each score kind is decided with, per KB.

    Args:
        settings: The ``decide`` group (the global thresholds).
    """

    def __init__(self, settings: DecideSettings) -> None:
        self.settings = settings
        self._files: dict[Path, tuple[int, dict[str, dict[str, Any]]]] = {}  # kb dir -> (mtime, file)

    def setting(self, kind: ScoreKind) -> float:
        """The global threshold of ``kind``."""
        s = self.settings
        return {"rerank": s.threshold_rerank, "vector": s.threshold_vector, "bm25": s.threshold_bm25}[kind]

    def get(self, kb_dir: Path, kind: ScoreKind, serving: dict[str, str]) -> tuple[float, float, str]:
        """``(threshold, margin, source)`` for ``kind`` on the KB in ``kb_dir``.

        Args:
            serving: What decides now (``model_id``, ``first_stage``, ``reranker``): a calibration
                measured with anything else is not used.
        """
        cal = self._calibrated(kb_dir).get(kind)
        if cal is None:
            return self.setting(kind), 0.0, "setting"
        if any(cal.get(k) != v for k, v in serving.items()):
            return self.setting(kind), 0.0, "setting (calibration was for another configuration)"
        return float(cal["threshold"]), float(cal.get("margin") or 0.0), f"calibrated {cal.get('date', '')}"

    def _calibrated(self, kb_dir: Path) -> dict[str, dict[str, Any]]:
        """The KB's thresholds file, re-read when it changes (one stat per question)."""
        path = kb_dir / THRESHOLDS
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._files.get(kb_dir)
        if cached is None or cached[0] != mtime:
            cached = (mtime, read_thresholds(kb_dir))
            self._files[kb_dir] = cached
        return cached[1]
