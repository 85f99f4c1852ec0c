"""Publish operator decisions as a new build without a full re-ingest: only the new rows are embedded.

``publish_changes`` applies a ``BuildChanges`` (variants added or removed, drafted FAQs added or removed)
to the entries of a knowledge base's active build, remakes the rows in ``make_rows`` order, takes the
stored vector of every row the active build already had, embeds the others, and writes and activates
the result like any build (a fresh directory, then the atomic ACTIVE swap: a failure leaves the active
build served). So an incremental build equals a full build of the same entries, row for row.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kbsearch.config import Settings
from kbsearch.embed.base import Embedder
from kbsearch.errors import BadInputError, IndexCorruptError
from kbsearch.index.builder import (
    BuildResult,
    embed_rows,
    embedder_differences,
    ingest_report_of,
    make_rows,
    publish_rows,
    row_prompts,
)
from kbsearch.index.lock import kb_writer
from kbsearch.index.store import Build, load_build
from kbsearch.types import Chunk, FaqEntry


@dataclass(frozen=True)
class BuildChanges:
    """What to change in a knowledge base's active build.

    Applied in this order: remove entries, add entries, remove variants, add variants (so variants may be
    added to an entry added by the same change, and an entry is replaced by removing and adding its id).
    Variant texts are compared after ``strip()``.

    Attributes:
        add_variants: FAQ id -> variant texts to append; empty texts, the entry's question and variants it
            already has are skipped.
        remove_variants: FAQ id -> variant texts to remove (e.g. undoing an earlier addition); texts the
            entry does not have are skipped.
        add_entries: New FAQ entries (e.g. drafted by an operator), appended after the existing ones; their
            ids must not be in the build (unless also removed).
        add_chunks: The added entries' answer chunks, as ingest makes them
            (``chunk_entries(add_entries, settings.ingest.chunk_max_chars)``; made by the caller because the
            index layer does not import ``kbsearch.ingest``).
        remove_entries: Ids of FAQ entries to remove with their chunks (e.g. undoing a draft).
    """

    add_variants: Mapping[str, Sequence[str]] = field(default_factory=dict)
    remove_variants: Mapping[str, Sequence[str]] = field(default_factory=dict)
    add_entries: Sequence[FaqEntry] = ()
    add_chunks: Sequence[Chunk] = ()
    remove_entries: Sequence[str] = ()


def apply_changes(
    entries: Sequence[FaqEntry], chunks: Sequence[Chunk], changes: BuildChanges
) -> tuple[list[FaqEntry], list[Chunk], dict[str, int]]:
    """The entries and chunks after ``changes``, and counts of what changed.

    Existing entries and chunks keep their order, new ones follow in the order given.

    Returns:
        ``(entries, chunks, counts)``; ``counts`` has ``entries_added``, ``entries_removed``,
        ``variants_added``, ``variants_skipped`` (already present, empty or the question),
        ``variants_removed`` and ``variants_not_found``.

    Raises:
        BadInputError: an unknown FAQ id (named), an added id that already exists or repeats, a chunk of
            an entry that is not added, an added entry with an answer but no chunk, or variant texts given
            as one string instead of a list.
    """
    by_id = {e.id: e for e in entries}
    removed = set(changes.remove_entries)
    _require_known(removed, by_id, "remove_entries")
    by_id = {i: e for i, e in by_id.items() if i not in removed}
    for e in changes.add_entries:
        if e.id in by_id:
            raise BadInputError(f"add_entries: FAQ id {e.id!r} already exists (or is added twice)")
        by_id[e.id] = e
    added = {e.id for e in changes.add_entries}
    stray = sorted({c.faq_id for c in changes.add_chunks} - added)
    if stray:
        raise BadInputError(f"add_chunks: chunks of FAQ ids that add_entries does not add: {stray}")
    chunked = {c.faq_id for c in changes.add_chunks}
    for e in changes.add_entries:
        # make_rows gives such an entry no chunk rows; an answer without chunks would silently go unindexed
        if e.id not in chunked and e.answer.strip() != e.question.strip():
            raise BadInputError(f"add_entries: FAQ {e.id!r} has an answer but no chunk in add_chunks")
    counts = {"entries_added": len(added), "entries_removed": len(removed), "variants_added": 0,
              "variants_skipped": 0, "variants_removed": 0, "variants_not_found": 0}
    for name, edits in (("remove_variants", changes.remove_variants), ("add_variants", changes.add_variants)):
        _require_known(set(edits), by_id, name)
        for faq_id, texts in edits.items():
            if isinstance(texts, str):
                raise BadInputError(f"{name}[{faq_id!r}] must be a list of texts, not one string")
            edit = _add_variants if name == "add_variants" else _remove_variants
            by_id[faq_id] = edit(by_id[faq_id], texts, counts)
    kept_chunks = [c for c in chunks if c.faq_id in by_id and c.faq_id not in added]
    return list(by_id.values()), [*kept_chunks, *changes.add_chunks], counts


def _require_known(ids: set[str], by_id: Mapping[str, FaqEntry], name: str) -> None:
    unknown = sorted(ids - set(by_id))
    if unknown:
        raise BadInputError(f"{name}: unknown FAQ id {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else ""))


def _add_variants(entry: FaqEntry, texts: Sequence[str], counts: dict[str, int]) -> FaqEntry:
    have = {v.strip() for v in entry.variants} | {entry.question.strip()}
    new: list[str] = []
    for text in texts:
        t = text.strip()
        if not t or t in have:
            counts["variants_skipped"] += 1
            continue
        have.add(t)
        new.append(t)
    counts["variants_added"] += len(new)
    return dataclasses.replace(entry, variants=(*entry.variants, *new)) if new else entry


def _remove_variants(entry: FaqEntry, texts: Sequence[str], counts: dict[str, int]) -> FaqEntry:
    drop = {t.strip() for t in texts}
    kept = tuple(v for v in entry.variants if v.strip() not in drop)
    counts["variants_removed"] += len(entry.variants) - len(kept)
    counts["variants_not_found"] += len(drop - {v.strip() for v in entry.variants})
    return dataclasses.replace(entry, variants=kept) if len(kept) != len(entry.variants) else entry


def _check_embedding(current: Build, embedder: Embedder, settings: Settings) -> None:
    """Refuse to mix vectors: the active build must have been embedded as this publish would embed."""
    diff = embedder_differences(current.manifest.embedder, embedder.describe())
    prompts = row_prompts(settings)
    if current.manifest.row_prompts != prompts:
        diff["row_prompts"] = (current.manifest.row_prompts, prompts)
    if diff:
        detail = ", ".join(f"{k} {b!r} (build) != {v!r} (now)" for k, (b, v) in diff.items())
        raise IndexCorruptError(f"build {current.build_id} was embedded differently: {detail}; its vectors cannot "
                                "be reused: run `kbsearch rebuild-index` first")


def _stored_vectors(current: Build, rows: list[int]) -> tuple[np.ndarray | None, str | None]:
    """The active build's vectors of ``rows``, or ``(None, why)`` when its index cannot give them."""
    if current.vectors is None:
        return None, f"the active build's vector index did not load: {current.vector_error}"
    try:
        return current.vectors.vectors(rows), None
    except NotImplementedError as exc:  # a backend that keeps no raw vectors (e.g. a compressed index)
        return None, f"the {current.vectors.backend} index cannot give its stored vectors: {exc}"


def publish_changes(
    settings: Settings,
    kb: str,
    embedder: Embedder,
    changes: BuildChanges,
    *,
    report: dict[str, Any] | None = None,
) -> BuildResult:
    """Apply ``changes`` to ``kb``'s active build and publish the result as a new build, embedding only new rows.

    Rows the active build already has (same FAQ id, kind, text and chunk ordinal) keep their stored
    vectors; BM25 is rebuilt over all rows. When the active build's vector index cannot give its vectors,
    every row is embedded again and the report says why. The KB's writer lock is held from reading the
    active build to publishing the new one, so two publishes never lose each other's changes.

    Args:
        settings: ``home``, the ``embed`` group (batch size, row prompts) and the ``index`` group.
        kb: Knowledge-base name.
        embedder: The embedder the active build was made with (loaded here if needed).
        changes: What to change.
        report: Extra fields for the report stored with the build (e.g. which decisions are published).

    Returns:
        The new build, with ``embedded`` and ``reused`` row counts and seconds per stage (``load_build``,
        ``model_load``, ``embed``, ``index``, ``write``).

    Raises:
        NotFoundError: ``kb`` has no active build.
        BadInputError: the changes are inconsistent (see ``apply_changes``) or would remove every entry.
        IndexCorruptError: the active build is unreadable, or was embedded with another model, dimension or
            prompts (run ``kbsearch rebuild-index``).
        KbBusyError: another writer held the KB's lock for the whole wait.
    """
    with kb_writer(settings, kb, "publish changes"):  # one writer per KB: no update is lost
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        current = load_build(settings.kb_dir(kb), device="cpu", token=settings.index.milvus_token)
        t1 = time.perf_counter()
        seconds["load_build"] = t1 - t0
        entries, chunks, counts = apply_changes(list(current.entries.values()), list(current.chunks.values()), changes)
        if not entries:
            raise BadInputError(f"the changes would remove every entry of knowledge base {kb!r}")
        embedder.load()  # describe() knows the dimension only once loaded
        _check_embedding(current, embedder, settings)
        t2 = time.perf_counter()
        seconds["model_load"] = t2 - t1
        rows = make_rows(entries, chunks)
        old_row = {r: i for i, r in enumerate(current.rows)}  # IndexRow is frozen: (faq_id, kind, text, chunk) is the key
        keep = [i for i, r in enumerate(rows) if r in old_row]
        stored, fallback = _stored_vectors(current, [old_row[rows[i]] for i in keep])
        if stored is None:
            keep = []
        vectors = np.zeros((len(rows), embedder.dim), dtype=np.float32)
        if keep:
            vectors[keep] = stored
        fresh = sorted(set(range(len(rows))) - set(keep))
        if fresh:
            vectors[fresh] = embed_rows(embedder, [rows[i] for i in fresh], settings.embed.batch_size,
                                        question_rows_as=settings.embed.question_rows_as)
        seconds["embed"] = time.perf_counter() - t2
        full_report = {
            **(report or {}),
            "incremental": {
                "from_build": current.build_id,
                "changes": counts,
                "rows": {"embedded": len(fresh), "reused": len(keep), "dropped": len(old_row.keys() - set(rows))},
                "reembedded_all": fallback,
            },
            "ingest_report": ingest_report_of(current),
        }
        return publish_rows(settings, kb, entries, chunks, rows, vectors, embedder, full_report, seconds, reused=len(keep))
