"""Calls to a model server over HTTP (sglang, vLLM, TEI, Infinity): the one client the remote embedding and
rerank backends share.

``ModelServerClient`` keeps a pooled ``httpx.Client`` (keep-alive connections reused across questions and
threads), sends JSON with an optional bearer token, retries what a retry can fix (a 429 or 5xx answer, a
refused or cut connection, a timeout) a bounded number of times with exponential backoff that honours
``Retry-After``, and maps every failure to :class:`~kbsearch.errors.BackendError`, so the query path falls
back (to BM25, or to the first stage's order) exactly as it does when a local model fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kbsearch.errors import BackendError, BadInputError, MissingDependencyError

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.2
"""The first retry waits this long; each later one twice the one before."""
BACKOFF_MAX_S = 10.0
"""No wait between tries is longer than this, ``Retry-After`` included."""
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers worth another try: the server is busy, restarting or behind a proxy that lost it."""
POOL_CONNECTIONS = 32
"""Most connections kept open to one server (one per concurrent call; more wait for one)."""


def check_base_url(url: str, setting: str) -> str:
    """``url`` without a trailing slash.

    Raises:
        BadInputError: ``url`` is empty or not an ``http(s)://`` URL (names ``setting``).
    """
    url = (url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise BadInputError(f"{setting} must be the model server's http(s):// URL, got {url!r}")
    return url


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (its delay-seconds form; an HTTP date is ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class ModelServerClient:
    """POSTs JSON to one model server and returns its JSON answer, retrying what a retry can fix.

    Args:
        base_url: The server's API root (``http://host:30000/v1``); paths are appended to it.
        api_key: Bearer token (empty: no ``Authorization`` header).
        timeout_s: Each try's connect, read, write and pool timeout.
        max_retries: Tries after the first one.
        what: How errors name the server's role (``embedding server``, ``rerank server``).
        sleep: Waits between tries (tests pass a recorder).
        transport: An ``httpx`` transport to use instead of the network (tests).

    Raises:
        BadInputError: ``base_url`` is not an http(s) URL, or a limit is out of range.
    """

    def __init__(self, base_url: str, *, api_key: str = "", timeout_s: float = 30.0, max_retries: int = 3,
                 what: str = "model server", sleep: Callable[[float], None] = time.sleep,
                 transport: Any = None) -> None:
        if timeout_s <= 0:
            raise BadInputError(f"timeout_s must be positive, got {timeout_s}")
        if max_retries < 0:
            raise BadInputError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = check_base_url(base_url, f"the {what}'s base_url")
        self.timeout_s, self.max_retries, self.what = timeout_s, max_retries, what
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._sleep, self._transport = sleep, transport
        self._client: Any = None
        self._lock = threading.Lock()

    def _http(self) -> Any:
        """The pooled client, made on first use (httpx is imported here, not at package import)."""
        with self._lock:
            if self._client is None:
                try:
                    import httpx
                except ImportError as exc:
                    raise MissingDependencyError("remote model backends need `pip install httpx`") from exc
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s), headers=self._headers, transport=self._transport,
                    limits=httpx.Limits(max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS))
            return self._client

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        """POST ``payload`` to ``base_url + path`` and return the decoded JSON answer.

        Raises:
            BackendError: the server could not be reached, answered an error (after the retries, for the ones
                worth retrying), or answered something that is not JSON.
        """
        import httpx

        client, url = self._http(), self.base_url + path
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            wait = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** attempt)
            try:
                response = client.post(url, json=payload)
            except httpx.TransportError as exc:  # refused, reset, timed out: the server may be restarting
                problem = f"{type(exc).__name__}: {exc}"
                if last:
                    raise BackendError(f"{self.what} at {url} failed after {attempt + 1} tries: {problem}") from exc
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise BackendError(f"{self.what} at {url} answered non-JSON: {response.text[:200]!r}") from exc
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRY_STATUSES or last:
                    raise BackendError(f"{self.what} at {url} answered {problem}"
                                       + (f" (after {attempt + 1} tries)" if attempt else ""))
                wait = min(BACKOFF_MAX_S, _retry_after(response.headers.get("retry-after")) or wait)
            log.warning("%s at %s: %s; try %d of %d in %.1f s", self.what, url, problem, attempt + 2,
                        self.max_retries + 1, wait)
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
