"""The ``torch_threads`` setting: validated by ``Settings``, resolved to a count (auto shares the CPUs among
the questions answered at once), and applied by ``kbsearch serve`` before any model loads, so that every
thread torch later runs in (the vector workers, the embedding thread) uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from kbsearch.config import Settings
from kbsearch.devices import configure_torch_threads, torch_threads_for, usable_cpus
from kbsearch.errors import BadInputError

# Runs `kbsearch serve` up to create_app, which it replaces: the stand-in loads the embedder when asked
# to (as the real one does next), then reports the thread counts torch uses in this thread and in a
# thread started afterwards, as the serving threads are.
SERVE_PROBE = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor

import kbsearch.api.app
import kbsearch.cli


def create_app(settings):
    import torch

    if "--load-e5" in sys.argv:
        from kbsearch.embed import make_embedder

        embedder = make_embedder(settings)
        embedder.load()
        work = lambda: embedder.embed_queries(["where is my order"])
    else:
        work = lambda: torch.ones(256, 256) @ torch.ones(256, 256)

    def worker():
        work()
        return torch.get_num_threads()

    with ThreadPoolExecutor(1) as pool:
        seen = {"worker": pool.submit(worker).result(), "main": torch.get_num_threads(),
                "interop": torch.get_num_interop_threads()}
    print(json.dumps(seen))
    sys.exit(0)


kbsearch.api.app.create_app = create_app
kbsearch.cli.main(["serve"])
"""


def _serve_probe(tmp_path: Path, env: dict[str, str], *args: str) -> dict[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KBSEARCH_")}
    proc = subprocess.run([sys.executable, "-c", SERVE_PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False, env={**clean, "KBSEARCH_HOME": str(tmp_path / "home"), **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_the_setting_defaults_to_auto_and_refuses_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBSEARCH_TORCH_THREADS", raising=False)
    assert Settings().torch_threads == 0
    monkeypatch.setenv("KBSEARCH_TORCH_THREADS", "3")
    assert Settings().torch_threads == 3
    for bad in ("-1", "two", "1.5", "5000"):
        monkeypatch.setenv("KBSEARCH_TORCH_THREADS", bad)
        with pytest.raises(ValidationError, match="torch_threads"):
            Settings()


def test_auto_is_every_usable_cpu_and_a_set_count_is_used_as_is() -> None:
    assert torch_threads_for(0, cpus=2) == 2 and torch_threads_for(0, cpus=16) == 16
    assert torch_threads_for(3, cpus=2) == 3
    assert torch_threads_for(0) == usable_cpus()


def test_configure_refuses_a_count_below_one() -> None:
    with pytest.raises(BadInputError):
        configure_torch_threads(0)


def test_serve_gives_torch_the_configured_threads_before_anything_runs(tmp_path: Path) -> None:
    n = usable_cpus() + 1  # never torch's own default (one per core), so the setting must be what set it
    assert _serve_probe(tmp_path, {"KBSEARCH_TORCH_THREADS": str(n)}) == {"worker": n, "main": n, "interop": n}
    auto = torch_threads_for(0)
    seen = _serve_probe(tmp_path, {})
    assert seen == {"worker": auto, "main": auto, "interop": auto}


@pytest.mark.slow
def test_the_threads_hold_after_the_real_model_loads(tmp_path: Path, e5_cache: Path) -> None:
    n = usable_cpus() + 1
    env = {"KBSEARCH_TORCH_THREADS": str(n), "KBSEARCH_MODEL_CACHE": str(e5_cache)}
    assert _serve_probe(tmp_path, env, "--load-e5") == {"worker": n, "main": n, "interop": n}


def test_faiss_searches_use_the_set_thread_count_in_every_searching_thread():
    """OpenMP's count is per thread: a search in a worker thread applies the serve-time setting there."""
    import threading

    import faiss
    import numpy as np

    from kbsearch.index import faiss_backend
    from kbsearch.index.faiss_backend import FaissIndex, set_search_threads

    v = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = FaissIndex.build(v, device="cpu")
    seen: list[int] = []

    def search_in_a_new_thread() -> None:
        index.search(v[:1], 5)
        seen.append(faiss.omp_get_max_threads())

    try:
        for threads in (1, 3):
            set_search_threads(threads)
            worker = threading.Thread(target=search_in_a_new_thread)
            worker.start()
            worker.join()
        assert seen == [1, 3]
    finally:
        set_search_threads(None)
        faiss_backend._thread_state.__dict__.clear()


# Runs the real `kbsearch serve` up to uvicorn, which it replaces: loads the engine (e5-small on ONNX Runtime,
# as on any CPU machine; the GPU probe is pinned to "none" so a GPU box runs the same path), answers one
# question, and reports whether torch was imported; then imports torch and reports the threads it got.
NO_TORCH_PROBE = r"""
import json, sys
import kbsearch.api.server, kbsearch.cli, kbsearch.devices

kbsearch.devices._gpu_driver_present = lambda: False


def serve(app, api):
    engine = app.state.engine
    engine.load()
    vector = engine.embedder.embed_queries(["where is my order"])
    seen = {"dim": int(vector.shape[1]), "torch_imported": "torch" in sys.modules,
            "transformers_imported": "transformers" in sys.modules}
    import torch

    seen["threads"] = torch.get_num_threads()
    print(json.dumps(seen))


kbsearch.api.server.serve = serve
kbsearch.cli.main(["serve"])
"""


@pytest.mark.slow
def test_serve_on_onnx_runtime_never_imports_torch_and_torch_still_gets_the_threads(tmp_path: Path,
                                                                                    e5_cache: Path) -> None:
    n = usable_cpus() + 1
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KBSEARCH_")}
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False, env={**clean, "KBSEARCH_HOME": str(tmp_path / "home"),
                                                         "KBSEARCH_MODEL_CACHE": str(e5_cache),
                                                         "KBSEARCH_TORCH_THREADS": str(n)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"dim": 384, "torch_imported": False,
                                                         "transformers_imported": False, "threads": n}
