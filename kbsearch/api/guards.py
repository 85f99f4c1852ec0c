"""What stands between the network and the query path: body limits, overload control and error shapes.

- ``BodyLimit`` (pure ASGI middleware) answers 413 to a body over ``api.max_body_bytes`` before it is read
  into memory, whether the client sent ``Content-Length`` or chunked it; a few routes (the dashboard's
  label upload) have their own, larger limit.
- ``BodyDeadline`` (pure ASGI middleware) answers 408 to a body that stops arriving: it gets ``api.body_timeout_s``
  after its head, plus a second for every ``api.body_min_rate`` bytes that arrive, so a slow upload that keeps
  going is served and one that stalls or trickles is not. ``kbsearch serve`` wraps the app in it
  (``kbsearch.api.server``), next to the deadline on the request head.
- ``Admission`` bounds the questions in flight and the queue in front of them: past the queue ``/ask``
  answers 429 with ``Retry-After`` at once, and a question that waited longer than ``queue_timeout_s``
  for a slot gets 429 instead of a late answer. Probes (``/healthz``, ``/readyz``, ``/metrics``) are
  served on the event loop and never queue behind questions.
- The error handlers: a request that fails validation gets a 422 listing each error's location, type and
  message, never the input (it may hold lone surrogates, NaN or a 100 MB string: echoing it failed to
  encode and answered 500), and any unexpected exception becomes a JSON 500 without a stack trace or a
  path. Every error body has one shape: ``{"detail", "error"}`` (plus ``errors`` on a 422).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kbsearch.errors import BusyError

log = logging.getLogger(__name__)

#: Longest text kept from a validation message or location (they can carry a key the client sent).
MAX_ERROR_TEXT = 200


def _safe(text: object) -> str:
    """A JSON-encodable, bounded rendering of ``text`` (lone surrogates replaced)."""
    s = str(text)[:MAX_ERROR_TEXT]
    return s.encode("utf-8", "replace").decode("utf-8")


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Each validation error as ``{"loc", "type", "msg"}``: no ``input``, no ``ctx``, every text bounded and encodable."""
    out = []
    for err in exc.errors()[:20]:
        loc = [x if isinstance(x, int) else _safe(x) for x in err.get("loc", ())][:10]
        out.append({"loc": loc, "type": _safe(err.get("type", "")), "msg": _safe(err.get("msg", ""))})
    return out


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with the fields at fault; the input itself is never echoed."""
    errors = validation_errors(exc)
    where = ", ".join(".".join(str(x) for x in e["loc"]) for e in errors[:5])
    return JSONResponse(status_code=422, content={"detail": errors, "error": "BadInput", "fields": where})


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """An HTTP error (401, 404, 405, a body that is not JSON, ...) in the one error shape."""
    name = HTTPStatus(exc.status_code).phrase.replace(" ", "") if exc.status_code in HTTPStatus._value2member_map_ else "Error"
    return JSONResponse(status_code=exc.status_code, content={"detail": _safe(exc.detail), "error": name},
                        headers=getattr(exc, "headers", None))


async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its stack; the client gets a JSON 500 without either."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "internal error", "error": "InternalError"})


class BodyLimit:
    """Pure ASGI middleware: 413 for a body larger than the limit of its path, checked as it streams in.

    Args:
        app: The wrapped application.
        default: The limit in bytes.
        per_path: Larger (or smaller) limits for exact paths.
    """

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, int] | None = None) -> None:
        self.app, self.default, self.per_path = app, default, per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _Refusal(send).answer(413, f"the request body is larger than {limit} bytes", "TooLarge")
            return
        refusal = _Refusal(send)
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            if refusal.done:
                return _DISCONNECT
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    return await refusal.answer(413, f"the request body is larger than {limit} bytes", "TooLarge")
            return message

        await self.app(scope, counting_receive, refusal.send)


class PathHeaders:
    """Pure ASGI middleware: ``headers`` added to every response under ``prefix`` (the dashboard's security headers).

    Replaces an ``@app.middleware("http")`` function, which runs every request (``/ask`` included) through
    Starlette's ``BaseHTTPMiddleware`` and its task group even when the path is not its own.

    Args:
        app: The wrapped application.
        prefix: The paths concerned.
        headers: The headers to set (replacing the response's own of the same name).
    """

    def __init__(self, app: ASGIApp, prefix: str, headers: dict[str, str]) -> None:
        self.app, self.prefix, self.headers = app, prefix, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(self.headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyDeadline:
    """Pure ASGI middleware: 408 for a request body that does not arrive in time, checked as it streams in.

    The body has ``timeout_s`` from the moment its head arrived, plus one second for every ``min_rate`` bytes
    received so far: an upload that keeps going at ``min_rate`` or faster always finishes, one that stalls (a
    half-open connection) or trickles is answered 408 and its connection closed, within
    ``timeout_s + max body / min_rate`` at most. Once the body is complete, reads pass through untimed (they
    only wait for the client to go away).

    Args:
        app: The wrapped application.
        timeout_s: Seconds a body gets, before any of it arrived.
        min_rate: Bytes per second of body that earn one more second.
    """

    def __init__(self, app: ASGIApp, timeout_s: float, min_rate: int) -> None:
        if timeout_s <= 0 or min_rate <= 0:
            raise ValueError(f"timeout_s and min_rate must be positive, not {timeout_s!r} and {min_rate!r}")
        self.app, self.timeout_s, self.min_rate = app, timeout_s, min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        refusal = _Refusal(send)
        seen = 0
        complete = False

        async def timed_receive() -> Message:
            nonlocal seen, complete
            if refusal.done:
                return _DISCONNECT
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(started + self.timeout_s + seen / self.min_rate):
                    message = await receive()
            except TimeoutError:
                return await refusal.answer(408, f"the request body did not arrive in time ({seen} bytes came)",
                                            "RequestTimeout")
            seen += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, refusal.send)


_DISCONNECT: Message = {"type": "http.disconnect"}


class _Refusal:
    """One request's refusal by a body guard: the error answered once in place of the app's response.

    After it, the app is told the client went away and whatever it still sends is dropped.

    Args:
        send: The server's ``send``.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self.done = False
        self.response_started = False

    async def answer(self, status: int, detail: str, error: str) -> Message:
        """Send ``status`` with ``{"detail", "error"}`` and ``Connection: close``; returns the disconnect for the app.

        The error is sent only if the app had not started its own response (then the server just closes).
        """
        self.done = True
        if not self.response_started:
            body = JSONResponse(status_code=status, content={"detail": detail, "error": error}).body
            await self._send({"type": "http.response.start", "status": status,
                              "headers": [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await self._send({"type": "http.response.body", "body": body})
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        """The app's ``send``: passed on until the refusal, dropped after it."""
        if not self.done:
            self.response_started = True
            await self._send(message)


class Admission:
    """At most ``max_in_flight`` questions at once and ``max_queue`` waiting; the rest are refused at once.

    Args:
        max_in_flight: Questions answered concurrently.
        max_queue: Questions allowed to wait for a slot.
        queue_timeout_s: The longest a question waits before it is refused.
    """

    def __init__(self, max_in_flight: int, max_queue: int, queue_timeout_s: float) -> None:
        self.max_in_flight, self.max_queue, self.queue_timeout_s = max_in_flight, max_queue, queue_timeout_s
        self._slots: asyncio.Semaphore | None = None  # made on the server's event loop
        self.waiting = 0
        self.in_flight = 0
        self.refused = {"queue-full": 0, "queue-timeout": 0}

    async def run(self, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work`` in a slot, waiting in the queue if there is room.

        Raises:
            BusyError: the queue is full, or no slot freed up within ``queue_timeout_s``.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        if self._slots.locked() and self.waiting >= self.max_queue:
            self.refused["queue-full"] += 1
            raise BusyError(f"{self.in_flight} questions in flight and {self.waiting} waiting: try again shortly")
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout_s)
        except TimeoutError:
            self.refused["queue-timeout"] += 1
            raise BusyError(f"no free slot within {self.queue_timeout_s:g} s: try again shortly") from None
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            return await work()
        finally:
            self.in_flight -= 1
            self._slots.release()

    def stats(self) -> dict[str, Any]:
        """In flight, waiting, and refusals by reason (for ``/metrics``)."""
        return {"in_flight": self.in_flight, "waiting": self.waiting, "refused": dict(self.refused)}
