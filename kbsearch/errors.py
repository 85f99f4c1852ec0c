"""One root exception, a few categories, and the table from category to exit code and HTTP status.

Third-party errors (faiss, torch, file system) are mapped to these at the boundary of the module that
calls them, so the service and the CLI only ever see ``KbsearchError`` subclasses.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from kbsearch.codes import FallbackCause


class KbsearchError(Exception):
    """Root of every error kbsearch raises on purpose."""

    exit_code: int = 1
    http_status: int = 500


class BadInputError(KbsearchError):
    """The caller's input (a file, a row, a field, a request) is wrong; the message names it."""

    exit_code = 2
    http_status = 422


class NotFoundError(KbsearchError):
    """A named thing (knowledge base, build, model path) does not exist."""

    exit_code = 4
    http_status = 404


class IndexCorruptError(KbsearchError):
    """A build on disk is missing files or fails its checksums."""

    exit_code = 3
    http_status = 503


def cause_of(exc: KbsearchError, default: FallbackCause) -> FallbackCause:
    """The fallback cause ``exc`` carries, or ``default`` when it carries none (the catching stage knows it)."""
    cause = getattr(exc, "cause", None)
    return cause if cause is not None else default


class BackendError(KbsearchError):
    """A backend (model, index, reranker) failed while serving; the query path falls back.

    Args:
        message: What failed, for people.
        cause: The fallback code it is counted under (None: the stage that catches it decides).
    """

    exit_code = 5
    http_status = 503

    def __init__(self, message: str, cause: FallbackCause | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class NotReadyError(KbsearchError):
    """The service has not loaded what it needs yet."""

    exit_code = 6
    http_status = 503


class MissingDependencyError(KbsearchError):
    """An optional dependency is needed for the configured backend but is not installed."""

    exit_code = 7
    http_status = 503


class BusyError(KbsearchError):
    """Too much is in flight (the question queue is full, or a question waited too long for a slot), or another
    writer holds the knowledge base: try again later (HTTP 429 with ``Retry-After``)."""

    exit_code = 8
    http_status = 429


class KbBusyError(BusyError):
    """Another writer (an ingest, rebuild, publish, reranker training or rollback) holds the knowledge base's lock.

    Args:
        kb: The knowledge base.
        pid: The holder's process id, when its lock file says.
        purpose: What the holder is doing, when its lock file says.
        waited_s: How long this writer waited.
    """

    def __init__(self, kb: str, pid: int | None, purpose: str, waited_s: float) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"knowledge base {kb!r} is busy: {who} ({purpose or 'a writer'}) holds its writer lock; "
                         f"waited {waited_s:g} s, try again when it is done")
        self.kb, self.pid = kb, pid


T = TypeVar("T")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])(?:/[^\s'\"`:,;()\[\]{}<>/]+)+")


def without_paths(value: T) -> T:
    """``value`` (a text, or a JSON-like tree of them) with every absolute file-system path shortened to
    ``…/<last part>``.

    For what the API returns (readiness, build details, error details): library messages (a model that failed
    to load, a file that is unreadable) and model ids (a local model folder) name absolute paths, which tell a
    caller how the server's disk is laid out.
    """
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(0).rsplit("/", 1)[-1], value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [without_paths(v) for v in value]  # type: ignore[return-value]
    return value
