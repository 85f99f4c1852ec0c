"""Thresholds per score kind: the global setting, or a KB's calibrated one (``kbsearch calibrate``).

A KB's calibrations live in ``<kb>/thresholds.json`` (score kind -> threshold, margin, and the model,
reranker and first stage they were measured with), merged and replaced under the KB's writer lock and
written durably (``kbsearch.index.durable``). One is used only when the service decides with the
same configuration; otherwise the setting applies and ``explain`` says why. A file that is not JSON, or an
entry of the wrong shape (a threshold that is not a number...), is ignored with a logged warning:
a bad calibration file must never turn every answer into a hand-off.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from kbsearch.config import DecideSettings
from kbsearch.errors import NotFoundError
from kbsearch.index.durable import write_text_atomic
from kbsearch.index.lock import writer_lock
from kbsearch.index.store import active_build_id
from kbsearch.types import ScoreKind

log = logging.getLogger(__name__)

THRESHOLDS = "thresholds.json"


def read_thresholds(kb_dir: Path) -> dict[str, dict[str, Any]]:
    """The KB's valid calibrations by score kind (``{}`` when never calibrated).

    An unreadable file, or an entry of the wrong shape, is left out with a logged warning.
    """
    try:
        data = json.loads((kb_dir / THRESHOLDS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("knowledge base %r: %s is unreadable (%s); the threshold settings apply",
                    kb_dir.name, THRESHOLDS, type(exc).__name__)
        return {}
    if not isinstance(data, dict):
        log.warning("knowledge base %r: %s is not a JSON object; the threshold settings apply", kb_dir.name, THRESHOLDS)
        return {}
    valid = {}
    for kind, cal in data.items():
        why = _invalid(cal)
        if why:
            log.warning("knowledge base %r: %s entry %r ignored (%s); the %s threshold setting applies",
                        kb_dir.name, THRESHOLDS, kind, why, kind)
        else:
            valid[kind] = cal
    return valid


def _number(value: Any, low: float, high: float) -> bool:
    """A finite number in [low, high] (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high


def _invalid(cal: Any) -> str | None:
    """Why one stored calibration cannot be used, or None when it can (scores are cosines or probabilities)."""
    if not isinstance(cal, dict):
        return "not an object"
    if not _number(cal.get("threshold"), -1.0, 1.0):
        return f"threshold {str(cal.get('threshold'))[:40]!r} is not a number in [-1, 1]"
    if cal.get("margin") is not None and not _number(cal["margin"], 0.0, 2.0):
        return f"margin {str(cal['margin'])[:40]!r} is not a number in [0, 2]"
    return None


def write_thresholds(kb_dir: Path, update: dict[str, dict[str, Any]], *, lock_timeout_s: float | None = None) -> Path:
    """Merge ``update`` (score kind -> calibration) into the KB's thresholds file, atomically and durably,
    holding the KB's writer lock (so two calibrations never lose each other's kinds, and no writer interleaves).

    Args:
        lock_timeout_s: How long to wait for another writer (``index.lock_timeout_s``; default the lock's own).

    Raises:
        NotFoundError: the KB (or its active build) does not exist.
        KbBusyError: another writer held the KB's lock for the whole wait.
    """
    with writer_lock(kb_dir, "kbsearch calibrate", timeout_s=lock_timeout_s):
        if active_build_id(kb_dir) is None:
            raise NotFoundError(f"knowledge base {kb_dir.name!r} has no active build to calibrate")
        data = {**read_thresholds(kb_dir), **update}
        write_text_atomic(kb_dir / THRESHOLDS, json.dumps(data, ensure_ascii=False, indent=2))
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
