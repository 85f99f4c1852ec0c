"""Ingest's embedding throughput next to the bare model on the same texts, side by side in one run.

``embed_rows`` (what ingest and rebuild-index call) against one ``SentenceTransformer.encode`` call over all
the texts (which sorts them by length, so batches carry little padding): rows/s of each, and the ratio.
Rows are a KB's index rows (question, variant and answer-chunk texts) from the shared benchmarks.

    .venv/bin/python bench/embed_throughput.py                     # banking77, 3,000 rows
    .venv/bin/python bench/embed_throughput.py --kb unionpay_faq --rows 1500
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kbsearch.config import Settings  # noqa: E402
from kbsearch.embed.e5_small import E5SmallEmbedder  # noqa: E402
from kbsearch.index.builder import embed_rows  # noqa: E402
from kbsearch.types import IndexRow  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kb", default="banking77")
    ap.add_argument("--rows", type=int, default=3000)
    args = ap.parse_args()
    texts: list[str] = []
    for line in (REPO.parent / "shared" / "benchmarks" / args.kb / "kb.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["question"], *(row.get("variants") or [])]
    texts = texts[: args.rows]
    rows = [IndexRow(faq_id="x", kind="variant", text=t) for t in texts]
    settings = Settings()
    emb = E5SmallEmbedder(settings.model_cache, device="cpu", batch_size=settings.embed.batch_size)
    emb.load()
    emb.embed_queries(texts[:64])  # warm up
    t = time.perf_counter()
    emb._encoder_for(len(texts)).encode(texts, prompt=emb.query_prompt, batch_size=emb.batch_size, show_progress_bar=False)
    bare = time.perf_counter() - t
    t = time.perf_counter()
    embed_rows(emb, rows, settings.embed.batch_size)
    ours = time.perf_counter() - t
    print(f"{args.kb}: {len(texts)} rows, e5-small, batch {emb.batch_size}, {platform.machine()} "
          f"({platform.python_version()})")
    print(f"  bare model (one encode call): {len(texts) / bare:.0f} rows/s ({bare:.1f} s)")
    print(f"  embed_rows (ingest):          {len(texts) / ours:.0f} rows/s ({ours:.1f} s)")
    print(f"  ingest / bare time: {ours / bare:.2f}")


if __name__ == "__main__":
    main()
