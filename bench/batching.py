"""Questions per second through ``QueryEngine.ask`` at 1 and 16 concurrent threads, in process, on an ingested KB.

The README's figures for cross-request batching and the model thread (``kbsearch/retrieve/batching.py``)
and for ``torch_threads`` come from this script: run it once per setting, side by side.

    .venv/bin/python bench/batching.py --home HOME --kb unionpay_faq --threads 2
    .venv/bin/python bench/batching.py --home HOME --kb unionpay_faq --threads 1
    .venv/bin/python bench/batching.py --home HOME --kb unionpay_faq --threads 2 --batch 1   # no batching
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, help="an ingested KBSEARCH_HOME")
    ap.add_argument("--kb", default="unionpay_faq")
    ap.add_argument("--queries", default=str(REPO.parent / "shared" / "benchmarks" / "unionpay_faq" / "queries_dev.jsonl"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = auto)")
    ap.add_argument("--batch", type=int, default=32, help="retrieve.question_batch")
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()

    from kbsearch.config import Settings
    from kbsearch.devices import configure_torch_threads, torch_threads_for

    configure_torch_threads(torch_threads_for(args.threads))
    from kbsearch.service import make_engine

    qs = [json.loads(line)["query"] for line in Path(args.queries).read_text(encoding="utf-8").splitlines()[:400]]
    s = Settings(home=Path(args.home), rerank={"backend": "none"},
                 retrieve={"workers": 32, "question_batch": args.batch})
    engine = make_engine(s)
    engine.load(args.kb)
    for q in qs[:5]:
        engine.ask(q, kb=args.kb)
    for clients in (1, 16):
        stop, done, lat, lock = time.monotonic() + args.seconds, [0], [], threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                t = time.perf_counter()
                engine.ask(rng.choice(qs), kb=args.kb)
                with lock:
                    done[0] += 1
                    lat.append(time.perf_counter() - t)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lat.sort()
        print(f"torch threads {torch_threads_for(args.threads)}, batch {args.batch}, {clients:>2} clients: "
              f"{done[0] / args.seconds:6.1f} q/s, p50 {lat[len(lat) // 2] * 1000:6.1f} ms", flush=True)
    engine.close()


if __name__ == "__main__":
    main()
