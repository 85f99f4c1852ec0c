"""What the question log costs a question: ``/ask`` latency with the log on vs off, side by side in one run.

Two real ``kbsearch serve`` processes on loopback share one ingested home: one with the question log
(``KBSEARCH_QUESTIONLOG__ENABLED=true``, the default), one without. Each round sends the same question to
both, in a random order, one request at a time, and records the client-side latency; the figures are the
p50/p95 of each side and their ratio (the target: the log costs at most 5% of the p50). Then the logging
server's database is made unwritable mid-run (its file replaced by a folder): the questions keep being
answered, and ``/metrics`` counts the dropped records.

    .venv/bin/python bench/questionlog_overhead.py                 # ingests the sample KB into a temp home
    .venv/bin/python bench/questionlog_overhead.py --home indexes  # an ingested home (copied first)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "kbsearch.cli"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(base: str, question: str) -> tuple[float, dict]:
    req = urllib.request.Request(base + "/ask", data=json.dumps({"question": question}).encode(),
                                 headers={"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = json.loads(r.read())
    return (time.perf_counter() - t) * 1000, body


def _serve(home: Path, log_on: bool) -> tuple[subprocess.Popen, str]:
    port = _port()
    env = {**os.environ, "KBSEARCH_HOME": str(home), "KBSEARCH_QUESTIONLOG__ENABLED": str(log_on).lower(),
           "KBSEARCH_QUESTIONLOG__URL": f"sqlite:///{home / ('on.db' if log_on else 'off.db')}",
           "KBSEARCH_TELEMETRY__LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(CLI + ["serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server never became ready")


def _dropped(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('kbsearch_questionlog_dropped_total{reason="db-error"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _questions() -> list[str]:
    rows = []
    for line in (REPO / "docs" / "sample_questions.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] and not set(cells[0]) <= set("-: ") and cells[0] != "question":
            rows.append(cells[0])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", help="an ingested home to copy (default: ingest the sample KB)")
    ap.add_argument("--rounds", type=int, default=400, help="questions sent to each server")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qlog-bench-"))
    home = work / "home"
    if args.home:
        shutil.copytree(args.home, home)
    else:
        env = {**os.environ, "KBSEARCH_HOME": str(home)}
        subprocess.run(CLI + ["ingest", str(REPO / "kb")], env=env, check=True, stdout=subprocess.DEVNULL)
    questions, rng = _questions(), random.Random(args.seed)
    servers = {on: _serve(home, on) for on in (True, False)}
    try:
        for _ in range(20):  # warm both up
            for _, base in servers.values():
                _ask(base, rng.choice(questions))
        lat: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            q = rng.choice(questions)
            for on in rng.sample([True, False], 2):
                ms, _ = _ask(servers[on][1], q)
                lat[on].append(ms)
        on, off = (sorted(lat[k]) for k in (True, False))
        p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
        print(f"# question log overhead — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}; {args.rounds} questions per side, alternating, one at a time\n")
        print("| question log | p50 ms | p95 ms | mean ms |\n|---|---|---|---|")
        for name, xs in (("on", on), ("off", off)):
            print(f"| {name} | {p(xs, 0.5):.1f} | {p(xs, 0.95):.1f} | {statistics.fmean(xs):.1f} |")
        print(f"\np50 on / off = {p(on, 0.5) / p(off, 0.5):.3f}; p95 on / off = {p(on, 0.95) / p(off, 0.95):.3f}")

        # The database made unwritable mid-run: answers go on, the drops are counted.
        base = servers[True][1]
        db = home / "on.db"
        for f in home.glob("on.db*"):
            f.unlink()
        db.mkdir()
        before = _dropped(base)
        answered = 0
        for q in questions:
            _, body = _ask(base, q)
            answered += body["request_id"] != ""
        time.sleep(2)  # the writer's next batches
        print(f"\ndatabase unwritable mid-run: {answered}/{len(questions)} questions answered, "
              f"kbsearch_questionlog_dropped_total{{reason=\"db-error\"}} {before:.0f} -> {_dropped(base):.0f}")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
