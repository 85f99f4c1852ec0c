"""A real third-party model server for the tests: Infinity (michaelfeil/infinity, MIT), serving the bundled
e5-small and a tiny random cross-encoder on loopback through its OpenAI-compatible ``/v1/embeddings`` and
Cohere-shaped ``/v1/rerank``.

Infinity pins sentence-transformers 3 and numpy 1, which cannot live beside kbsearch's own, so it gets its
own virtual environment (``.venv-infinity`` in the checkout, made on first use from PyPI and the local
torch wheel, about 2 minutes; ``KBSEARCH_TEST_INFINITY`` may name another ``infinity_emb``). A missing or
failed install skips the calling test, or fails it under ``KBSEARCH_TEST_REQUIRE_TOOLS=1`` (CI).

The served e5 folder is the materialised one, file for file (symlinks to the same weights and tokenizer),
less two things the older libraries there cannot read: ``modules.json`` (sentence-transformers 6 module
paths; without it sentence-transformers 3 builds the same mean pooling, and kbsearch normalises), and the
tokenizer class name transformers 5 writes (``XLMRobertaTokenizerFast`` there, the same ``tokenizer.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from debian import _unavailable
from servers import free_port
from support import REPO

INFINITY_REQUIREMENTS = ("torch==2.13.0", "infinity-emb[server,torch]==0.0.78", "sentence-transformers==3.4.1",
                         "transformers==4.57.6")
"""What Infinity's environment gets (torch is the local CPU wheel; an unpinned one would pull a CUDA build)."""
INSTALL_TIMEOUT_S = 1800
START_TIMEOUT_S = 600
"""Hang guards only: a start normally takes 20-40 s on 2 busy cores."""
E5_NAME, CE_NAME = "e5-small", "tiny-ce"
"""The model names Infinity serves them under (the ``model`` of each request)."""


def infinity_binary() -> Path:
    """The ``infinity_emb`` executable, installing it into ``.venv-infinity`` when needed (skips/fails on failure)."""
    given = os.environ.get("KBSEARCH_TEST_INFINITY")
    if given:
        return Path(given)
    venv = REPO / ".venv-infinity"
    binary = venv / "bin" / "infinity_emb"
    if binary.exists():
        return binary
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "-q", *INFINITY_REQUIREMENTS]]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _unavailable(f"installing Infinity timed out: {' '.join(cmd)}")
        if proc.returncode != 0:
            _unavailable(f"could not install Infinity ({' '.join(cmd[:3])} ...): {proc.stderr.strip()[-500:]}")
    return binary


def served_e5_folder(e5_folder: Path, out: Path) -> Path:
    """``out``: the materialised e5 folder as Infinity's libraries read it (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (out / name).symlink_to(e5_folder / name)
    portable_tokenizer_config(e5_folder, out)
    return out


def portable_tokenizer_config(src: Path, out: Path) -> None:
    """Write ``src``'s tokenizer_config.json into ``out`` with a class name transformers 4 knows."""
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "XLMRobertaTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def tiny_cross_encoder(e5_folder: Path, out: Path) -> Path:
    """A randomly initialised one-layer BERT cross-encoder (one relevance logit) with e5's tokenizer, saved to ``out``."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    vocab = json.loads((e5_folder / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=1, max_position_embeddings=514, type_vocab_size=1,
                        pad_token_id=1)
    BertForSequenceClassification(config).save_pretrained(out)
    shutil.copy(e5_folder / "tokenizer.json", out / "tokenizer.json")
    portable_tokenizer_config(e5_folder, out)
    return out


class Infinity:
    """One Infinity server on a fixed loopback port, which tests stop and start again.

    Args:
        binary: ``infinity_emb``.
        models: ``{served name: folder}``.
    """

    def __init__(self, binary: Path, models: dict[str, Path]) -> None:
        self.binary, self.models = binary, models
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile("w+", encoding="utf-8")

    def start(self) -> None:
        """Start it and wait until it lists every model (fails the test if it exits or never answers)."""
        cmd = [str(self.binary), "v2", "--host", "127.0.0.1", "--port", str(self.port), "--url-prefix", "/v1",
               "--engine", "torch", "--device", "cpu", "--no-model-warmup", "--no-vector-disk-cache"]
        for name, folder in self.models.items():
            cmd += ["--model-id", str(folder), "--served-model-name", name]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
               "OMP_NUM_THREADS": "1"}
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"Infinity exited with {self._proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=5) as r:
                    if {m["id"] for m in json.loads(r.read())["data"]} >= set(self.models):
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        pytest.fail(f"Infinity never listed its models: {self.tail()}")

    def kill(self) -> None:
        """Kill it at once (SIGKILL: no goodbye to its clients) and wait for it to be gone."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=60)
        self._proc = None

    def tail(self, chars: int = 5000) -> str:
        """The end of its log."""
        self._log.seek(0)
        return self._log.read()[-chars:]

    def close(self) -> None:
        """Kill it and drop its log."""
        self.kill()
        self._log.close()


@contextlib.contextmanager
def infinity_server(e5_folder: Path, workdir: Path) -> Iterator[Infinity]:
    """A started Infinity serving ``e5-small`` and ``tiny-ce`` (folders made under ``workdir``)."""
    binary = infinity_binary()
    models = {E5_NAME: served_e5_folder(e5_folder, workdir / "e5-small"),
              CE_NAME: tiny_cross_encoder(e5_folder, workdir / "tiny-ce")}
    server = Infinity(binary, models)
    try:
        server.start()
        yield server
    finally:
        server.close()
