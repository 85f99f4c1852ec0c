"""The milvus backend end to end on milvus-lite: a build through ``kbsearch ingest`` answers as FAISS does; each
build is a collection of its own, published by moving the KB's alias and dropped when the build is pruned; a
missing collection, a locked lite database and a Milvus server uri behave as documented (``docs/milvus.md``).

The contract battery and the differential test against numpy are in ``tests/test_vector_index.py``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from kbsearch.cli import main  # noqa: E402
from kbsearch.config import Settings  # noqa: E402
from kbsearch.embed.fake import HashEmbedder  # noqa: E402
from kbsearch.errors import BackendError, IndexCorruptError  # noqa: E402
from kbsearch.index import build_vector_index, load_vector_index  # noqa: E402
from kbsearch.index.builder import build_index  # noqa: E402
from kbsearch.index.history import rollback  # noqa: E402
from kbsearch.index.milvus_backend import MilvusTarget, _client, milvus_name, read_record  # noqa: E402
from kbsearch.index.store import active_build_id, build_ids, load_build  # noqa: E402
from support import SMALL_KB, one_chunk  # noqa: E402

KB = [
    {"id": "ret-1", "question": "如何申请退货？", "answer": "在订单详情页点击申请退货，7天内无理由退货。",
     "variants": ["怎么退货", "退货流程是什么"]},
    {"id": "pay-1", "question": "支持哪些付款方式？", "answer": "支持银行卡、云杉钱包和信用卡分期。"},
    {"id": "ship-1", "question": "How long does shipping take?", "answer": "Standard shipping takes 3-5 working days.",
     "variants": ["delivery time"]},
    {"id": "pw-1", "question": "How do I reset my password?", "answer": "Use 'Forgot password' on the login page."},
]
QUESTIONS = ("怎么退货", "shipping time", "password 忘了", "信用卡可以分期吗")


def _settings(home: Path, **index) -> Settings:
    return Settings(home=home, embed={"backend": "hash"}, index={"backend": "milvus", **index},
                    decide={"threshold_vector": 0.5})


def _build(s: Settings, entries=SMALL_KB[:4]):
    return build_index(s, "default", list(entries), [one_chunk(e) for e in entries], HashEmbedder(dim=64), {})


def _record(s: Settings, build_id: str) -> dict:
    return read_record(s.kb_dir("default") / "builds" / build_id / "milvus.json")


def _lite(s: Settings):
    return _client(str((s.home / "milvus.db").resolve()), "")


def test_ingest_on_milvus_answers_as_faiss_does(tmp_path, monkeypatch, capsys):
    """``kbsearch ingest`` with KBSEARCH_INDEX__BACKEND=milvus, then ``kbsearch ask``: the same results and scores as
    the same KB ingested on FAISS."""
    kb_file = tmp_path / "kb.jsonl"
    kb_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in KB), encoding="utf-8")
    monkeypatch.setenv("KBSEARCH_EMBED__BACKEND", "hash")
    monkeypatch.setenv("KBSEARCH_RERANK__BACKEND", "none")
    answers: dict[str, list] = {}
    for backend in ("faiss", "milvus"):
        home = tmp_path / backend
        monkeypatch.setenv("KBSEARCH_HOME", str(home))
        monkeypatch.setenv("KBSEARCH_INDEX__BACKEND", backend)
        assert main(["ingest", str(kb_file), "--json"]) == 0
        build_id = json.loads(capsys.readouterr().out)["build_id"]
        build = load_build(home / "default")
        assert build.build_id == build_id and build.manifest.vector_index.backend == backend
        for q in QUESTIONS:
            assert main(["ask", q, "--json", "--top-k", "4"]) == 0
            body = json.loads(capsys.readouterr().out)
            answers.setdefault(q, []).append(
                sorted((round(r["score"], 5), r["id"]) for r in body["results"]))
    assert (home / "milvus.db").is_dir()  # milvus-lite's default place: <home>/milvus.db
    record = read_record(home / "default" / "builds" / build_id / "milvus.json")
    assert record["collection"] == milvus_name("kbsearch", "default", build_id) and record["alias"] == "kbsearch_default"
    for q, (faiss_answer, milvus_answer) in answers.items():
        assert faiss_answer == milvus_answer, q


def test_builds_publish_by_alias_and_pruned_builds_drop_their_collections(tmp_path):
    s = _settings(tmp_path / "home", keep_builds=2)
    first, second = _build(s), _build(s, SMALL_KB[:3])
    client = _lite(s)
    names = {b.build_id: _record(s, b.build_id)["collection"] for b in (first, second)}
    assert client.describe_alias("kbsearch_default")["collection_name"] == names[second.build_id]
    assert set(names.values()) <= set(client.list_collections())
    # Rolling back moves the alias too: outside readers follow the build kbsearch serves.
    rollback(s, "default", first.build_id)
    assert client.describe_alias("kbsearch_default")["collection_name"] == names[first.build_id]
    rollback(s, "default", second.build_id)
    third = _build(s, SMALL_KB[:2])
    assert build_ids(s.kb_dir("default")) == [third.build_id, second.build_id]
    assert names[first.build_id] not in client.list_collections()  # pruned with its build
    assert names[second.build_id] in client.list_collections()
    assert client.describe_alias("kbsearch_default")["collection_name"] == _record(s, third.build_id)["collection"]
    served = load_build(s.kb_dir("default"))
    assert served.build_id == third.build_id and len(served.vectors) == len(served.rows)


def test_a_failed_publish_drops_the_new_collection(tmp_path, monkeypatch):
    s = _settings(tmp_path / "home")
    before = _build(s)
    client = _lite(s)
    collections = set(client.list_collections())

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("kbsearch.index.store.fsync_tree", refuse)
    with pytest.raises(OSError, match="disk full"):
        _build(s, SMALL_KB[:2])
    assert set(client.list_collections()) == collections and active_build_id(s.kb_dir("default")) == before.build_id


def test_a_dropped_collection_is_a_clear_error(tmp_path):
    s = _settings(tmp_path / "home")
    built = _build(s)
    loaded = load_build(s.kb_dir("default"))
    name = _record(s, built.build_id)["collection"]
    _lite(s).drop_collection(name)
    with pytest.raises(BackendError, match=f"collection {name}"):  # a loaded index: the query path falls back to BM25
        loaded.vectors.search(np.ones((1, 64), np.float32), 5)
    with pytest.raises(IndexCorruptError, match=f"collection {name} .*missing"):
        load_vector_index("milvus", built.path / "milvus.json")
    again = load_build(s.kb_dir("default"))  # the build still serves, from BM25
    assert again.vectors is None and "missing" in again.vector_error and again.bm25 is not None


def test_a_server_index_that_did_not_load_is_tried_again(tmp_path, monkeypatch, make_engine):
    """Milvus down when the build loaded: BM25 answers, and the next retry serves the vectors, no restart."""
    import kbsearch.index.store as store

    s = _settings(tmp_path / "home").updated(model_load_retry_s=0.01)
    _build(s)
    real = store.load_vector_index

    def down(*args, **kwargs):
        raise BackendError("milvus at http://milvus:19530 is unreachable")

    monkeypatch.setattr(store, "load_vector_index", down)
    engine = make_engine(s)
    before = engine.ask(SMALL_KB[0].question)
    assert before.degraded and before.mode == "bm25" and "unreachable" in engine.status()["kbs"]["default"]["vector"]
    monkeypatch.setattr(store, "load_vector_index", real)
    time.sleep(0.02)
    engine.retry_models()
    after = engine.ask(SMALL_KB[0].question)
    assert not after.degraded and after.mode == "vector" and engine.status()["ready"]


def test_a_collection_with_other_rows_is_corrupt(tmp_path):
    s = _settings(tmp_path / "home")
    built = _build(s)
    _lite(s).delete(_record(s, built.build_id)["collection"], ids=[0])
    with pytest.raises(IndexCorruptError, match="rows"):
        load_vector_index("milvus", built.path / "milvus.json")


def test_a_lite_database_opens_in_one_process_at_a_time(tmp_path):
    """milvus-lite locks its .db: a second process gets a BackendError that says so and names the way out."""
    db = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pymilvus import MilvusClient; "
                               f"MilvusClient({str(db)!r}); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(BackendError, match="one process.*milvus-lite server"):
            build_vector_index("milvus", np.eye(4, dtype=np.float32), milvus=MilvusTarget(uri=str(db)))
    finally:
        holder.kill()
        holder.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_the_same_code_takes_a_server_uri(tmp_path):
    """A Milvus server (``milvus-lite server``, which speaks Milvus's gRPC protocol) at an http:// uri: builds,
    publishes and is read back by another process, as a cluster would be."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir",
                               str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline and server.poll() is None, "milvus-lite server did not start"
            time.sleep(0.2)
        s = _settings(tmp_path / "home", milvus_uri=f"http://127.0.0.1:{port}")
        built = _build(s)
        record = _record(s, built.build_id)
        assert record["uri"] == f"http://127.0.0.1:{port}" and not record["lite"]
        mine = load_build(s.kb_dir("default")).vectors.search(np.ones((1, 64), np.float32), 3)[1].tolist()
        code = ("import sys, numpy as np; from kbsearch.index.store import load_build; "
                f"print(load_build(__import__('pathlib').Path({str(s.kb_dir('default'))!r})).vectors"
                ".search(np.ones((1, 64), np.float32), 3)[1].tolist())")
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        assert other.returncode == 0, other.stderr[-2000:]
        assert other.stdout.strip() == str(mine)
    finally:
        server.kill()
        server.wait()
