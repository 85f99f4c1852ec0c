"""ONNX Runtime for a BERT-style sentence embedder on the CPU (the bundled e5-small's default runtime).

The model's ``BertModel`` is exported once, when the model folder is materialised
(:func:`export_bert_onnx`, into ``onnx/model.onnx`` beside the safetensors, checksummed with the rest,
and stored as ONNX Runtime's optimised graph with memory-mapped weights: :func:`optimize_onnx`), and
:class:`OnnxEncoder` runs it with ONNX Runtime: the same tokenizer (the folder's ``tokenizer.json``,
loaded by ``tokenizers``), the prompt included in the mean pooling, texts sorted by length and cut into batches, as
sentence-transformers does. The vectors equal the torch path's (cosine ≥ 0.99999 on the benchmarks'
questions; ``tests/test_embed.py``), so builds made with either runtime serve with the other.

Why it runs the service's questions on the CPU (``bench/onnx_runtime.py``, 2 cores, torch's figures
for comparison): a question alone is embedded 2.4× faster than by torch (50.0 against 20.8 questions/s),
because one ``session.run`` replaces hundreds of eager torch calls dispatched from Python; that one
call also releases the GIL for the whole forward pass, so request threads and the model thread stop
taking it from each other. 16 short questions per call: 1.26× (73.4 against 58.1). Long texts in large
batches (ingest's answers) are slower: 0.71× (15.9 against 22.4 answers/s), so ``runtime=auto`` hands
calls of more than 64 texts to torch (``E5SmallEmbedder``). int8 dynamic quantisation of this export was
faster still (83.4 questions/s alone) but moved vector top-1 by −0.018 (unionpay_faq) and −0.021
(stackfaq), outside the ±0.005 allowed, with cosines to torch down to 0.981: it is not offered.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.errors import BackendError, MissingDependencyError

logger = logging.getLogger(__name__)

ONNX_FILE = "onnx/model.onnx"
"""Where the graph lies inside a model folder; its weights are in ``ONNX_FILE + ".data"`` beside it."""
OPSET = 17
_EXPORT_FILE = "onnx/export.onnx"  # torch's export before ONNX Runtime optimises it (removed after)


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def onnxruntime_version() -> str | None:
    """The installed ``onnxruntime``'s version (from its metadata, without importing it), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime")
    except PackageNotFoundError:
        return None


def export_bert_onnx(folder: Path, optimize: bool = True) -> Path:
    """Export the transformers model in ``folder`` to ``folder/onnx/model.onnx`` (token states out).

    Inputs ``input_ids`` and ``attention_mask`` (int64, batch × sequence, both axes dynamic); output
    ``last_hidden_state``. With ``optimize`` (the default) the file holds ONNX Runtime's optimised graph
    (:func:`optimize_onnx`; load it with ``OnnxEncoder(..., optimized=True)``), else torch's plain export.
    Both are deterministic: the same weights give the same bytes.

    Args:
        folder: A sentence-transformers / transformers model folder with ``config.json`` and weights.
        optimize: Store ONNX Runtime's optimised graph, its weights in ``model.onnx.data``.

    Returns:
        The ONNX file written.

    Raises:
        MissingDependencyError: torch or transformers (or, to optimise, onnxruntime) is missing.
        BackendError: ONNX Runtime could not optimise the export.
    """
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise MissingDependencyError(f"exporting the model to ONNX needs torch and transformers: {exc}") from exc

    class _TokenStates(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    out = folder / (_EXPORT_FILE if optimize else ONNX_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    from kbsearch.devices import quiet_model_loading

    quiet_model_loading()
    model = _TokenStates(AutoModel.from_pretrained(str(folder), add_pooling_layer=False).eval())
    example = (torch.tensor([[0, 35378, 12, 2]], dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches in transformers
        torch.onnx.export(model, example, str(out), dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    if not optimize:
        return out
    try:
        return optimize_onnx(out, folder / ONNX_FILE)
    finally:
        out.unlink(missing_ok=True)


def _session_options(threads: int, level: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    options.log_severity_level = 3
    # Idle intra-op threads sleep instead of spinning: the service's request threads need the same cores.
    # A real server, 1k rows, 2 cores: 16 clients 32.6 -> 39.0 answers/s, one client 28.8 -> 26.8, and
    # 1.84 -> 1.26 cores busy at one client.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def optimize_onnx(source: Path, out: Path) -> Path:
    """Write ONNX Runtime's optimised graph of ``source`` to ``out``, its weights to ``out`` + ``.data``.

    Done once, when a model folder is materialised, instead of at every start. Measured on 2 cores with
    the e5-small export: a session loads in 0.2 s instead of 2.9 s, and the weights are memory-mapped
    from the ``.data`` file instead of copied, so a server holds about 100 MB of them instead of 520 MB
    (the 250k-row word-embedding table is paged in only where questions touch it). The questions' vectors
    and speed are the same (identical outputs; ``tests/test_embed.py``, ``bench/onnx_runtime.py``).

    The optimisation level is ``EXTENDED`` (the transformer fusions: attention, GELU, layer norm), which
    is specific to ONNX Runtime's CPU provider and its version but not to the processor (``ALL`` would
    add processor-specific layouts, and nothing for this model): the e5 folder records the
    ``onnxruntime`` version and is rebuilt when it changes.

    Raises:
        MissingDependencyError: onnxruntime is missing.
        BackendError: ONNX Runtime could not load or optimise ``source``.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(f"optimising an ONNX model needs `pip install onnxruntime`: {exc}") from exc
    options = _session_options(1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    options.optimized_model_filepath = str(out)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (non-OSError) exception types
        raise BackendError(f"ONNX Runtime could not optimise {source}: {exc}") from exc
    return out


class OnnxEncoder:
    """The part of ``SentenceTransformer`` the embedders call (``encode``, ``max_seq_length``, the
    dimension), run by ONNX Runtime on the CPU; mean pooling, no normalisation (the embedder normalises
    after its Matryoshka cut, as for torch).

    The tokenizer is the folder's ``tokenizer.json`` loaded by ``tokenizers`` itself (``tokenizer``, a
    ``tokenizers.Tokenizer``), not through transformers' ``AutoTokenizer``: the same token ids (the
    special tokens, truncation to ``max_seq_length`` and padding as transformers configures them), without
    importing transformers' model registry and parsing the 250k-piece JSON twice (about 1 s of a start).

    Args:
        folder: A model folder holding ``onnx/model.onnx`` and ``tokenizer.json``.
        threads: ONNX Runtime intra-op threads; 0 = its default (one per physical core).
        max_positions: The model's position limit (``max_seq_length`` is capped at it).
        optimized: The file is ONNX Runtime's optimised graph (:func:`optimize_onnx`): load it as it is.
            False: a plain export, optimised in memory at every load (seconds).
    """

    def __init__(self, folder: Path, threads: int = 0, max_positions: int = 512, optimized: bool = True) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise MissingDependencyError(f"the onnx runtime needs `pip install onnxruntime`: {exc}") from exc
        path = folder / ONNX_FILE
        level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        try:
            self.session = ort.InferenceSession(str(path), _session_options(threads, level),
                                                providers=["CPUExecutionProvider"])
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # onnxruntime and tokenizers raise their own (non-OSError) exception types
            raise BackendError(f"could not load {path} with ONNX Runtime: {exc}") from exc
        pad = self.tokenizer.token_to_id("<pad>")
        self.tokenizer.enable_padding(pad_id=0 if pad is None else pad, pad_token="<pad>")
        self.max_positions = max_positions
        self.max_seq_length = max_positions
        self._dim = int(self.session.get_outputs()[0].shape[-1])

    def get_embedding_dimension(self) -> int:
        return self._dim

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, ``(len(texts), longest)`` int64 each: special tokens added,
        each text cut to ``max_seq_length`` tokens (keeping its closing token), padded with ``<pad>``."""
        limit = min(self.max_seq_length, self.max_positions)
        if (self.tokenizer.truncation or {}).get("max_length") != limit:
            self.tokenizer.enable_truncation(max_length=limit)
        encodings = self.tokenizer.encode_batch(texts)
        return (np.array([e.ids for e in encodings], dtype=np.int64),
                np.array([e.attention_mask for e in encodings], dtype=np.int64))

    def encode(self, texts: list[str], *, prompt: str = "", batch_size: int = 32, **_: Any) -> np.ndarray:
        """Mean-pooled token states of ``prompt + text`` for each text, ``(len(texts), dim)`` float32.

        Texts are sorted by length and embedded ``batch_size`` at a time (less padding), as
        sentence-transformers does; the rows come back in the input's order.
        """
        full = [prompt + t for t in texts]
        order = np.argsort([-len(t) for t in full], kind="stable")
        out = np.empty((len(full), self._dim), dtype=np.float32)
        for start in range(0, len(full), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = self.tokenize([full[i] for i in idx])
            try:
                states = self.session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
            except Exception as exc:  # ONNX Runtime's errors derive from Exception only
                raise BackendError(f"ONNX Runtime failed: {type(exc).__name__}: {exc}") from exc
            weights = mask[..., None].astype(np.float32)
            out[idx] = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return out
