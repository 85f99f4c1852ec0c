"""The model card every cross-encoder folder trained by kbsearch carries (``kbsearch finetune``, the KB reranker).

Training writes it (``kbsearch.finetune``); serving reads the KB reranker's self-check from it
(``kbsearch.rerank.kb``). Both use this one name, so serving never imports training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD = "kbsearch_pair_model.json"
"""File name of the card inside a model folder."""


def read_card(folder: Path) -> dict[str, Any] | None:
    """The card of a model folder, or None when it has none or it is unreadable (a killed write: train again)."""
    try:
        card = json.loads((Path(folder) / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None
