"""The codes a question's outcome is reported with: why it was handed off, and why a fallback ran.

One vocabulary for the response (``handoff.code``), the trace, the Prometheus labels, the log line and
the question log. Human-readable notes are built from these codes plus a detail, never the other way
round. Both enums are closed sets, so they are safe as metric label values.
"""

from __future__ import annotations

from enum import StrEnum


class HandoffReason(StrEnum):
    """Why a question goes to a human agent."""

    BELOW_THRESHOLD = "below-threshold"
    """The deciding score of the top FAQ is below its kind's threshold."""
    AMBIGUOUS = "ambiguous"
    """The best two FAQs score closer than the calibrated margin."""
    NO_CANDIDATES = "no-candidates"
    """The first stage found no FAQ at all."""
    ALL_EXPIRED = "all-expired"
    """The first stage found FAQs, but none is valid today."""
    BACKEND_FAILURE = "backend-failure"
    """Neither the vector path nor BM25 could answer: the canned hand-off."""
    INDEX_UNAVAILABLE = "index-unavailable"
    """The KB's active build cannot be read: the canned hand-off."""
    INTERNAL_ERROR = "internal-error"
    """A bug (an unexpected exception): the canned hand-off; logged with its stack and counted."""
    HUMAN_REQUESTED = "human-requested"
    """The user asked for a person (转人工, speak to a human): one of the KB's hand-off rules matched."""


class FallbackCause(StrEnum):
    """Why a stage did not run normally and the question took the next step of the fallback chain."""

    EMBEDDER_NOT_LOADED = "embedder-not-loaded"
    EMBED_TIMEOUT = "embed-timeout"
    EMBED_ERROR = "embed-error"
    VECTOR_TIMEOUT = "vector-timeout"
    VECTOR_BUSY = "vector-busy"
    """Every vector worker stayed busy (a slow or hung model) longer than ``retrieve.vector_queue_timeout_s``."""
    CIRCUIT_OPEN = "circuit-open"
    """The vector path failed too often in a row: questions go straight to BM25 until a probe succeeds."""
    VECTOR_ERROR = "vector-error"
    INDEX_MISSING = "index-missing"
    INDEX_CORRUPT = "index-corrupt"
    MODEL_MISMATCH = "model-mismatch"
    BM25_MISSING = "bm25-missing"
    BM25_ERROR = "bm25-error"
    RERANKER_NOT_LOADED = "reranker-not-loaded"
    RERANKER_ERROR = "reranker-error"


#: The hand-offs that are the canned message (no ranking happened), as opposed to a decision on scores.
CANNED = frozenset({HandoffReason.BACKEND_FAILURE, HandoffReason.INDEX_UNAVAILABLE, HandoffReason.INTERNAL_ERROR})
