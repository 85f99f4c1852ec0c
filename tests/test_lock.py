"""One writer per KB, with real processes contending: a second writer waits, then fails naming the KB and the
holder's pid; two processes publishing at once lose nothing; a writer killed with SIGKILL leaves the last good
build served, releases the lock, and its leftovers are cleaned by the next writer."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest

from kbsearch.cli import main
from kbsearch.config import Settings
from kbsearch.embed.fake import HashEmbedder
from kbsearch.errors import KbBusyError
from kbsearch.index.builder import build_index
from kbsearch.index.incremental import BuildChanges, publish_changes
from kbsearch.index.lock import writer_lock
from kbsearch.index.store import active_build_id, load_build
from support import SMALL_KB, one_chunk

SPAWN = mp.get_context("spawn")  # a fresh interpreter: nothing inherited, no lock shared by a forked descriptor


def _settings(home: Path) -> Settings:
    return Settings(home=home, embed={"backend": "hash"}, index={"backend": "numpy"}, rerank={"backend": "none"})


def _build(home: Path, kb: str = "shop") -> str:
    entries = SMALL_KB[:4]
    return build_index(_settings(home), kb, entries, [one_chunk(e) for e in entries], HashEmbedder(dim=64), {}).build_id


# -- what the other processes run (module level: spawn imports them) ------------------------------------------
def _hold(kb_dir: Path, purpose: str, ready, release) -> None:
    with writer_lock(kb_dir, purpose):
        ready.set()
        release.wait(60)


def _publish_variants(home: Path, worker: int, n: int, start) -> None:
    start.wait(60)
    for i in range(n):
        publish_changes(_settings(home), "shop", HashEmbedder(dim=64),
                        BuildChanges(add_variants={"ret-1": [f"worker {worker} variant {i}"]}))


def _write_and_hang(home: Path, writing) -> None:
    from kbsearch.lexical.bm25 import BM25Index

    def hang(self, path):  # the build is half written: entries, rows and vectors are there, BM25 is not
        writing.set()
        time.sleep(600)

    BM25Index.save = hang
    _build(home)


def _holder(kb_dir: Path, purpose: str = "kbsearch ingest"):
    ready, release = SPAWN.Event(), SPAWN.Event()
    proc = SPAWN.Process(target=_hold, args=(kb_dir, purpose, ready, release))
    proc.start()
    assert ready.wait(60), "the holder never took the lock"
    return proc, release


# -- tests ----------------------------------------------------------------------------------------------------
def test_a_second_writer_waits_then_fails_naming_the_kb_and_the_holder(tmp_path):
    kb_dir = tmp_path / "shop"
    kb_dir.mkdir()
    proc, release = _holder(kb_dir)
    try:
        started = time.monotonic()
        with pytest.raises(KbBusyError) as caught:
            with writer_lock(kb_dir, "second", timeout_s=0.5):
                pass
        waited = time.monotonic() - started
    finally:
        release.set()
        proc.join(30)
    message = str(caught.value)
    assert 0.5 <= waited < 5
    assert "'shop'" in message and f"pid {proc.pid}" in message and "kbsearch ingest" in message
    assert caught.value.pid == proc.pid and caught.value.exit_code == 8 and str(tmp_path) not in message
    with writer_lock(kb_dir, "after", timeout_s=0):  # released with its holder
        pass


def test_a_second_writer_proceeds_once_the_first_is_done(tmp_path):
    kb_dir = tmp_path / "shop"
    kb_dir.mkdir()
    proc, release = _holder(kb_dir)
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    with writer_lock(kb_dir, "second", timeout_s=30):
        waited = time.monotonic() - started
    proc.join(30)
    assert 0.3 <= waited < 30 and proc.exitcode == 0


def test_the_lock_is_reentrant_in_a_thread_and_exclusive_between_threads(tmp_path):
    kb_dir = tmp_path / "shop"
    kb_dir.mkdir()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with writer_lock(kb_dir, "thread", timeout_s=0.2):
                pass
        except KbBusyError as exc:
            errors.append(exc)

    with writer_lock(kb_dir, "outer", timeout_s=0):
        with writer_lock(kb_dir, "inner", timeout_s=0):  # e.g. an ingest calling write_build
            t = threading.Thread(target=other_thread)
            t.start()
            t.join()
    assert len(errors) == 1 and "'shop' is busy" in str(errors[0])


def test_two_processes_publishing_at_once_lose_no_update(tmp_path):
    """The read-modify-write of a publish (read the active build, add a variant, write a new build) runs in
    two processes at once; without the lock one would publish over the other's build and drop its variants."""
    home, n = tmp_path / "home", 4
    _build(home)
    start = SPAWN.Event()
    procs = [SPAWN.Process(target=_publish_variants, args=(home, w, n, start)) for w in (1, 2)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    variants = load_build(home / "shop").entries["ret-1"].variants
    assert {f"worker {w} variant {i}" for w in (1, 2) for i in range(n)} <= set(variants)


def test_a_writer_killed_mid_build_leaves_the_last_good_build_and_the_next_writer_cleans_up(tmp_path):
    home = tmp_path / "home"
    good = _build(home)
    writing = SPAWN.Event()
    proc = SPAWN.Process(target=_write_and_hang, args=(home, writing))
    proc.start()
    assert writing.wait(60)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.join(30)
    kb_dir = home / "shop"
    assert [p.name for p in (kb_dir / "builds").iterdir() if p.name.startswith(".tmp-")]  # half written
    assert active_build_id(kb_dir) == good and load_build(kb_dir).build_id == good
    newer = _build(home)  # the kernel dropped the lock with its holder: no wait
    assert active_build_id(kb_dir) == newer != good
    assert not [p.name for p in (kb_dir / "builds").iterdir() if p.name.startswith(".")]


def test_the_cli_exits_8_while_another_process_writes_the_kb(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    _build(home)
    monkeypatch.setenv("KBSEARCH_HOME", str(home))
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_RERANK__BACKEND", "none")
    monkeypatch.setenv("KBSEARCH_INDEX__LOCK_TIMEOUT_S", "0.3")
    kb_file = tmp_path / "kb.jsonl"
    kb_file.write_text('{"id": "a1", "question": "如何申请退货？", "answer": "在订单详情页申请退货。"}\n', encoding="utf-8")
    before = active_build_id(home / "shop")
    proc, release = _holder(home / "shop", "review publish")
    try:
        for argv in (["rebuild-index", "--kb", "shop"], ["ingest", str(kb_file), "--kb", "shop"],
                     ["builds", "rollback", before, "--kb", "shop"]):
            assert main(argv) == 8, argv
            err = capsys.readouterr().err
            assert f"pid {proc.pid} (review publish)" in err and "'shop' is busy" in err
    finally:
        release.set()
        proc.join(30)
    assert active_build_id(home / "shop") == before
    assert main(["rebuild-index", "--kb", "shop"]) == 0
