"""Overload, measured: a real `kbsearch serve` driven at 1× and 2× its configured capacity.

Capacity is ``api.max_in_flight + api.max_queue`` questions at once. For each load level, that many
clients (threads, one request at a time each) ask for ``--seconds`` while a prober reads ``/healthz``
every 50 ms. Printed: responses by status (only 200 and 429 are expected), p50/p99 of the 200s, the
``/healthz`` p50/p99/max, and how many answers were degraded (``other`` counts failed requests too).
Figures, not a pass/fail test: ``tests/test_load.py`` is the bounded check, with the same driver
(``tests/loadgen.py``).

    .venv/bin/python bench/overload.py                  # ingests the sample KB into a temp home
    .venv/bin/python bench/overload.py --home indexes   # an ingested home (copied first)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the load driver, shared with tests/test_load.py

from loadgen import drive, percentile

CLI = [sys.executable, "-m", "kbsearch.cli"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", help="an ingested home to copy (default: ingest the sample KB)")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-in-flight", type=int, default=4)
    ap.add_argument("--max-queue", type=int, default=32)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="overload-"))
    home = work / "home"
    env = {**os.environ, "KBSEARCH_HOME": str(home), "KBSEARCH_API__MAX_IN_FLIGHT": str(args.max_in_flight),
           "KBSEARCH_API__MAX_QUEUE": str(args.max_queue), "KBSEARCH_TELEMETRY__LOG_LEVEL": "WARNING"}
    if args.home:
        shutil.copytree(args.home, home)
    else:
        subprocess.run(CLI + ["ingest", str(REPO / "kb")], env=env, check=True, stdout=subprocess.DEVNULL)
    port = _port()
    proc = subprocess.Popen(CLI + ["serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        capacity = args.max_in_flight + args.max_queue
        print(f"# overload — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}; capacity {capacity} ({args.max_in_flight} in flight + {args.max_queue} "
              f"queued), {args.seconds:g} s per level\n")
        print("| clients | 200 | 429 | other | answers/s | 200 p50 / p99 ms | degraded | /healthz p50 / p99 / max ms |")
        print("|---|---|---|---|---|---|---|---|")
        for clients in (1, capacity, 2 * capacity):
            r = drive(base, clients, args.seconds)
            st = r.statuses
            other = sum(v for k, v in st.items() if k not in (200, 429)) + len(r.errors)
            print(f"| {clients} | {st[200]} | {st[429]} | {other} | {len(r.ok_ms) / args.seconds:.1f} | "
                  f"{percentile(r.ok_ms, 0.5):.0f} / {percentile(r.ok_ms, 0.99):.0f} | {r.degraded} | "
                  f"{percentile(r.health_ms, 0.5):.1f} / {percentile(r.health_ms, 0.99):.1f} / "
                  f"{max(r.health_ms):.1f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
