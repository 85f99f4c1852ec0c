"""ONNX Runtime for a BERT-style sentence embedder on the CPU (the bundled e5-small's default runtime).

The model's ``BertModel`` is exported once, when the model folder is materialised
(:func:`export_bert_onnx`, into ``onnx/model.onnx`` beside the safetensors, checksummed with the rest),
and :class:`OnnxEncoder` runs it with ONNX Runtime: the same tokenizer (the folder's, through
transformers), the prompt included in the mean pooling, texts sorted by length and cut into batches, as
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
"""Where the export lies inside a model folder."""
OPSET = 17


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def export_bert_onnx(folder: Path) -> Path:
    """Export the transformers model in ``folder`` to ``folder/onnx/model.onnx`` (token states out).

    Inputs ``input_ids`` and ``attention_mask`` (int64, batch × sequence, both axes dynamic); output
    ``last_hidden_state``. The export is deterministic: the same weights give the same bytes.

    Args:
        folder: A sentence-transformers / transformers model folder with ``config.json`` and weights.

    Returns:
        The ONNX file written.

    Raises:
        MissingDependencyError: torch or transformers is missing.
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

    out = folder / ONNX_FILE
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
    return out


class OnnxEncoder:
    """The part of ``SentenceTransformer`` the embedders call (``encode``, ``max_seq_length``, the
    tokenizer, the dimension), run by ONNX Runtime on the CPU; mean pooling, no normalisation (the
    embedder normalises after its Matryoshka cut, as for torch).

    Args:
        folder: A model folder holding ``onnx/model.onnx`` and the tokenizer files.
        threads: ONNX Runtime intra-op threads; 0 = its default (one per physical core).
        max_positions: The model's position limit (``max_seq_length`` is capped at it).
    """

    def __init__(self, folder: Path, threads: int = 0, max_positions: int = 512) -> None:
        try:
            import onnxruntime as ort
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise MissingDependencyError(f"the onnx runtime needs `pip install onnxruntime`: {exc}") from exc
        path = folder / ONNX_FILE
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # EXTENDED has the transformer fusions; ALL adds only layout passes for convolutions, and 0.8 s to each load
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: the service's request threads need the same cores.
        # A real server, 1k rows, 2 cores: 16 clients 32.6 -> 39.0 answers/s, one client 28.8 -> 26.8, and
        # 1.84 -> 1.26 cores busy at one client.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:  # onnxruntime raises its own (non-OSError) exception types for a bad file
            raise BackendError(f"could not load {path} with ONNX Runtime: {exc}") from exc
        self.max_positions = max_positions
        self.max_seq_length = max_positions
        self._dim = int(self.session.get_outputs()[0].shape[-1])

    def get_embedding_dimension(self) -> int:
        return self._dim

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
            enc = self.tokenizer([full[i] for i in idx], padding=True, truncation=True,
                                 max_length=min(self.max_seq_length, self.max_positions), return_tensors="np")
            mask = enc["attention_mask"].astype(np.int64)
            try:
                states = self.session.run(["last_hidden_state"], {"input_ids": enc["input_ids"].astype(np.int64),
                                                                  "attention_mask": mask})[0]
            except Exception as exc:  # ONNX Runtime's errors derive from Exception only
                raise BackendError(f"ONNX Runtime failed: {type(exc).__name__}: {exc}") from exc
            weights = mask[..., None].astype(np.float32)
            out[idx] = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return out
