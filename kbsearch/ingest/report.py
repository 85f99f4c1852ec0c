"""What an ingest run did, row by row, in a form a support team can read and a machine can check.

Every row the parsers read ends up in exactly one bucket, and the report states the arithmetic::

    rows read = loaded + rejected + identical repeats
    loaded    = kept + merged + expired

*rejected* rows were unusable (empty question, bad date, invalid JSON line, ...), *identical repeats*
are rows whose id and content exactly repeat an earlier row (folded silently, but counted), *merged*
entries were folded into a near-duplicate canonical entry, *expired* entries are outside their validity
window. *Flagged* entries (dated policy text) are part of *kept*. ``IngestReport.check()`` asserts the
arithmetic; ``to_json()`` gives everything, ``render()`` a human-readable summary with capped lists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: How many items of each list ``render()`` prints before "... and N more".
RENDER_LIST_LIMIT = 30


@dataclass(frozen=True)
class Problem:
    """A rejected row, an unreadable file, or a note about a file.

    Attributes:
        file: The file as it was named or found.
        line: Line (text formats), sheet row (XLSX) or item number (JSON array), 1-based; None for
            a problem with the whole file.
        reason: What is wrong, in words.
    """

    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line is not None else f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class EntryNote:
    """Something that happened to one entry (expired, flagged)."""

    id: str
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.id} ({self.source}): {self.reason}"


@dataclass(frozen=True)
class MergedCluster:
    """Near-duplicate entries folded into one canonical entry.

    Attributes:
        canonical_id: The id that was kept.
        members: ``(id, question)`` of every entry in the cluster, the canonical first.
    """

    canonical_id: str
    members: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        (cid, cq), *rest = self.members
        folded = "; ".join(f"{i} {q!r}" for i, q in rest)
        return f"{cid} {cq!r} <- {folded}"


@dataclass(frozen=True)
class PairNote:
    """Two entries with near-duplicate questions that were *not* merged, and why.

    Used for conflicts (same question, incompatible answer/section/validity: both kept so a person
    can decide) and for possible duplicates (similar questions the key-term guard kept apart).
    """

    a: tuple[str, str]
    b: tuple[str, str]
    reason: str

    def __str__(self) -> str:
        return f"{self.a[0]} {self.a[1]!r} / {self.b[0]} {self.b[1]!r}: {self.reason}"


@dataclass
class IngestReport:
    """Counts, per-row reasons and stage timings of one ingest run.

    Attributes:
        files: Files that were parsed (fully or partly).
        skipped_files: Files found in directories with an unsupported extension (not read).
        file_errors: Files that could not be read at all (undecodable, corrupt, no question column).
        notes: Per-file remarks that lose nothing important (unknown columns, text outside questions).
        rows_read: Records the parsers produced (good or bad), blank rows excluded.
        rejected: Rows that were unusable, with file, line and reason.
        identical_repeats: Rows repeating an earlier row's id and content exactly (folded).
        loaded: Distinct valid entries after validation.
        answers_from_question: Entries whose empty answer was filled with the question (intent datasets,
            ``answers_from_questions``).
        expired: Entries outside their validity window on the ingest day (not kept).
        merged: Clusters of near-duplicates folded into a canonical entry.
        conflicts: Near-duplicate questions kept apart because answer/section/validity differ.
        possible_duplicates: Similar questions the key-term guard refused to merge (for review).
        flagged: Kept entries carrying a warning flag (e.g. dated policy text).
        kept: Entries in the result.
        chunks: Chunks produced from the kept entries.
        stage_seconds: Wall-clock seconds per stage, in run order (later stages add theirs).
    """

    files: list[str] = field(default_factory=list)
    skipped_files: list[Problem] = field(default_factory=list)
    file_errors: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    rows_read: int = 0
    rejected: list[Problem] = field(default_factory=list)
    identical_repeats: int = 0
    loaded: int = 0
    answers_from_question: int = 0
    expired: list[EntryNote] = field(default_factory=list)
    merged: list[MergedCluster] = field(default_factory=list)
    conflicts: list[PairNote] = field(default_factory=list)
    possible_duplicates: list[PairNote] = field(default_factory=list)
    flagged: list[EntryNote] = field(default_factory=list)
    kept: int = 0
    chunks: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def merged_entries(self) -> int:
        """Entries folded into another (cluster members other than the canonical one)."""
        return sum(len(c.members) - 1 for c in self.merged)

    def add_stage(self, name: str, seconds: float) -> None:
        """Record (or add to) the wall-clock seconds of a stage, e.g. ``embed`` or ``index``."""
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + seconds

    def arithmetic(self) -> str:
        """The two balance equations in words, e.g. ``read 120 = loaded 113 + rejected 5 + ...``."""
        return (
            f"read {self.rows_read} = loaded {self.loaded} + rejected {len(self.rejected)}"
            f" + identical repeats {self.identical_repeats}; "
            f"loaded {self.loaded} = kept {self.kept} + merged {self.merged_entries}"
            f" + expired {len(self.expired)}"
        )

    def check(self) -> None:
        """Assert that every row is accounted for.

        Raises:
            AssertionError: When the counts do not add up (a bug in ingest, never bad input).
        """
        if self.rows_read != self.loaded + len(self.rejected) + self.identical_repeats or (
            self.loaded != self.kept + self.merged_entries + len(self.expired)
        ):
            raise AssertionError(f"ingest counts do not add up: {self.arithmetic()}")

    def to_json(self) -> dict[str, Any]:
        """Return every count and list as JSON-serialisable values."""
        d = dataclasses.asdict(self)
        d["rejected_count"] = len(self.rejected)
        d["merged_entries"] = self.merged_entries
        d["expired_count"] = len(self.expired)
        d["flagged_count"] = len(self.flagged)
        d["arithmetic"] = self.arithmetic()
        return d

    def render(self) -> str:
        """Return a human-readable summary: a table of counts, then each list (capped)."""
        files = f"{len(self.files)} read"
        if self.skipped_files:
            files += f", {len(self.skipped_files)} skipped (unsupported type)"
        if self.file_errors:
            files += f", {len(self.file_errors)} unreadable"
        rows = [
            ("files", files),
            ("rows read", f"{self.rows_read} = loaded {self.loaded} + rejected {len(self.rejected)}"
             f" + identical repeats {self.identical_repeats}"),
            ("loaded", f"{self.loaded} = kept {self.kept} + merged {self.merged_entries}"
             f" + expired {len(self.expired)}"),
            ("merged", f"{self.merged_entries} entries in {len(self.merged)} clusters"),
            ("conflicts", f"{len(self.conflicts)} near-duplicate questions kept apart"),
            ("possible dups", f"{len(self.possible_duplicates)} similar questions not merged (key-term guard)"),
            ("flagged", f"{len(self.flagged)} kept entries with warnings"),
            ("empty answers", f"{self.answers_from_question} filled with the question (answers from questions)"),
            ("kept", str(self.kept)),
            ("chunks", str(self.chunks)),
            ("seconds", "  ".join(f"{k} {v:.2f}" for k, v in self.stage_seconds.items())),
        ]
        width = max(len(k) for k, _ in rows)
        out = ["ingest report"] + [f"  {k:<{width}}  {v}" for k, v in rows]
        sections: list[tuple[str, list[Any]]] = [
            ("unreadable files", self.file_errors),
            ("rejected rows", self.rejected),
            ("skipped files", self.skipped_files),
            ("expired (not kept)", self.expired),
            ("merged clusters (canonical <- folded)", self.merged),
            ("conflicts (kept apart: a person should decide)", self.conflicts),
            ("possible duplicates (kept apart by the key-term guard)", self.possible_duplicates),
            ("flagged (kept)", self.flagged),
            ("notes", self.notes),
        ]
        for title, items in sections:
            if not items:
                continue
            out.append(f"{title}: {len(items)}")
            out.extend(f"  {item}" for item in items[:RENDER_LIST_LIMIT])
            if len(items) > RENDER_LIST_LIMIT:
                out.append(f"  ... and {len(items) - RENDER_LIST_LIMIT} more (see the JSON report)")
        return "\n".join(out)
