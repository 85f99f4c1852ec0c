"""Structured logs: JSON lines on stderr (python-json-logger), and one line per question from its trace.

The per-question line carries the request id, KB, mode, whether it was answered, the hand-off reason, the
fallback causes and the latency per stage. The question text is left out unless
``telemetry.log_questions`` is on: questions may carry personal data (phone, card and ID numbers).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

from kbsearch.config import TelemetrySettings
from kbsearch.telemetry.trace import Trace

QUESTION_LOGGER = "kbsearch.question"


def configure_logging(settings: TelemetrySettings) -> None:
    """Send every log record (kbsearch's, uvicorn's) to stderr, as JSON lines or plain text, at ``log_level``."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def question_logger(settings: TelemetrySettings) -> Callable[[Trace], None]:
    """A ``QueryEngine`` observer that writes one INFO line per question to the ``kbsearch.question`` logger."""
    log = logging.getLogger(QUESTION_LOGGER)

    def observe(trace: Trace) -> None:
        fields = question_fields(trace)
        if settings.log_questions:
            fields["question"] = trace.question
        log.info("question", extra=fields)

    return observe


def question_fields(trace: Trace) -> dict[str, object]:
    """The structured fields of one finished question (no question text)."""
    timings = trace.timings_ms()
    return {"request_id": trace.request_id, "kb": trace.kb, "mode": trace.mode, "answered": trace.answered,
            "degraded": trace.degraded, "reason": trace.reason, "causes": [str(c) for c, _ in trace.fallbacks],
            "unexpected": trace.unexpected, "index_version": trace.index_version,
            "latency_ms": timings.pop("total", None), "stages_ms": timings}
