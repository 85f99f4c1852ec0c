"""Telemetry stage: one trace per question, and what reads it.

``trace.Trace`` records a span per stage (name, duration, outcome, code, candidate count), the fallbacks,
the notes and the decision; it is the single source of the response's ``timings_ms`` and ``explain``
(``explain.render``), of the Prometheus metrics (``metrics.Metrics``) and of the per-question JSON log
line (``logs``).
"""

from kbsearch.telemetry.trace import Span, Trace, new_request_id

__all__ = ["Span", "Trace", "new_request_id"]
