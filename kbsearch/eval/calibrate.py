"""``kbsearch calibrate``: choose the hand-off threshold of a KB from labelled questions.

The questions run through the KB's configured query path once; for each one we keep the deciding
score of the top result (its kind is the answer's ``mode``: rerank, vector or bm25) and whether that
result is right (out-of-scope questions, gold ``[]``, are right only when handed off). Sweeping the
threshold over the observed scores gives the precision/coverage curve; the chosen threshold is the
lowest one whose answered-precision reaches the target (default 0.90) while handing off at least a
minimum share of the out-of-scope questions (default 0.80), which is the highest coverage under both. The result is stored per KB and per score kind (``thresholds.json`` beside the builds) with
the model it was measured with, and the query path uses it in place of the global setting.

Raising the threshold is always stored (it is the safe direction: more hand-offs). Lowering it below the
one in force (the KB's calibration for this configuration, else the setting) needs at least
``MIN_IN_SCOPE_TO_LOWER`` in-scope and ``MIN_OUT_OF_SCOPE_TO_LOWER`` out-of-scope questions: on a small
sample the lowest threshold that meets the targets sits on whatever off-topic question happened to score
highest (25 questions once lowered it onto an off-topic score), so a smaller sample is refused with a
warning naming the counts unless forced.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kbsearch.config import Settings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BadInputError
from kbsearch.eval.run import EvalQuery, embed_questions, hit_ids
from kbsearch.decide.thresholds import Thresholds, write_thresholds
from kbsearch.rerank.base import RerankPlanner
from kbsearch.service.query import QueryEngine


MIN_IN_SCOPE_TO_LOWER = 100
"""In-scope (labelled with a gold FAQ) questions needed to lower a KB's threshold."""
MIN_OUT_OF_SCOPE_TO_LOWER = 20
"""Out-of-scope (gold ``[]``) questions needed to lower a KB's threshold."""


@dataclass(frozen=True)
class CurvePoint:
    """Precision and coverage if the threshold were ``threshold``."""

    threshold: float
    answered_precision: float
    coverage: float
    oos_handoff_rate: float | None


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold for one score kind, with the curve it came from.

    ``current_threshold`` is the one in force before (``current_source``: the setting or a calibration);
    ``warning`` says why a lower threshold needs more questions, ``refused`` whether it was therefore not
    stored (not forced), and ``stored`` whether ``thresholds.json`` was written.
    """

    kb: str
    score_kind: str
    target_precision: float
    min_oos_handoff: float
    margin: float
    threshold: float | None
    answered_precision: float | None
    coverage: float | None
    oos_handoff_rate: float | None
    queries: int
    in_scope: int
    out_of_scope: int
    curve: list[CurvePoint]
    model_id: str
    reranker: str
    first_stage: str
    date: str
    current_threshold: float = 0.0
    current_source: str = "setting"
    warning: str | None = None
    refused: bool = False
    stored: bool = False

    def render(self, points: int = 12) -> str:
        """The curve (a sample of points) and the decision, as text."""
        lines = [f"{self.kb}: {self.queries} questions ({self.in_scope} in scope, {self.out_of_scope} out of scope), "
                 f"score kind {self.score_kind}, target answered-precision {self.target_precision:.2f}",
                 f"{'threshold':>10}{'precision':>11}{'coverage':>10}{'OOS h/o':>9}"]
        step = max(1, len(self.curve) // points)
        for p in self.curve[::step]:
            oos = "-" if p.oos_handoff_rate is None else f"{p.oos_handoff_rate:.3f}"
            lines.append(f"{p.threshold:>10.4f}{p.answered_precision:>11.3f}{p.coverage:>10.3f}{oos:>9}")
        if self.threshold is None:
            lines.append(f"no threshold reaches precision {self.target_precision:.2f} with "
                         f"{self.min_oos_handoff:.0%} of out-of-scope questions handed off; nothing stored")
        else:
            oos = "-" if self.oos_handoff_rate is None else f"{self.oos_handoff_rate:.3f}"
            rule = f" with top-1/top-2 margin {self.margin:.3f}" if self.margin else ""
            lines.append(f"chosen threshold_{self.score_kind} = {self.threshold:.4f}{rule}: precision "
                         f"{self.answered_precision:.3f}, coverage {self.coverage:.3f}, OOS handed off {oos} "
                         f"(in force now: {self.current_threshold:.4f}, {self.current_source})")
        if self.warning:
            lines.append(f"WARNING: {self.warning}")
        if self.refused:
            lines.append("not stored: label more questions, or force it (kbsearch calibrate --force)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


def sweep(scores: np.ndarray, correct: np.ndarray, in_scope: np.ndarray) -> list[CurvePoint]:
    """Precision/coverage at every distinct score used as the threshold (answer when score >= t).

    Args:
        scores: Deciding score of each question's top result.
        correct: Whether that top result is right (never true for out-of-scope questions).
        in_scope: Whether the question has a gold answer.
    """
    n_in = int(in_scope.sum())
    n_oos = int((~in_scope).sum())
    order = np.argsort(-scores, kind="stable")
    s, c, i = scores[order], correct[order], in_scope[order]
    answered = np.arange(1, len(s) + 1)
    right = np.cumsum(c)
    in_answered = np.cumsum(i)
    oos_answered = answered - in_answered
    points = []
    # Only the last index of a run of equal scores is a reachable cut.
    last = np.r_[s[1:] != s[:-1], True]
    for k in np.flatnonzero(last):
        points.append(CurvePoint(
            threshold=float(s[k]),
            answered_precision=float(right[k] / answered[k]),
            coverage=float(in_answered[k] / n_in) if n_in else 0.0,
            oos_handoff_rate=float(1 - oos_answered[k] / n_oos) if n_oos else None,
        ))
    return points


def calibrate(settings: Settings, kb: str, queries: list[EvalQuery], embedder: Embedder, planner: RerankPlanner, *,
              target: float = 0.90, min_oos_handoff: float = 0.80, margins: tuple[float, ...] = (0.0,),
              store: bool = True, force: bool = False, min_in_scope: int = MIN_IN_SCOPE_TO_LOWER,
              min_out_of_scope: int = MIN_OUT_OF_SCOPE_TO_LOWER) -> Calibration:
    """Choose and (by default) store ``kb``'s threshold for the score kind its query path decides with.

    The threshold is the lowest (highest coverage) at which answered-precision reaches ``target`` and,
    when the questions include out-of-scope ones, at least ``min_oos_handoff`` of those are handed off.
    With several ``margins``, each is tried as a top-1/top-2 margin rule (hand off when the best two
    FAQs score closer than the margin) and the pair with the highest coverage wins.

    A threshold below the one in force is stored only from at least ``min_in_scope`` in-scope and
    ``min_out_of_scope`` out-of-scope questions, or with ``force`` (the result's ``warning`` and
    ``refused`` say so); a higher one always is.

    Raises:
        BadInputError: no queries, or the answers came from more than one score kind (e.g. a backend
            failed during the run, so some were answered from BM25).
        IndexCorruptError: the KB's active build does not load.
        KbBusyError: storing it, another writer held the KB's lock for the whole wait.
    """
    if not queries:
        raise BadInputError("no queries to calibrate with")
    if not 0 < target <= 1 or not 0 <= min_oos_handoff <= 1:
        raise BadInputError(f"target precision must be in (0, 1] and min_oos_handoff in [0, 1], "
                            f"got {target}, {min_oos_handoff}")
    engine = QueryEngine(settings, embedder, planner)
    engine.load(kb)
    engine.active_build(kb)  # a corrupt active build: exit 3, not thresholds measured on canned hand-offs
    qvecs = embed_questions(embedder, queries, settings.embed.batch_size)
    answers = [engine.ask(q.query, kb=kb, top_k=2, query_vector=v) for q, v in zip(queries, qvecs)]
    engine.close()
    kinds = {a.mode for a in answers if a.hits}
    if len(kinds) != 1:
        raise BadInputError(f"answers came from several score kinds {sorted(kinds)}: is a backend failing?")
    kind = kinds.pop()
    scores = np.array([a.decision.score if a.decision.score is not None else -np.inf for a in answers], dtype=np.float64)
    in_scope = np.array([bool(q.gold) for q in queries])
    correct = np.array([bool(a.hits) and bool(hit_ids(a.hits[0]) & set(q.gold)) for q, a in zip(queries, answers)])
    gaps = np.array([a.decision.gap if a.decision.gap is not None else np.inf for a in answers])
    best: CurvePoint | None = None
    margin, curve = 0.0, []
    for m in sorted(set(margins)):
        # A question whose best two FAQs are closer than the margin is never answered.
        m_scores = np.where(gaps >= m, scores, -np.inf) if m > 0 else scores
        m_curve = [p for p in sweep(m_scores, correct, in_scope)
                   if np.isfinite(p.threshold)]
        ok = [p for p in m_curve if p.answered_precision >= target
              and (p.oos_handoff_rate is None or p.oos_handoff_rate >= min_oos_handoff)]
        cand = min(ok, key=lambda p: p.threshold) if ok else None
        if not curve or (cand is not None and (best is None or cand.coverage > best.coverage)):
            best, margin, curve = cand, m, m_curve
    reranker = planner.model_id if kind == "rerank" else "none"
    current, _, current_source = Thresholds(settings.decide).get(settings.kb_dir(kb), kind, {
        "model_id": embedder.model_id, "first_stage": settings.retrieve.first_stage, "reranker": reranker})
    n_in, n_oos = int(in_scope.sum()), int((~in_scope).sum())
    warning = None
    if best is not None and best.threshold < current and (n_in < min_in_scope or n_oos < min_out_of_scope):
        warning = (f"threshold_{kind} {best.threshold:.4f} is below the one in force ({current:.4f}, {current_source}) "
                   f"but comes from only {n_in} in-scope and {n_oos} out-of-scope questions; lowering it needs at "
                   f"least {min_in_scope} in-scope and {min_out_of_scope} out-of-scope ones (on a small sample the "
                   "lowest threshold that meets the targets sits on the highest off-topic score that happened to be in it)")
    refused = warning is not None and not force
    result = Calibration(
        kb=kb, score_kind=kind, target_precision=target, min_oos_handoff=min_oos_handoff, margin=margin,
        threshold=best.threshold if best else None,
        answered_precision=best.answered_precision if best else None,
        coverage=best.coverage if best else None, oos_handoff_rate=best.oos_handoff_rate if best else None,
        queries=len(queries), in_scope=n_in, out_of_scope=n_oos,
        curve=curve, model_id=embedder.model_id, reranker=reranker,
        first_stage=settings.retrieve.first_stage, date=dt.date.today().isoformat(),
        current_threshold=current, current_source=current_source, warning=warning, refused=refused,
        stored=store and best is not None and not refused,
    )
    if result.stored and best is not None:
        write_thresholds(settings.kb_dir(kb), {kind: {
            "threshold": best.threshold, "margin": margin, "model_id": result.model_id, "reranker": result.reranker,
            "first_stage": result.first_stage, "target_precision": target, "min_oos_handoff": min_oos_handoff,
            "answered_precision": best.answered_precision, "coverage": best.coverage,
            "oos_handoff_rate": best.oos_handoff_rate, "queries": len(queries), "date": result.date,
        }}, lock_timeout_s=settings.index.lock_timeout_s)
    return result
