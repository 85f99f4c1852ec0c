"""Ingest stage: FAQ files in, validated, deduplicated, chunked ``FaqEntry``/``Chunk`` values out.

One module per step, in run order: ``parse`` (files of every format -> raw records), ``validate``
(records -> entries, bad rows rejected with reasons), ``expiry`` (validity windows, dated-policy flags),
``dedupe`` (near-duplicate merging with a key-term guard), ``chunk`` (long answers -> chunks) and
``report`` (counts and reasons). ``run_ingest`` in ``pipeline`` runs them all and is the entry point.
"""

from kbsearch.ingest.pipeline import IngestResult, check_rejects, run_ingest
from kbsearch.ingest.report import IngestReport

__all__ = ["IngestReport", "IngestResult", "check_rejects", "run_ingest"]
