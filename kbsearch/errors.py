"""One root exception, a few categories, and the table from category to exit code and HTTP status.

Third-party errors (faiss, torch, file system) are mapped to these at the boundary of the module that
calls them, so the service and the CLI only ever see ``KbsearchError`` subclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
