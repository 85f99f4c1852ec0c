"""Prometheus metrics of a running service (``GET /metrics``), read from each question's trace.

Names follow Prometheus conventions: the ``kbsearch_`` prefix, base units (``_seconds``), ``_total`` on
counters. Label values are bounded: ``kb`` is only ever a knowledge base that exists on disk (a question
for an unknown KB is refused before it is observed), ``mode``/``reason``/``cause``/``stage``/``kind`` are
closed sets of codes. Each service has its own registry.

One process, one registry: ``kbsearch serve`` runs a single uvicorn worker per process; scale out with
more processes (replicas), each scraped as its own target, and aggregate in PromQL with ``sum by (kb)``.
prometheus-client's multiprocess mode is not used.

- ``kbsearch_questions_total{kb, mode, answered, degraded, reason}``: questions, by the score kind that
  decided (``mode``; ``canned`` when nothing ranked) and the hand-off reason (``answered`` when answered).
- ``kbsearch_fallbacks_total{kb, cause}``: fallbacks taken, by cause; ``kbsearch_unexpected_errors_total{kb}``: bugs.
- ``kbsearch_question_duration_seconds{kb}`` and ``kbsearch_stage_duration_seconds{kb, stage}``: latency histograms.
- ``kbsearch_top1_score{kb, kind}``: the top FAQ's deciding score, buckets dense around each kind's threshold;
  ``kbsearch_top1_low_total{kb, kind}``: questions whose top-1 score fell below the kind's low line.
- ``kbsearch_questionlog_written_total``, ``kbsearch_questionlog_dropped_total{reason}`` (``queue-full``,
  ``db-error``, ``error``) and ``kbsearch_questionlog_queued``: the question log, read at scrape time.
- ``kbsearch_questions_in_flight``, ``kbsearch_questions_waiting`` and ``kbsearch_questions_refused_total{reason}``
  (``queue-full``, ``queue-timeout``): overload control, read at scrape time.
- ``kbsearch_build_info{kb, index_version, model, reranker}`` (1), ``kbsearch_index_rows{kb}``, ``kbsearch_ready``
  and ``kbsearch_model_load_seconds{component}``: read from the engine at scrape time;
  ``kbsearch_build_fallback{kb}``: 1 when a KB is not served from the build its ACTIVE pointer names (that build
  does not load, or the pointer is bad: an earlier build serves) or has no build that loads, else 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from kbsearch.config import DecideSettings, TelemetrySettings
from kbsearch.telemetry.trace import Trace

#: Latency buckets (seconds): fine around the reference ops guide's 300 ms line.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "Metrics", "score_buckets"]


def score_buckets(lines: list[float], step: float = 0.01, width: int = 5) -> tuple[float, ...]:
    """Score buckets: every 0.1 from 0 to 1, plus every ``step`` within ``width`` steps of each line
    (the thresholds and the low lines), so the distribution around them reads exactly."""
    edges = {round(i / 10, 4) for i in range(11)}
    for line in lines:
        edges.update(round(line + k * step, 4) for k in range(-width, width + 1))
    return tuple(sorted(e for e in edges if -1.0 <= e <= 1.0))


class Metrics:
    """The metrics of one service; ``observe`` is a ``QueryEngine`` observer.

    Args:
        telemetry: The ``telemetry`` group (the low lines).
        decide: The ``decide`` group (the thresholds the score buckets are dense around).
        registry: Where to register (default: a registry of its own).
    """

    def __init__(self, telemetry: TelemetrySettings, decide: DecideSettings, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.low = {"vector": telemetry.low_score_vector, "rerank": telemetry.low_score_rerank, "bm25": telemetry.low_score_bm25}
        r = self.registry
        self.questions = Counter("kbsearch_questions", "Questions answered or handed off.",
                                 ["kb", "mode", "answered", "degraded", "reason"], registry=r)
        self.fallbacks = Counter("kbsearch_fallbacks", "Fallbacks taken, by cause.", ["kb", "cause"], registry=r)
        self.unexpected = Counter("kbsearch_unexpected_errors", "Questions that hit a bug and got the canned hand-off.",
                                  ["kb"], registry=r)
        self.duration = Histogram("kbsearch_question_duration_seconds", "Whole-question latency.", ["kb"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("kbsearch_stage_duration_seconds", "Latency per stage.", ["kb", "stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        lines = [decide.threshold_vector, decide.threshold_rerank, decide.threshold_bm25, *self.low.values()]
        self.top1 = Histogram("kbsearch_top1_score", "The top FAQ's deciding score, by score kind.", ["kb", "kind"],
                              buckets=score_buckets(lines), registry=r)
        self.top1_low = Counter("kbsearch_top1_low", "Questions whose top-1 score fell below the kind's low line.",
                                ["kb", "kind"], registry=r)

    def observe(self, trace: Trace) -> None:
        """Count one finished question."""
        kb = trace.kb
        reason = str(trace.reason) if trace.reason is not None else "answered"
        self.questions.labels(kb, trace.mode or "canned", str(trace.answered).lower(), str(trace.degraded).lower(),
                              reason).inc()
        for cause, _ in trace.fallbacks:
            self.fallbacks.labels(kb, str(cause)).inc()
        if trace.unexpected is not None:
            self.unexpected.labels(kb).inc()
        if trace.total_ms is not None:
            self.duration.labels(kb).observe(trace.total_ms / 1000)
        for s in trace.spans:
            self.stage.labels(kb, s.name).observe(s.ms / 1000)
        d = trace.decision
        if d is not None and d.score_kind is not None and d.score is not None:
            self.top1.labels(kb, d.score_kind).observe(d.score)
            if d.score < self.low[d.score_kind]:
                self.top1_low.labels(kb, d.score_kind).inc()

    def watch(self, status: Callable[[], dict[str, Any]]) -> None:
        """Also export the build info, readiness and model load times from ``status()`` at each scrape."""
        self.registry.register(_Scraped(status, _status_families))

    def watch_questionlog(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Also export the question log's written, dropped (by reason) and queued records at each scrape."""
        self.registry.register(_Scraped(stats, _questionlog_families))

    def watch_admission(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Also export the questions in flight, waiting, and refused with 429 (by reason) at each scrape."""
        self.registry.register(_Scraped(stats, _admission_families))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class _Scraped(Collector):
    """Metric families built when Prometheus scrapes, from a component's current stats."""

    def __init__(self, stats: Callable[[], dict[str, Any]], families: Callable[[dict[str, Any]], Iterator[Any]]) -> None:
        self.stats, self.families = stats, families

    def collect(self) -> Iterator[Any]:
        yield from self.families(self.stats())


def _status_families(s: dict[str, Any]) -> Iterator[Any]:
    """The engine's status: build info, rows, fallback builds, readiness, model load times."""
    info = GaugeMetricFamily("kbsearch_build_info", "The build serving each KB (value 1).",
                             labels=["kb", "index_version", "model", "reranker"])
    rows = GaugeMetricFamily("kbsearch_index_rows", "Index rows of the build serving each KB.", labels=["kb"])
    fallback = GaugeMetricFamily("kbsearch_build_fallback", "1 when a KB is not served from the build ACTIVE names.",
                                 labels=["kb"])
    for kb, k in s.get("kbs", {}).items():
        fallback.add_metric([kb], 1 if k.get("fallback") or k.get("error") else 0)
        if k.get("build"):
            info.add_metric([kb, k["build"], k.get("model", ""), k.get("reranker_state", "")], 1)
            rows.add_metric([kb], k.get("rows", 0))
    yield info
    yield rows
    yield fallback
    yield GaugeMetricFamily("kbsearch_ready", "1 when /readyz says ready.", value=1 if s.get("ready") else 0)
    load = GaugeMetricFamily("kbsearch_model_load_seconds", "Seconds each model took to load.", labels=["component"])
    for name, seconds in s.get("load_seconds", {}).items():
        load.add_metric([name], seconds)
    yield load


def _labelled_counter(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in counts.items():
        family.add_metric([value], n)
    return family


def _questionlog_families(s: dict[str, Any]) -> Iterator[Any]:
    """The question log: records written, dropped by reason, queued."""
    yield CounterMetricFamily("kbsearch_questionlog_written", "Question-log records written.", value=s["written"])
    yield _labelled_counter("kbsearch_questionlog_dropped", "Question-log records dropped (queue-full, db-error, error); "
                            "the questions were answered.", "reason",
                            {r: s["dropped"].get(r, 0) for r in ("queue-full", "db-error", "error")})
    yield GaugeMetricFamily("kbsearch_questionlog_queued", "Question-log records waiting to be written.", value=s["queued"])


def _admission_families(s: dict[str, Any]) -> Iterator[Any]:
    """Overload control: questions in flight, waiting, and refused by reason."""
    yield GaugeMetricFamily("kbsearch_questions_in_flight", "Questions being answered.", value=s["in_flight"])
    yield GaugeMetricFamily("kbsearch_questions_waiting", "Questions waiting for a slot.", value=s["waiting"])
    yield _labelled_counter("kbsearch_questions_refused", "Questions answered 429 (queue full, or waited too long).",
                            "reason", s["refused"])
