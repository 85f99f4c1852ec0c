"""What a reranker reads for a candidate FAQ: the one rule serving and training share.

``doc = "faq"``: the matched answer chunk (which starts with its section and question), or the FAQ's
question and answer. ``doc = "question"``: the matched question or variant, else the FAQ's question
(question-question pair models such as each KB's own reranker).
"""

from __future__ import annotations

from collections.abc import Mapping

from kbsearch.config import RerankDoc
from kbsearch.types import Chunk, FaqEntry, IndexRow


def faq_text(entry: FaqEntry) -> str:
    """The whole-FAQ document: question, newline, answer."""
    return f"{entry.question}\n{entry.answer}"


def reranker_text(entry: FaqEntry, row: IndexRow | None, doc: RerankDoc,
                  chunks: Mapping[tuple[str, int], Chunk]) -> str:
    """The text a reranker judges for ``entry`` when ``row`` matched best (None: no row is known).

    Args:
        entry: The candidate FAQ.
        row: The index row that matched best, or None.
        doc: ``faq`` or ``question`` (see the module docstring).
        chunks: The build's chunks by ``(faq_id, ordinal)``, to show a matched answer chunk.
    """
    if doc == "question":
        return row.text if row is not None and row.kind != "chunk" else entry.question
    if row is not None and row.kind == "chunk":
        chunk = chunks.get((entry.id, row.chunk))
        if chunk is not None:
            return chunk.text
    return faq_text(entry)
