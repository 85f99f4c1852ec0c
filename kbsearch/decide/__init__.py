"""Decide stage: answer with the top FAQ or hand off to a human, with a reason code.

``rule.decide`` compares the top FAQ's deciding score with its kind's threshold (``rerank``, ``vector``
or ``bm25``: each kind has its own, because their scales differ) and applies a calibrated top-1/top-2
margin; ``thresholds.Thresholds`` picks the global setting or the KB's calibration (``kbsearch calibrate``)
when it was measured with the configuration now serving; ``handoff`` words what the user is told.
"""

from kbsearch.decide.handoff import handoff_for, language_of
from kbsearch.decide.rule import canned, decide
from kbsearch.decide.thresholds import Thresholds, read_thresholds, write_thresholds

__all__ = ["Thresholds", "canned", "decide", "handoff_for", "language_of", "read_thresholds", "write_thresholds"]
