"""Two API replicas, one knowledge base (issue 15): two real ``kbsearch serve`` processes on loopback share one
home (the builds) and one PostgreSQL database (the question log), and a new build is published under load.

The KB is a slice of the sample KB's English FAQs, ingested by the real CLI with the embedded e5-small model,
as the other real-server tests do. Build A has ``en-001`` with its own answer; build B, ingested while the
replicas answer, changes that answer and adds an FAQ (``pets``) whose question only B can answer. A few client
threads ask both replicas in turn: a fixed number of questions before the swap, questions throughout the
ingest and until both replicas' ``/readyz`` name build B, then a fixed number after. During the load the
home also holds what a crashed or unfinished writer leaves: a ``builds/.tmp-*`` folder and, after B is
published, a newer build folder that is only half written (its manifest but no index files, and an answer
text no complete build has), which ``ACTIVE`` never names. Then:

- every request is a 200 (no 5xx, no 429, no connection error);
- every answer names (``index_version``) build A or B, never a half-written one, and its results' (FAQ id,
  answer text) pairs are those of that build's ``entries.jsonl`` exactly: no answer mixes two builds;
- each client sees each replica move from A to B once, never back; every question asked after both replicas
  listed B is answered from B; the new FAQ is answered only by B, and finally by both replicas;
- the question log in PostgreSQL holds exactly the questions answered (by request id, prefixed with the
  replica that answered), with the build each was answered from.

No wall-clock bounds: the timeouts are hang guards for a slow, shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from kbsearch.index.store import new_build_id
from postgres import running_postgres
from servers import CLI, get, running_server
from support import REPO

pytestmark = pytest.mark.slow

#: The sample KB's first English FAQs: build A.
FAQS = 10
CHANGED_ID = "en-001"
CHANGED_ANSWER = ("Open the Spruce Mall app, go to Me > My Orders and tap the order: the courier, the tracking "
                  "number and a live timeline are shown there. (Build B's wording.)")
NEW_FAQ = {"id": "pets", "section": "Stores", "question": "Can I bring my dog into a Spruce Mall store?",
           "answer": "Dogs on a leash are welcome in every Spruce Mall store, except in the food hall.",
           "variants": ["Are pets allowed in your shops?", "Is my puppy allowed inside the mall?"]}
HALF_WRITTEN_ANSWER = "HALF-WRITTEN BUILD: never serve this"
QUESTIONS = ["How do I track my order?", NEW_FAQ["question"], "How can I cancel a return I requested by mistake?",
             "Where is my package?", "明天上海会下雨吗？"]
CLIENTS = 4
BEFORE, AFTER = 6, 6  # questions per client before the swap starts, and after both replicas list build B
MAX_PER_CLIENT = 2000  # a hang guard: the load stops here whatever happens
HANG_GUARD_S = 300.0


def _write_kb(path: Path, with_b_changes: bool) -> None:
    """The KB as JSON lines: build A's FAQs, or build B's (``en-001`` reworded, ``pets`` added)."""
    lines = (REPO / "kb" / "faq_en.jsonl").read_text(encoding="utf-8").splitlines()[:FAQS]
    entries = [json.loads(line) for line in lines]
    if with_b_changes:
        next(e for e in entries if e["id"] == CHANGED_ID)["answer"] = CHANGED_ANSWER
        entries.append(NEW_FAQ)
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")


def _ingest(env: dict[str, str], kb_file: Path) -> str:
    """``kbsearch ingest`` by the real CLI; the id of the build it published."""
    done = subprocess.run(CLI + ["ingest", str(kb_file), "--json"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)["build_id"]


def _answers_of(build_dir: Path) -> dict[str, str]:
    """FAQ id -> answer text, as the build's ``entries.jsonl`` holds them."""
    rows = [json.loads(line) for line in (build_dir / "entries.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r["answer"] for r in rows}


def _half_written(builds: Path, source: Path, name: str) -> Path:
    """A build folder as an unfinished writer leaves it: the source build's manifest and entries (one answer
    replaced), no vectors, rows or BM25 index."""
    target = builds / name
    target.mkdir()
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    manifest["build_id"] = name
    (target / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    rows = [json.loads(line) for line in (source / "entries.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[0]["answer"] = HALF_WRITTEN_ANSWER
    (target / "entries.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    return target


def _wait_for(what: str, check: Any, timeout: float = HANG_GUARD_S) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"hang guard: {what} did not happen in {timeout:.0f} s")


class Load:
    """Client threads asking both replicas in turn: ``BEFORE`` questions each, then until ``swapped`` is set,
    then ``AFTER`` more. Every outcome is recorded: (client, replica, phase, status, body) or an error."""

    def __init__(self, replicas: dict[str, str]) -> None:
        self.replicas = replicas
        self.swapped = threading.Event()
        self.started = threading.Semaphore(0)  # released once per client when its BEFORE questions are done
        self.lock = threading.Lock()
        self.outcomes: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self) -> None:
        """Start the client threads."""
        for t in self.threads:
            t.start()

    def join(self) -> None:
        """Wait for every client to finish (a hang guard fails the test)."""
        for t in self.threads:
            t.join(HANG_GUARD_S)
            assert not t.is_alive(), "hang guard: a load client did not finish"

    def _client(self, i: int) -> None:
        names = sorted(self.replicas)
        after = 0
        with httpx.Client(timeout=120) as http:
            for n in range(MAX_PER_CLIENT):
                if n == BEFORE:
                    self.started.release()
                phase = "before" if n < BEFORE else "after" if self.swapped.is_set() else "during"
                if phase == "after":
                    if after == AFTER:
                        return
                    after += 1
                replica = names[(n + i) % len(names)]
                rid = f"{replica}-{i}-{n}"
                question = QUESTIONS[(n * 3 + i) % len(QUESTIONS)]
                try:
                    r = http.post(self.replicas[replica] + "/ask", json={"question": question},
                                  headers={"X-Request-ID": rid})
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors.append(f"{rid}: {type(exc).__name__}: {exc}")
                    continue
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
                with self.lock:
                    self.outcomes.append({"client": i, "replica": replica, "n": n, "phase": phase, "rid": rid,
                                          "question": question, "status": r.status_code, "body": body})


def _served_build(base: str) -> str | None:
    """The build ``/readyz`` says the replica serves for ``default``."""
    return get(base + "/readyz")["kbs"].get("default", {}).get("build")


def test_two_replicas_share_builds_and_the_question_log_through_a_swap_under_load(tmp_path):
    with running_postgres() as pg:
        url = pg.create_database("kbsearch_replicas")
        home = tmp_path / "home"
        env = {**os.environ, "KBSEARCH_HOME": str(home), "KBSEARCH_QUESTIONLOG__URL": url,
               "KBSEARCH_INDEX__WATCH_INTERVAL_S": "0.2", "KBSEARCH_QUESTIONLOG__FLUSH_INTERVAL_S": "0.1",
               "KBSEARCH_KB_RERANKER__AUTO_TRAIN": "false", "KBSEARCH_TELEMETRY__LOG_LEVEL": "WARNING"}
        kb_a, kb_b = tmp_path / "kb_a.jsonl", tmp_path / "kb_b.jsonl"
        _write_kb(kb_a, with_b_changes=False)
        _write_kb(kb_b, with_b_changes=True)
        builds = home / "default" / "builds"
        build_a = _ingest(env, kb_a)

        with running_server(env) as a, running_server(env) as b:
            replicas = {"a": a, "b": b}
            assert {_served_build(base) for base in replicas.values()} == {build_a}
            load = Load(replicas)
            load.start()
            for _ in range(CLIENTS):  # every client has asked its BEFORE questions, all of them from build A
                assert load.started.acquire(timeout=HANG_GUARD_S), "hang guard: the load did not start"
            # a writer killed mid-build leaves builds/.tmp-<id> (the next writer removes it): never served
            tmp_leftover = _half_written(builds, builds / build_a, f".tmp-{new_build_id()}")
            build_b = _ingest(env, kb_b)
            # a newer build folder that was never finished nor published: ACTIVE still names B
            half = _half_written(builds, builds / build_b, new_build_id())
            assert half.name > build_b and (home / "default" / "ACTIVE").read_text().strip() == build_b
            _wait_for("both replicas listing build B in /readyz",
                      lambda: all(_served_build(base) == build_b for base in replicas.values()))
            load.swapped.set()
            load.join()

            finals = {}
            for name, base in replicas.items():  # the new FAQ, asked of each replica once the load is over
                r = httpx.post(base + "/ask", json={"question": NEW_FAQ["question"]},
                               headers={"X-Request-ID": f"{name}-final"}, timeout=120)
                finals[name] = r.json()
                assert r.status_code == 200 and finals[name]["index_version"] == build_b
                assert finals[name]["answered"] and finals[name]["results"][0]["id"] == NEW_FAQ["id"], finals[name]
                assert get(base + "/readyz")["kbs"]["default"]["fallback"] is None

            answered = {o["rid"]: o["body"]["index_version"] for o in load.outcomes if o["status"] == 200}
            answered.update({f"{name}-final": body["index_version"] for name, body in finals.items()})
            logged = _wait_for("the question log holding every question answered", lambda: _logged(pg, answered))

        # -- 0 errors --------------------------------------------------------------------------------
        statuses = Counter(o["status"] for o in load.outcomes)
        phases = Counter(o["phase"] for o in load.outcomes)
        during = Counter("AB"[o["body"]["index_version"] == build_b] for o in load.outcomes
                         if o["phase"] == "during" and o["status"] == 200)
        print(f"\n{len(load.outcomes)} questions to 2 replicas: statuses {dict(statuses)}, phases {dict(phases)} "
              f"(during the swap, by build: {dict(during)}), {len(load.errors)} failed requests")
        assert load.errors == []
        assert set(statuses) == {200}, [o for o in load.outcomes if o["status"] != 200][:3]
        assert len(load.outcomes) < CLIENTS * MAX_PER_CLIENT  # the load ended by the swap, not by the guard
        assert phases["before"] == CLIENTS * BEFORE and phases["after"] == CLIENTS * AFTER

        # -- every answer from one complete build ---------------------------------------------------
        assert builds.joinpath(build_a).is_dir() and builds.joinpath(build_b).is_dir()
        complete = {build_a: _answers_of(builds / build_a), build_b: _answers_of(builds / build_b)}
        assert complete[build_a][CHANGED_ID] != complete[build_b][CHANGED_ID] == CHANGED_ANSWER
        assert NEW_FAQ["id"] in complete[build_b] and NEW_FAQ["id"] not in complete[build_a]
        for o in load.outcomes:
            body = o["body"]
            build = body["index_version"]
            assert build in complete, (o["rid"], build, tmp_leftover.name, half.name)
            pairs = {(r["id"], r["answer"]) for r in body["results"]}
            assert pairs <= set(complete[build].items()), (o["rid"], build, pairs - set(complete[build].items()))
            if body["answered"]:
                assert body["answer"] == complete[build][body["results"][0]["id"]]
            assert HALF_WRITTEN_ANSWER not in json.dumps(body)
            if o["phase"] == "before":
                assert build == build_a, o["rid"]
            if o["phase"] == "after":
                assert build == build_b, o["rid"]
        new_faq_from = {o["body"]["index_version"] for o in load.outcomes
                        if o["body"]["results"] and o["body"]["results"][0]["id"] == NEW_FAQ["id"]}
        assert new_faq_from == {build_b}

        # -- each replica moves from A to B once, as each client sees it ---------------------------
        seen: dict[tuple[int, str], list[str]] = {}
        for o in sorted(load.outcomes, key=lambda o: (o["client"], o["n"])):
            seen.setdefault((o["client"], o["replica"]), []).append(o["body"]["index_version"])
        for key, versions in seen.items():
            flips = sum(1 for x, y in zip(versions, versions[1:]) if x != y)
            assert versions[0] == build_a and versions[-1] == build_b and flips == 1, (key, versions)

        # -- the shared question log: every question answered, from both replicas --------------------
        assert logged == sorted(answered.items())  # one row per question answered, none lost, none twice
        assert {rid.split("-")[0] for rid, _ in logged} == {"a", "b"}


def _logged(pg: Any, answered: dict[str, str]) -> list[tuple[str, str]] | None:
    """The question log's (request id, build) rows, sorted, once there are as many as ``answered``; else None."""
    with pg.connect("kbsearch_replicas") as conn:
        rows = conn.execute("SELECT request_id, index_version FROM questions").fetchall()
    return sorted((rid, build) for rid, build in rows) if len(rows) >= len(answered) else None
