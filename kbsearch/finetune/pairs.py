"""Labelled sentence pairs for training a pair model: from files, or from a knowledge base's variants.

Files: JSONL with ``a``, ``b``, ``label`` (or AFQMC's ``sentence1``, ``sentence2``, ``label``) per line,
or CSV with a header naming the same columns. ``label`` is 1 (same meaning / relevant) or 0.
A bad row is an error naming the file, the line and the field; nothing is silently skipped.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kbsearch.errors import BadInputError

#: Accepted column names, first match wins.
COLUMNS = {"a": ("a", "sentence1", "text_a", "query"), "b": ("b", "sentence2", "text_b", "doc"),
           "label": ("label",)}


@dataclass(frozen=True)
class Pair:
    """Two texts and whether they match (1) or not (0)."""

    a: str
    b: str
    label: int


def _field(row: dict, name: str, where: str) -> object:
    for key in COLUMNS[name]:
        if key in row:
            return row[key]
    raise BadInputError(f"{where}: missing field {name!r} (accepted: {', '.join(COLUMNS[name])})")


def _pair(row: dict, where: str) -> Pair:
    a, b, label = (_field(row, n, where) for n in ("a", "b", "label"))
    for name, text in (("a", a), ("b", b)):
        if not isinstance(text, str) or not text.strip():
            raise BadInputError(f"{where}: field {name!r} must be a non-empty string, got {text!r}")
    try:
        value = int(str(label).strip())
    except ValueError:
        value = -1
    if value not in (0, 1):
        raise BadInputError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
    return Pair(a.strip(), b.strip(), value)


def load_pairs(path: Path) -> list[Pair]:
    """Read a pairs file (``.jsonl``/``.json`` lines or ``.csv``/``.tsv``).

    Raises:
        BadInputError: the file is missing, empty, of an unknown type, or a row is bad (the error
            names ``file:line`` and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such pairs file")
    suffix = path.suffix.lower()
    pairs: list[Pair] = []
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadInputError(f"{path}:{n}: not JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise BadInputError(f"{path}:{n}: expected an object with a, b, label")
                pairs.append(_pair(row, f"{path}:{n}"))
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            for n, row in enumerate(reader, start=2):
                pairs.append(_pair(row, f"{path}:{n}"))
    else:
        raise BadInputError(f"{path}: pairs must be .jsonl or .csv (a,b,label or sentence1,sentence2,label)")
    if not pairs:
        raise BadInputError(f"{path}: no pairs")
    return pairs


def kb_pairs(variants: Iterable[tuple], negatives: int = 3) -> list[Pair]:
    """Pairs from a knowledge base's own phrasings: positives and first-stage hard negatives.

    Args:
        variants: ``(faq_id, text, docs)`` per variant phrasing, where ``docs`` maps FAQ ids to the
            document the reranker reads for them, in the first stage's rank order, and includes
            ``faq_id`` itself (further tuple items, such as first-stage scores, are ignored).
        negatives: Hard negatives per positive: the best-ranked FAQs other than the right one.
    """
    pairs: list[Pair] = []
    for faq_id, text, docs, *_ in variants:
        pairs.append(Pair(text, docs[faq_id], 1))
        wrong = [f for f in docs if f != faq_id][:negatives]
        pairs.extend(Pair(text, docs[f], 0) for f in wrong)
    return pairs


def split_dev(pairs: list[Pair], share: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded random ``share`` of ``pairs`` held out as the dev split."""
    if not 0 < share < 1:
        raise BadInputError(f"dev share must be between 0 and 1, got {share}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(len(pairs) * share))
    return [pairs[i] for i in order[cut:]], [pairs[i] for i in order[:cut]]
