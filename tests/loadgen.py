"""A load driver for a real server: clients asking ``/ask`` in a loop while a prober reads ``/healthz`` every 50 ms.

Used by ``tests/test_load.py`` (a bounded check at 2× capacity) and ``bench/overload.py`` (the README's figures).
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass, field

import httpx

#: Questions about the sample KB (``kb/``), answered and off-topic, Chinese and English.
QUESTIONS = ["云杉钱包里的余额怎么提现到我的银行卡？", "怎样用银行卡往云杉钱包里充钱？",
             "电子发票的抬头开错了，能重新开一张吗？", "How can I cancel a return I requested by mistake?",
             "Do you deliver orders to other countries like Australia?", "明天上海会下雨吗？",
             "How does picking up a parcel from a Spruce Locker work?"]


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank), NaN when empty."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


@dataclass
class Level:
    """What one load level saw: statuses, latencies in ms, and what went wrong."""

    clients: int
    seconds: float
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    ok_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    degraded: int = 0
    stages_ms: dict[str, list[float]] = field(default_factory=dict)  # each 200's timings_ms, by stage
    refused_without_retry_after: int = 0
    errors: list[str] = field(default_factory=list)


def drive(base: str, clients: int, seconds: float, questions: list[str] = QUESTIONS, kb: str | None = None) -> Level:
    """``clients`` threads ask ``base/ask`` one question at a time for ``seconds`` while one probes ``/healthz``.

    A client told 429 waits a random share of its ``Retry-After`` before asking again. A request that fails
    (a reset, a timeout) is recorded in ``errors`` and the client goes on.

    Args:
        base: The server's base URL.
        clients: Concurrent clients.
        seconds: How long the level lasts.
        questions: What they ask (each picks at random).
        kb: The knowledge base asked (None: the server's default).

    Returns:
        The statuses, the latencies of the 200s and of the probes, and the failures.
    """
    stop = time.monotonic() + seconds
    level = Level(clients, seconds)
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    r = http.post(base + "/ask", json={"question": rng.choice(questions), **({"kb": kb} if kb else {})})
                except httpx.HTTPError as exc:
                    with lock:
                        level.errors.append(f"/ask: {type(exc).__name__}: {exc}")
                    continue
                ms = (time.perf_counter() - t) * 1000
                with lock:
                    level.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        level.ok_ms.append(ms)
                        body = r.json()
                        level.degraded += body["degraded"]
                        for stage, stage_ms in body.get("timings_ms", {}).items():
                            level.stages_ms.setdefault(stage, []).append(stage_ms)
                    elif r.status_code == 429 and "retry-after" not in r.headers:
                        level.refused_without_retry_after += 1
                if r.status_code == 429:
                    time.sleep(float(r.headers.get("retry-after", "1")) * rng.random())

    def prober() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    http.get(base + "/healthz").raise_for_status()
                except httpx.HTTPError as exc:
                    with lock:
                        level.errors.append(f"/healthz: {type(exc).__name__}: {exc}")
                else:
                    level.health_ms.append((time.perf_counter() - t) * 1000)
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)] + [threading.Thread(target=prober)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return level
