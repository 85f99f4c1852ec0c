"""One writer per knowledge base: an exclusive ``fcntl.flock`` on ``<kb>/.lock``, and the cleanup it allows.

Everything that writes a KB runs holding this lock: ``kbsearch ingest`` and ``rebuild-index`` (for the
whole command), a review publish, training the KB's reranker, a rollback, storing calibrated thresholds
(``thresholds.json``), and ``store.write_build`` / ``swap_active`` themselves. A second writer, in
another process or another thread, waits up to a timeout and then fails with ``KbBusyError`` naming the
KB and the holder's pid (each holder writes its pid and purpose into the lock file). The kernel drops a
flock when its holder dies, even by ``kill -9``, so a killed writer never blocks the next one; and the
next writer, once it holds the lock, removes what a killed one left behind (``LEFTOVERS``): under the
lock nobody else can be writing them. The lock is re-entrant within a thread, so an ingest holding it can
call the build writer, which takes it again for free. Readers (the server, ``kbsearch ask``) never take
it: they read complete builds through ``ACTIVE``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from kbsearch.config import Settings
from kbsearch.errors import KbBusyError, NotFoundError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
"""The lock file in each KB directory (never deleted: deleting a lock file lets two writers lock two files)."""

LOCK_TIMEOUT_S = 60.0
"""How long a second writer waits for the lock before ``KbBusyError`` when no setting is given (``index.lock_timeout_s``)."""

POLL_S = 0.1
"""How often a waiting writer tries the lock again."""

LEFTOVERS = ("builds/.tmp-*", ".ACTIVE.*")
"""What a killed writer can leave in a KB directory (a half-written build, a temp ``ACTIVE`` pointer), as
globs relative to it; removed by the next writer once it holds the lock."""

_held: set[tuple[str, int]] = set()  # (resolved KB dir, thread id) of the locks this process holds


@contextmanager
def writer_lock(kb_dir: Path, purpose: str, *, timeout_s: float | None = None,
                create: bool = False) -> Iterator[None]:
    """Hold ``kb_dir``'s writer lock for the ``with`` block (re-entrant within a thread).

    Args:
        kb_dir: The KB's directory.
        purpose: What the holder does (``kbsearch ingest``, ``review publish``...), shown to a writer that waits.
        timeout_s: How long to wait for another holder (default ``LOCK_TIMEOUT_S``); 0 = fail at once.
        create: Create ``kb_dir`` when missing (a first ingest); otherwise a missing KB is an error.

    Raises:
        KbBusyError: another writer held the lock for all of ``timeout_s``.
        NotFoundError: ``kb_dir`` does not exist and ``create`` is False.
    """
    kb_dir = Path(kb_dir)
    if create:
        kb_dir.mkdir(parents=True, exist_ok=True)
    elif not kb_dir.is_dir():
        raise NotFoundError(f"unknown knowledge base {kb_dir.name!r}")
    key = (str(kb_dir.resolve()), threading.get_ident())
    if key in _held:  # this thread already writes the KB: the outer block releases
        yield
        return
    fd = os.open(kb_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, kb_dir.name, LOCK_TIMEOUT_S if timeout_s is None else timeout_s)
        _write_holder(fd, purpose)
        _held.add(key)
        clean_leftovers(kb_dir)
        yield
    finally:
        _held.discard(key)
        os.close(fd)  # closing the only descriptor releases the flock


def kb_writer(settings: Settings, kb: str, purpose: str, *, create: bool = False) -> AbstractContextManager[None]:
    """``writer_lock`` on the KB ``kb`` under ``settings.home``, waiting up to ``index.lock_timeout_s``.

    Raises:
        BadInputError: ``kb`` is not a valid name. See ``writer_lock`` for the rest.
    """
    return writer_lock(settings.kb_dir(kb), purpose, create=create, timeout_s=settings.index.lock_timeout_s)


def clean_leftovers(kb_dir: Path) -> list[str]:
    """Remove ``LEFTOVERS`` from ``kb_dir`` and return their relative names. Call only holding the lock."""
    removed = []
    for pattern in LEFTOVERS:
        for path in sorted(kb_dir.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(kb_dir)))
    if removed:
        log.warning("knowledge base %r: removed what an interrupted writer left: %s", kb_dir.name, removed)
    return removed


def _acquire(fd: int, kb: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    warned = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        other = _parse_holder(os.pread(fd, 4096, 0))
        if time.monotonic() >= deadline:
            raise KbBusyError(kb, other.get("pid"), other.get("purpose", ""), timeout_s)
        if not warned:
            log.warning("knowledge base %r is being written by pid %s (%s); waiting up to %g s",
                        kb, other.get("pid", "?"), other.get("purpose", "?"), timeout_s)
            warned = True
        time.sleep(POLL_S)


def _write_holder(fd: int, purpose: str) -> None:
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data = json.dumps({"pid": os.getpid(), "purpose": purpose, "since": now}).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _parse_holder(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except ValueError:  # empty (being rewritten) or not ours
        return {}
    return value if isinstance(value, dict) else {}
