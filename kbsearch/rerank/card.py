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
    """The card of a model folder, or None when it has none."""
    path = Path(folder) / CARD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
