"""The KB reranker trains outside ingest: started in the background once the new build is live, and a
killed training resumes from its checkpoint (real processes, the real e5-small base)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from kbsearch.index.store import active_build_id
from kbsearch.rerank.kb import ACTIVE, FAQS, RERANKERS, TRAIN_LOG, TRAINING
from servers import CLI
from test_kb_reranker import TOPICS

pytestmark = pytest.mark.slow


def _wait_for(what: str, ok, timeout_s: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (not gone, not a zombie nobody reaped: the trainer is not this process's child)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_ingest_returns_before_the_reranker_trains_and_a_killed_training_resumes(tmp_path, e5_cache):
    faqs = tmp_path / "faqs.jsonl"
    faqs.write_text("".join(json.dumps({"id": f"t{i}", "question": qs[0], "answer": f"{t}：请在App里按提示操作。",
                                        "variants": qs[1:]}, ensure_ascii=False) + "\n"
                            for i, (t, qs) in enumerate(TOPICS.items())), encoding="utf-8")
    home = tmp_path / "home"
    env = {**os.environ, "KBSEARCH_HOME": str(home), "KBSEARCH_EMBED__BACKEND": "hash",
           "KBSEARCH_MODEL_CACHE": str(e5_cache), "KBSEARCH_KB_RERANKER__AUTO_TRAIN": "true",
           "KBSEARCH_KB_RERANKER__EPOCHS": "1", "KBSEARCH_KB_RERANKER__MAX_VARIANTS": "42"}
    kb_dir, folder = home / "default", home / "default" / RERANKERS

    started = time.monotonic()
    ingest = subprocess.run(CLI + ["ingest", str(faqs), "--json"], env=env, capture_output=True, text=True, timeout=600)
    ingest_s = time.monotonic() - started
    assert ingest.returncode == 0, ingest.stderr
    note = json.loads(ingest.stdout)["kb_reranker"]
    pid = int(re.search(r"pid (\d+)", note).group(1))
    # The build is live when ingest returns, while the training it started still runs (or is about to).
    assert active_build_id(kb_dir) == json.loads(ingest.stdout)["build_id"]
    assert Path(f"/proc/{pid}").exists() and not (folder / ACTIVE).exists()
    _wait_for("the background training to end", lambda: not _alive(pid))
    trained_s = time.monotonic() - started
    log = (folder / TRAIN_LOG).read_text(encoding="utf-8")
    assert "KB reranker trained" in log and (folder / ACTIVE).exists() and not (folder / TRAINING).exists(), log
    key = (folder / ACTIVE).read_text().strip()
    assert json.loads((folder / key / FAQS).read_text())["build"] == active_build_id(kb_dir)
    print(f"\ningest returned in {ingest_s:.1f} s; the background training was done {trained_s:.1f} s after the start")

    # Another seed is another model: forced, it trains; killed after its first checkpoint, run again, it resumes.
    env2 = {**env, "KBSEARCH_KB_RERANKER__SEED": "43", "KBSEARCH_KB_RERANKER__EPOCHS": "3",
            "KBSEARCH_KB_RERANKER__CHECKPOINT_EVERY_S": "1"}
    proc = subprocess.Popen(CLI + ["train-reranker", "--force"], env=env2, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for("a checkpoint", lambda: any(folder.glob(".training-*/checkpoint/state.pt")), timeout_s=900)
    finally:
        proc.kill()
        proc.wait()
    assert (folder / ACTIVE).read_text().strip() == key  # the killed training switched nothing
    again = subprocess.run(CLI + ["train-reranker", "--force", "--json"], env=env2, capture_output=True, text=True,
                           timeout=1800)
    assert again.returncode == 0, again.stderr
    assert re.search(r"resuming the interrupted training at epoch [1-3], step \d+/\d+", again.stderr), again.stderr
    done = json.loads(again.stdout)
    assert done["trained"] and Path(done["folder"]).name != key
    assert (folder / ACTIVE).read_text().strip() == Path(done["folder"]).name
    assert not list(folder.glob(".training-*")) and not (folder / key).exists()  # one model on disk, no leftovers
