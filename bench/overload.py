"""Overload, measured: a real `kbsearch serve` driven at 1× and 2× its configured capacity.

Capacity is ``api.max_in_flight + api.max_queue`` questions at once. For each load level, that many
clients (threads, one request at a time each) ask for ``--seconds`` while a prober reads ``/healthz``
every 50 ms. Printed: responses by status (only 200 and 429 are expected), p50/p99 of the 200s, the
``/healthz`` p50/p99/max, and how many answers were degraded. Figures, not a pass/fail test.

    .venv/bin/python bench/overload.py                  # ingests the sample KB into a temp home
    .venv/bin/python bench/overload.py --home indexes   # an ingested home (copied first)
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "kbsearch.cli"]
QUESTIONS = ["云杉钱包里的余额怎么提现到我的银行卡？", "怎样用银行卡往云杉钱包里充钱？", "电子发票的抬头开错了，能重新开一张吗？",
             "How can I cancel a return I requested by mistake?", "Do you deliver orders to other countries like Australia?",
             "明天上海会下雨吗？", "How does picking up a parcel from a Spruce Locker work?"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _level(base: str, clients: int, seconds: float) -> dict:
    stop = time.monotonic() + seconds
    statuses: collections.Counter[int] = collections.Counter()
    ok_ms: list[float] = []
    degraded = [0]
    health_ms: list[float] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = http.post(base + "/ask", json={"question": rng.choice(QUESTIONS)})
                ms = (time.perf_counter() - t) * 1000
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        ok_ms.append(ms)
                        degraded[0] += r.json()["degraded"]
                if r.status_code == 429:
                    time.sleep(float(r.headers.get("retry-after", "1")) * rng.random())

    def prober() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                t = time.perf_counter()
                http.get(base + "/healthz")
                health_ms.append((time.perf_counter() - t) * 1000)
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)] + [threading.Thread(target=prober)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"statuses": dict(statuses), "ok_p50": _pct(ok_ms, 0.5), "ok_p99": _pct(ok_ms, 0.99),
            "health_p50": _pct(health_ms, 0.5), "health_p99": _pct(health_ms, 0.99), "health_max": max(health_ms),
            "degraded": degraded[0], "ok": len(ok_ms), "rps": len(ok_ms) / seconds}


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
            r = _level(base, clients, args.seconds)
            st = r["statuses"]
            other = sum(v for k, v in st.items() if k not in (200, 429))
            print(f"| {clients} | {st.get(200, 0)} | {st.get(429, 0)} | {other} | {r['rps']:.1f} | "
                  f"{r['ok_p50']:.0f} / {r['ok_p99']:.0f} | {r['degraded']} | "
                  f"{r['health_p50']:.1f} / {r['health_p99']:.1f} / {r['health_max']:.1f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
