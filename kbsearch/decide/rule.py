"""The decision rule: the top FAQ's deciding score against its kind's threshold, then the margin rule.

Pure: candidates, a score kind and the threshold in, a ``Decision`` with a reason code out. The hand-off
reasons are ``no-candidates`` / ``all-expired`` (nothing to rank), ``below-threshold`` and ``ambiguous``
(the best two FAQs closer than a calibrated margin).
"""

from __future__ import annotations

from collections.abc import Sequence

from kbsearch.codes import HandoffReason
from kbsearch.types import Candidate, Decision, ScoreKind


def decide(cands: Sequence[Candidate], kind: ScoreKind, threshold: float, margin: float = 0.0,
           source: str = "setting", found: int = 0) -> Decision:
    """Answer with ``cands[0]`` or hand off, and why.

    Args:
        cands: Ranked candidates (the final order).
        kind: The score kind that decides (``rerank``, ``vector`` or ``bm25``).
        threshold: The top FAQ's ``kind`` score must reach this.
        margin: With more than 0, the top two FAQs' ``kind`` scores must differ by at least this.
        source: Where the threshold came from (reported).
        found: FAQs the first stage found before dropping those not valid today (tells an empty list
            of expired FAQs from no find at all).
    """
    score = cands[0].score_of(kind) if cands else None
    gap = cands[0].score_of(kind) - cands[1].score_of(kind) if len(cands) > 1 else None
    reason: HandoffReason | None = None
    if score is None:
        if found:
            reason, rule = HandoffReason.ALL_EXPIRED, f"all-expired: {found} FAQs found, none valid today"
        else:
            reason, rule = HandoffReason.NO_CANDIDATES, "no-candidates: the first stage found no FAQ"
    elif score < threshold:
        reason, rule = HandoffReason.BELOW_THRESHOLD, f"below-threshold: {kind} score {score:.3f} < threshold_{kind} {threshold:.3f}"
    elif margin > 0 and gap is not None and gap < margin:
        reason, rule = HandoffReason.AMBIGUOUS, f"ambiguous: top-1/top-2 {kind} margin {gap:.3f} < calibrated margin {margin:.3f}"
    else:
        rule = "answered"
    return Decision(score_kind=kind, score=score, gap=gap, threshold=threshold, margin=margin, threshold_source=source,
                    reason=reason, rule=rule)


def canned(reason: HandoffReason, detail: str) -> Decision:
    """The decision of a question nothing could rank (backends down, index unreadable, a bug)."""
    return Decision(score_kind=None, score=None, gap=None, threshold=None, margin=0.0, threshold_source="",
                    reason=reason, rule=f"{reason}: {detail}" if detail else str(reason))
