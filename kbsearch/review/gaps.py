"""Knowledge gaps: handed-off and unhelpful questions grouped into clusters by meaning.

The questions are embedded with the service's embedder (the query prompt, as ``/ask`` embeds them) and
clustered by scikit-learn's ``AgglomerativeClustering`` (cosine distance, average linkage, cut at
``dashboard.gap_distance``): no number of clusters to guess, and a lone question stays its own cluster.
Each cluster gets the FAQs nearest to its centroid in the KB's vector index, with their cosines, so an
operator sees at once whether to attach the questions to an FAQ or to write a new one. Questions that
already have an operator decision are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kbsearch.embed.base import Embedder
from kbsearch.index.store import Build

#: FAQs listed per cluster.
NEAREST = 3
#: Examples listed per cluster (the dashboard can show all).
EXAMPLES = 5


@dataclass(frozen=True)
class GapCluster:
    """One group of questions the KB did not answer well."""

    id: str
    questions: list[dict[str, Any]]
    nearest: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the size and the first examples."""
        return {"id": self.id, "size": len(self.questions), "questions": self.questions,
                "examples": [q["question"] for q in self.questions[:EXAMPLES]], "nearest": self.nearest}


def cluster_labels(vectors: np.ndarray, distance: float) -> np.ndarray:
    """Cluster labels of L2-normalised ``vectors``: average-linkage agglomerative clustering on cosine
    distance, merged while the distance is under ``distance``."""
    if len(vectors) < 2:
        return np.zeros(len(vectors), dtype=np.int64)
    from sklearn.cluster import AgglomerativeClustering

    model = AgglomerativeClustering(n_clusters=None, distance_threshold=distance, metric="cosine", linkage="average")
    return model.fit_predict(vectors)


def nearest_faqs(build: Build, centroid: np.ndarray, k: int = NEAREST) -> list[dict[str, Any]]:
    """The ``k`` FAQs of ``build`` whose best row is closest to ``centroid`` (empty without a vector index)."""
    if build.vectors is None:
        return []
    scores, rows = build.vectors.search(centroid.reshape(1, -1).astype(np.float32), min(50, len(build.rows)))
    best: dict[str, float] = {}
    for score, row in zip(scores[0], rows[0]):
        if row < 0:
            continue
        faq = build.rows[int(row)].faq_id
        best.setdefault(faq, float(score))
    top = sorted(best.items(), key=lambda kv: -kv[1])[:k]
    return [{"faq_id": f, "question": build.entries[f].question if f in build.entries else None,
             "score": round(s, 4)} for f, s in top]


def find_gaps(questions: list[dict[str, Any]], embedder: Embedder, build: Build, distance: float) -> list[GapCluster]:
    """Cluster ``questions`` (question-log rows with ``question``, ``request_id``, ``reason``), biggest first."""
    if not questions:
        return []
    vectors = np.asarray(embedder.embed_queries([q["question"] for q in questions]), dtype=np.float32)
    labels = cluster_labels(vectors, distance)
    clusters = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        centroid = vectors[members].mean(axis=0)
        centroid /= np.linalg.norm(centroid) or 1.0
        rows = [{"request_id": questions[i]["request_id"], "question": questions[i]["question"],
                 "reason": questions[i].get("reason"), "helpful": questions[i].get("helpful")} for i in members]
        clusters.append((rows, nearest_faqs(build, centroid)))
    clusters.sort(key=lambda c: (-len(c[0]), c[0][0]["question"]))
    return [GapCluster(id=f"g{i + 1}", questions=rows, nearest=near) for i, (rows, near) in enumerate(clusters)]
