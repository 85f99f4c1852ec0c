"""Cross-request batching of question embeddings (``kbsearch.retrieve.batching``)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kbsearch.errors import BackendError
from kbsearch.retrieve.batching import QuestionBatcher


class GatedModel:
    """Embeds text -> [len(text), hash]; its first call waits at a gate, so the questions asked meanwhile queue."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(30)
        return np.array([[len(t), hash(t) % 1000] for t in texts], dtype=np.float32)


def _ask_all(batcher: QuestionBatcher, texts: list[str]) -> tuple[dict[str, np.ndarray], list[threading.Thread]]:
    out: dict[str, np.ndarray] = {}

    def ask(t: str) -> None:
        out[t] = batcher.embed(t)

    threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    return out, threads


def _queued(batcher: QuestionBatcher, n: int) -> None:
    for _ in range(3000):
        if len(batcher._queue) >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{n} questions never queued")


def test_questions_asked_while_the_model_is_busy_share_the_next_call_and_each_gets_its_own_vector():
    model = GatedModel()
    batcher = QuestionBatcher(model, max_batch=4)
    first, t1 = _ask_all(batcher, ["lone question"])
    assert model.entered.wait(30)  # a lone question goes to the model at once: no window
    texts = [f"question {i} " + "x" * i for i in range(6)]
    out, threads = _ask_all(batcher, texts)
    _queued(batcher, 6)
    model.gate.set()
    for th in t1 + threads:
        th.join(30)
    assert model.calls[0] == ["lone question"]
    assert sorted(len(c) for c in model.calls[1:]) == [2, 4]  # 6 waiting, at most 4 per call
    assert sorted(sum(model.calls[1:], [])) == sorted(texts)
    for t in texts + ["lone question"]:
        got = out.get(t) if t in out else first[t]
        assert got.tolist() == [len(t), hash(t) % 1000]
    assert (batcher.batches, batcher.questions) == (3, 7)
    batcher.close()


def test_a_failing_call_fails_its_whole_batch_and_the_next_batch_runs():
    calls = []

    def model(texts):
        calls.append(texts)
        if any("boom" in t for t in texts):
            raise BackendError("out of memory")
        return np.ones((len(texts), 2), dtype=np.float32)

    batcher = QuestionBatcher(model, max_batch=8)
    with pytest.raises(BackendError, match="out of memory"):
        batcher.embed("boom")
    assert batcher.embed("fine").tolist() == [1.0, 1.0]
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.embed("after close")


def test_close_fails_the_questions_still_queued():
    model = GatedModel()
    batcher = QuestionBatcher(model, max_batch=2)
    errors: list[BaseException] = []

    def ask(t):
        try:
            batcher.embed(t)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(t,)) for t in ("a", "b", "c")]
    threads[0].start()
    assert model.entered.wait(30)
    for th in threads[1:]:
        th.start()
    _queued(batcher, 2)
    batcher.close()
    model.gate.set()
    for th in threads:
        th.join(30)
    assert len(errors) == 2 and all("closed" in str(e) for e in errors)


def test_a_batch_of_one_is_each_question_alone():
    model = GatedModel()
    model.gate.set()
    batcher = QuestionBatcher(model, max_batch=1)
    _, threads = _ask_all(batcher, [f"q{i}" for i in range(5)])
    for th in threads:
        th.join(30)
    assert all(len(c) == 1 for c in model.calls) and len(model.calls) == 5
    with pytest.raises(ValueError):
        QuestionBatcher(model, max_batch=0)


def test_concurrent_questions_through_the_engine_are_batched_and_answered_as_alone(settings, built, make_engine):
    import time

    from kbsearch.embed.fake import HashEmbedder

    sizes: list[int] = []

    class SlowModel(HashEmbedder):
        def embed_queries(self, texts):
            sizes.append(len(texts))
            time.sleep(0.05)  # a forward pass long enough for the others to queue behind it
            return super().embed_queries(texts)

    questions = ["如何申请退货？", "How long does shipping take?", "支持哪些付款方式？", "怎么退货", "reset my password"] * 2
    engine = make_engine(settings.updated(retrieve={"workers": 16}), embedder=SlowModel(dim=64))
    alone = {q: engine.ask(q) for q in questions}
    sizes.clear()
    answers: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, engine.ask(questions[i])))
               for i in range(len(questions))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sum(sizes) == len(questions) and max(sizes) > 1  # fewer forward passes than questions
    for i, q in enumerate(questions):
        a, b = answers[i], alone[q]
        assert not a.degraded and [h.entry.id for h in a.hits] == [h.entry.id for h in b.hits]
        assert [h.score for h in a.hits] == pytest.approx([h.score for h in b.hits], abs=1e-6)


def test_every_call_of_the_services_embedder_runs_on_the_one_model_thread(settings, make_engine):
    """Loading, single questions (batched), several texts and documents: all on the model thread, whose
    torch thread pools then serve every call (see the module docstring for what another thread costs)."""
    from kbsearch.embed.fake import HashEmbedder

    threads: dict[str, set[str]] = {}

    class Where(HashEmbedder):
        def _note(self, what):
            threads.setdefault(what, set()).add(threading.current_thread().name)

        def load(self):
            self._note("load")
            super().load()

        def embed_queries(self, texts):
            self._note(f"queries x{min(len(texts), 2)}")
            return super().embed_queries(texts)

        def embed_documents(self, texts):
            self._note("documents")
            return super().embed_documents(texts)

    engine = make_engine(embedder=Where(dim=64))
    engine.embedder.embed_queries(["one", "two"])
    engine.embedder.embed_documents(["doc"])
    assert engine.embedder.embed_queries(["alone"]).shape == (1, 64)
    assert engine.embedder.model_id == "kbsearch/hash-ngram-v1"  # the rest is the wrapped embedder's
    assert threads == {k: {"kbsearch-model"} for k in ("load", "queries x1", "queries x2", "documents")}
