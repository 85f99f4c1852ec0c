"""Writes that survive a crash or a power cut: fsync the data, then the directory entry that names it.

``os.replace`` is atomic but not durable: after a power cut the rename can be on disk while the renamed
file's data is not, or the other way round. A build is therefore fsynced file by file and as a folder
before it is renamed into place, and the folder holding a renamed entry is fsynced after the rename;
``write_text_atomic`` does the same for one small file (the ``ACTIVE`` pointer, ``thresholds.json``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush one file's or one directory's contents (for a directory: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, then each directory (deepest first), so the tree is on disk as written."""
    dirs: list[Path] = []
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        dirs.append(Path(root))
    for d in reversed(dirs):
        fsync_path(d)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably: a temp file ``.<name>.<random>`` beside it,
    fsynced, renamed over ``path``, then the folder fsynced. Readers see the old or the new text, never
    a mix; a crash leaves at most the temp file (a writer's leftover, see ``kbsearch.index.lock``)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed
    fsync_path(path.parent)
