"""The remote model path next to the in-process one, side by side in one run.

Starts Infinity (the third-party OpenAI-compatible server the suite uses, ``tests/modelserver.py``) on loopback
serving the bundled e5-small, ingests the sample KB twice with the real CLI (``embed.backend`` ``e5-small`` and
``openai`` with ``prompt_style=e5``), serves each build with ``kbsearch serve`` in turn and drives ``/ask`` at 1
and 4 clients (``rerank.backend=none``, so both paths run the same stages). Also times one question's embedding
alone through each backend. Prints a Markdown table and writes it to ``docs/remote_models.md``.

Both servers share this machine's cores with Infinity, so the remote path pays for a second process on the
same CPUs and for HTTP; on a deployment the model server runs on its own GPU box.

    .venv/bin/python bench/remote_models.py [--seconds 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]
from loadgen import drive, percentile  # noqa: E402
from modelserver import E5_NAME, infinity_server  # noqa: E402
from perf import Server  # noqa: E402
from servers import CLI  # noqa: E402
from support import REPO, sample_questions  # noqa: E402

from kbsearch.embed.e5_small import E5_DOCUMENT_PROMPT, E5_QUERY_PROMPT, E5SmallEmbedder, materialize_e5_small  # noqa: E402
from kbsearch.embed.remote import OpenAIEmbedder  # noqa: E402


def embed_ms(embedder, questions: list[str], rounds: int = 3) -> list[float]:
    """Milliseconds of each single-question ``embed_queries`` call, after one warm-up call."""
    embedder.embed_queries(questions[:1])
    out = []
    for _ in range(rounds):
        for q in questions:
            t = time.perf_counter()
            embedder.embed_queries([q])
            out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="Length of each load level.")
    ap.add_argument("--work", type=Path, default=None, help="Work directory (default: a temporary one).")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "remote_models.md")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kbsearch-remote-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "model-cache"
    folder = materialize_e5_small(cache)
    questions = [q for q, _ in sample_questions()]
    rows = []
    with infinity_server(folder, work / "infinity") as infinity:
        local = E5SmallEmbedder(cache, device="cpu")
        local.load()
        remote = OpenAIEmbedder(infinity.base_url, E5_NAME, query_prompt=E5_QUERY_PROMPT,
                                document_prompt=E5_DOCUMENT_PROMPT)
        remote.load()
        alone = {"in-process": embed_ms(local, questions), "remote (Infinity)": embed_ms(remote, questions)}
        base_env = {**os.environ, "KBSEARCH_MODEL_CACHE": str(cache), "KBSEARCH_RERANK__BACKEND": "none",
                    "KBSEARCH_KB_RERANKER__AUTO_TRAIN": "false", "KBSEARCH_QUESTIONLOG__ENABLED": "false"}
        envs = {
            "in-process": {**base_env, "KBSEARCH_HOME": str(work / "home-local")},
            "remote (Infinity)": {**base_env, "KBSEARCH_HOME": str(work / "home-remote"),
                                  "KBSEARCH_EMBED__BACKEND": "openai", "KBSEARCH_EMBED__BASE_URL": infinity.base_url,
                                  "KBSEARCH_EMBED__MODEL": E5_NAME, "KBSEARCH_EMBED__PROMPT_STYLE": "e5"},
        }
        for name, env in envs.items():
            t = time.perf_counter()
            subprocess.run(CLI + ["ingest", str(REPO / "kb")], env=env, check=True, capture_output=True)
            ingest_s = time.perf_counter() - t
            server = Server(env, work / f"serve-{name.split()[0]}.log")
            try:
                for clients in (1, 4):
                    level = drive(server.base, clients, args.seconds, questions)
                    ok = level.ok_ms
                    embeds = level.stages_ms.get("embed", [])
                    rows.append((name, clients, len(ok) / level.seconds, percentile(ok, 0.5), percentile(ok, 0.95),
                                 percentile(embeds, 0.5), level.degraded, len(level.errors), ingest_s))
            finally:
                server.close()
    lines = [
        "# The remote model path next to the in-process one",
        "",
        f"`bench/remote_models.py --seconds {args.seconds:g}`, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. The sample KB, `rerank.backend=none`, e5-small "
        "in process (ONNX Runtime for questions) against the same weights served by Infinity 0.0.78 (torch, CPU) on "
        "the same machine: both kbsearch and Infinity share its cores.",
        "",
        "| path | clients | req/s | /ask p50 ms | /ask p95 ms | embed stage p50 ms | degraded | errors | ingest s |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {n} | {c} | {rps:.1f} | {p50:.1f} | {p95:.1f} | {e50:.1f} | {d} | {err} | {ing:.1f} |"
          for n, c, rps, p50, p95, e50, d, err, ing in rows],
        "",
        "One question embedded alone, by the library call (3 rounds of the sample questions):",
        "",
        "| backend | p50 ms | p95 ms |",
        "|---|---|---|",
        *[f"| {n} | {statistics.median(v):.1f} | {percentile(v, 0.95):.1f} |" for n, v in alone.items()],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
