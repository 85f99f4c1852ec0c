"""How ``kbsearch serve`` runs the app under uvicorn, with deadlines on reading a request.

uvicorn (measured with 0.54 and its h11 protocol) arms no timer on a connection until it has answered a request:
a connection that sends nothing, or part of a request head, or a head and part of its body, stays open for as
long as the client likes (an audit held 900 such connections open past 60 s). Its ``timeout_keep_alive`` only
starts after a response, and is cancelled by the first byte of the next request. Two deadlines close them:

- the request head (``api.header_timeout_s``): ``HeadDeadlineProtocol``, uvicorn's h11 protocol with one timer,
  armed when the connection opens and again after each response;
- the request body (``api.body_timeout_s``, ``api.body_min_rate``): ``kbsearch.api.guards.BodyDeadline``, an ASGI
  timeout on the app's reads.

uvicorn's own ``limit_concurrency`` is not used: it counts idle connections too, and past it answers 503 to
every request, probes included, instead of closing anything; so held connections would turn into 503s for
everyone, ahead of the 429 of ``Admission``.
"""

from __future__ import annotations

import asyncio
import functools

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from kbsearch.api.guards import BodyDeadline
from kbsearch.config import ApiSettings

#: The answer to a client that started a request head and did not finish it in time.
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head in time.

    The deadline runs from when the connection opens and again from the end of each response; it does nothing
    while a request is being served. A client that had started a head gets a 408 before the close; one that
    sent nothing is just closed (as uvicorn closes an idle keep-alive connection).

    Args:
        *args: As ``H11Protocol``.
        header_timeout_s: Seconds allowed for a request head.
        **kwargs: As ``H11Protocol``.
    """

    def __init__(self, *args: object, header_timeout_s: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """As uvicorn, then start waiting for the first request head."""
        super().connection_made(transport)
        self._await_head()

    def on_response_complete(self) -> None:
        """As uvicorn, then start waiting for the next request head (if the connection stays open)."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timer, then as uvicorn."""
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if serving or self.transport.is_closing():
            return  # a head came in time: the request is being served (its body has its own deadline)
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def serve(app: FastAPI, api: ApiSettings) -> None:
    """Serve ``app`` on ``api.host:api.port`` until stopped, with the read deadlines of ``api``.

    Args:
        app: The app from ``create_app``.
        api: The server's settings.
    """
    # http= pins the h11 protocol: "auto" would switch to httptools, without the head deadline, if installed.
    protocol = functools.partial(HeadDeadlineProtocol, header_timeout_s=api.header_timeout_s)
    # log_config=None: uvicorn's records go through the root logger the CLI configured (JSON lines).
    uvicorn.run(BodyDeadline(app, api.body_timeout_s, api.body_min_rate), host=api.host, port=api.port,
                http=protocol, log_config=None)  # type: ignore[arg-type]
