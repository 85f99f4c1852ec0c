"""A hung model cannot pin the service: bounded waits for a worker, a circuit breaker, and recovery."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kbsearch.codes import FallbackCause
from kbsearch.embed.fake import HashEmbedder
from kbsearch.errors import BackendError
from kbsearch.retrieve.vector import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_probes_and_closes():
    clock = Clock()
    b = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
    b.check()
    b.failed()
    b.check()  # one failure: still closed
    b.failed()
    assert b.state == "open"
    with pytest.raises(BackendError) as err:
        b.check()
    assert err.value.cause is FallbackCause.CIRCUIT_OPEN
    clock.now = 10
    assert b.state == "half-open"
    b.check()  # the probe goes through ...
    with pytest.raises(BackendError):
        b.check()  # ... and only one at a time
    b.failed()  # the probe failed: open again for a full cooldown
    assert b.state == "open"
    clock.now = 20
    b.check()
    b.succeeded()
    assert b.state == "closed" and b.failures == 0
    b.check()


def test_breaker_threshold_zero_never_opens():
    b = CircuitBreaker(threshold=0, cooldown_s=1)
    for _ in range(100):
        b.failed()
    b.check()
    assert b.state == "closed"


class HungEmbedder(HashEmbedder):
    """Question embedding hangs until the test lets the backend come back."""

    def __init__(self) -> None:
        super().__init__(dim=64)
        self.back = threading.Event()
        self.back.set()

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        self.back.wait(60)
        return super().embed_queries(texts)


def test_a_hung_embedder_degrades_to_bm25_and_recovers(settings, built, make_engine):
    s = settings.updated(retrieve={"vector_timeout_s": 0.2, "vector_queue_timeout_s": 0.2, "workers": 2,
                                   "breaker_failures": 3, "breaker_cooldown_s": 30})
    embedder = HungEmbedder()
    engine = make_engine(s, embedder=embedder)
    clock = Clock()
    engine.vector.breaker.clock = clock
    assert engine.ask("如何申请退货？").mode == "vector"
    embedder.back.clear()  # the model hangs
    causes = []
    for _ in range(6):
        a = engine.ask("如何申请退货？")
        assert a.answered and a.degraded and a.mode == "bm25" and a.hits[0].entry.id == "ret-1"
        causes.append(str(a.trace.fallbacks[0][0]))
    # two workers pinned by timed-out calls, then no free worker, then the circuit stops trying
    assert causes == ["embed-timeout", "embed-timeout", "vector-busy", "circuit-open", "circuit-open", "circuit-open"]
    assert engine.vector.breaker.state == "open"
    embedder.back.set()  # the model is back; the pinned workers finish
    clock.now = 30  # after the cooldown one question probes the vector path
    a = engine.ask("如何申请退货？")
    assert a.mode == "vector" and not a.degraded and engine.vector.breaker.state == "closed"
    assert engine.ask("How long does shipping take?").mode == "vector"
