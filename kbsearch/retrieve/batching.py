"""Cross-request batching of question embeddings: questions asked at the same time share one forward pass.

One thread runs the model. A question waits in a queue; when the model is free, the thread takes every
question waiting (up to ``max_batch``) and embeds them in one call. There is no batch window: an idle
service embeds a lone question at once (no added latency at one client), and a busy one batches exactly
the questions that arrived while the previous batch ran, so batches grow with the load by themselves.
A fixed window would add its length to every question at low load and buy nothing at high load,
where the previous forward pass is the window. One model call at a time is also what a CPU wants
(a forward pass already uses every intra-op thread) and what a GPU serialises anyway.

A call that raises fails every question of its batch with that error. A call that hangs holds its
batch, and the questions behind it wait: the caller's own timeout (``retrieve.vector_timeout_s``)
and circuit breaker handle that, as for a single question.

**Every use of the model runs on that one thread** (``call``; ``ModelThreadEmbedder`` routes a
service's whole embedder through it, loading included). torch's OpenMP thread pools belong to the
thread that starts them: with the model loaded and first run in the main thread, a question embedded
on another thread took 24 ms p50 against 13 ms on the main thread, and 12.4 ms when one thread did
everything (e5-small, 2 intra-op threads, 2 cores, 100 unionpay questions, one at a time).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np


class _Item:
    __slots__ = ("text", "fn", "done", "vector", "result", "error")

    def __init__(self, text: str, fn: Callable[[], Any] | None = None) -> None:
        self.text, self.fn = text, fn  # a question, or (fn set) any call to run on the model thread alone
        self.done = threading.Event()
        self.vector: np.ndarray | None = None
        self.result: Any = None
        self.error: BaseException | None = None


class QuestionBatcher:
    """Embeds single questions in batches with whatever else is waiting (see the module docstring).

    Args:
        embed: The model call: texts -> ``(len(texts), dim)`` vectors (``Embedder.embed_queries``).
        max_batch: Most questions per call (1 = no batching: each question alone, still one call at a time).
    """

    def __init__(self, embed: Callable[[list[str]], np.ndarray], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._embed, self.max_batch = embed, max_batch
        self._queue: deque[_Item] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # calls made, and questions embedded by them (for the bench and tests)
        self.questions = 0

    def embed(self, text: str) -> np.ndarray:
        """The question's vector, ``(dim,)``, once its batch has run (blocks until then).

        Raises:
            Whatever the model call raised for the batch; RuntimeError after ``close()``.
        """
        item = self._wait(_Item(text))
        assert item.vector is not None
        return item.vector

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the model thread, alone, in turn with the batches; its result (or its exception)."""
        return self._wait(_Item("", fn)).result

    def _wait(self, item: _Item) -> _Item:
        with self._ready:
            if self._closed:
                raise RuntimeError("the question batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kbsearch-model", daemon=True)
                self._thread.start()
            self._queue.append(item)
            self._ready.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                batch = [self._queue.popleft()]
                while batch[0].fn is None and self._queue and self._queue[0].fn is None and len(batch) < self.max_batch:
                    batch.append(self._queue.popleft())
            if batch[0].fn is not None:
                self._call(batch[0])
                continue
            try:
                vectors = self._embed([it.text for it in batch])
                if len(vectors) != len(batch):
                    raise RuntimeError(f"the model returned {len(vectors)} vectors for {len(batch)} questions")
                for it, v in zip(batch, vectors):
                    it.vector = v
            except BaseException as exc:  # every question of the batch gets the error; the thread goes on
                for it in batch:
                    it.error = exc
            self.batches += 1
            self.questions += len(batch)
            for it in batch:
                it.done.set()

    @staticmethod
    def _call(item: _Item) -> None:
        try:
            item.result = item.fn()  # type: ignore[misc]
        except BaseException as exc:
            item.error = exc
        item.done.set()

    def close(self) -> None:
        """Stop the model thread; questions still queued fail with RuntimeError (a batch running finishes)."""
        with self._ready:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._ready.notify_all()
        for it in left:
            it.error = RuntimeError("the question batcher was closed")
            it.done.set()


class ModelThreadEmbedder:
    """An embedder whose every call runs on a ``QuestionBatcher``'s model thread (see the module docstring).

    A single question joins the batches; anything else (loading, several texts, documents) runs alone on
    the thread, in turn. Everything else (``model_id``, ``describe``...) is the wrapped embedder's.

    Args:
        embedder: The embedder.
        batcher: The thread to run it on.
    """

    def __init__(self, embedder: Any, batcher: QuestionBatcher) -> None:
        self.wrapped, self._batcher = embedder, batcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def load(self) -> None:
        self._batcher.call(self.wrapped.load)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:
            return self._batcher.embed(texts[0]).reshape(1, -1)
        return self._batcher.call(lambda: self.wrapped.embed_queries(texts))

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return self._batcher.call(lambda: self.wrapped.embed_documents(texts))
