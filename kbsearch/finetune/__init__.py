"""Fine-tuning stage: train a pair model (``kbsearch finetune``) for reranking and ``/similarity``.

``collect_pairs`` gathers labelled pairs from files and/or a knowledge base's own variants (positives:
variant <-> its FAQ; hard negatives: other FAQs the first stage ranks high for that variant);
``finetune`` trains and writes a model folder with a model card.
"""

from __future__ import annotations

from pathlib import Path

from kbsearch.config import RerankDoc, Settings
from kbsearch.errors import BadInputError
from kbsearch.finetune.pairs import Pair, kb_pairs, load_pairs, split_dev
from kbsearch.finetune.train import Recipe, TrainResult, finetune, pair_metrics
from kbsearch.rerank.card import read_card


def default_base(settings: Settings) -> str:
    """The bundled e5-small as a local folder (materialised on first use)."""
    from kbsearch.embed.e5_small import materialize_e5_small

    return str(materialize_e5_small(settings.model_cache))


def variant_pairs(settings: Settings, kb: str, negatives: int, *, doc: RerankDoc = "faq", max_variants: int = 0,
                  seed: int = 42) -> list[Pair]:
    """Training pairs from ``kb``'s variants, with hard negatives from its own vector index.

    Each variant row's stored vector searches the active build (its own row excluded); the FAQs it
    ranks highest other than its own are the hard negatives (see ``kb.mine_variants`` for ``doc``).
    ``max_variants`` > 0 trains on a seeded sample of that many variants.
    """
    from kbsearch.finetune.kb import mine_variants, variant_rows
    from kbsearch.index.store import active_build_id, load_build

    kb_dir = settings.kb_dir(kb)
    if active_build_id(kb_dir) is None:
        raise BadInputError(f"knowledge base {kb!r} has no build: run kbsearch ingest first")
    build = load_build(kb_dir, device="cpu")
    if build.vectors is None:
        raise BadInputError(f"knowledge base {kb!r}: vector index unavailable ({build.vector_error})")
    rows = variant_rows(build, max_variants, seed)
    if not rows:
        raise BadInputError(f"knowledge base {kb!r} has no variants to train on")
    return kb_pairs(mine_variants(build, rows, negatives, doc), negatives)


def collect_pairs(settings: Settings, files: list[Path], dev_file: Path | None, dev_share: float, kb: str | None,
                  negatives: int, seed: int) -> tuple[list[Pair], list[Pair], list[str]]:
    """Training pairs, dev pairs and a provenance list from the sources the CLI names.

    Without ``dev_file``, a seeded ``dev_share`` of the collected pairs is held out.
    """
    train: list[Pair] = []
    data: list[str] = []
    for f in files:
        got = load_pairs(f)
        train += got
        data.append(f"{f} ({len(got)} pairs)")
    if kb:
        got = variant_pairs(settings, kb, negatives)
        train += got
        data.append(f"kb {kb!r} variants: {len(got)} pairs ({negatives} hard negatives per variant)")
    if not train:
        raise BadInputError("no training pairs: give --pairs FILE and/or --kb NAME")
    if dev_file is not None:
        dev = load_pairs(dev_file)
        data.append(f"dev: {dev_file} ({len(dev)} pairs)")
    else:
        train, dev = split_dev(train, dev_share, seed)
        data.append(f"dev: seeded {dev_share:.0%} hold-out ({len(dev)} pairs)")
    return train, dev, data


__all__ = ["Pair", "Recipe", "TrainResult", "collect_pairs", "default_base", "finetune", "load_pairs",
           "pair_metrics", "read_card", "variant_pairs"]
