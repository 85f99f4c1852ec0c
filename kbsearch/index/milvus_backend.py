"""``MilvusIndex``: the build's vectors in a Milvus collection, for KBs that outgrow one machine.

The same code serves a Milvus server or cluster (``IndexSettings.milvus_uri`` = ``http://host:19530``) and
milvus-lite, the embedded Milvus (a local path ending in ``.db``; empty = ``<home>/milvus.db``). Each build
gets a collection of its own, ``<prefix>_<kb>_<build id>`` (a primary key ``row`` = the build's row number,
and the L2-normalised float32 ``vector``, with an exact ``FLAT`` index and the ``IP`` metric, so search
answers what FAISS's flat index answers). A collection is written once and never changed; the build
directory holds ``milvus.json`` in place of ``vectors.faiss``: where the collection is, its name, its alias,
its dimension and row count. Publishing a build (``store.swap_active``, also on rollback) moves the KB's
alias ``<prefix>_<kb>`` to the build's collection, so outside readers of the cluster see whole builds only;
deleting a build (``store.prune_builds``) drops its collection.

``vectors`` and ``similarity`` fetch the stored vectors from the collection by primary key (exact: Milvus
keeps float32 as given), so a serving machine holds no copy of the vectors; a round trip per call (about
4 ms for 40 rows on milvus-lite) is the price. pymilvus is imported inside the functions here, so
``kbsearch`` imports without it (``pip install kbsearch[milvus]``); its errors are mapped at this boundary:
``BackendError`` for a failed call or an unreachable server, ``IndexCorruptError`` when a build's
collection is gone or holds another number of rows than the build.

milvus-lite takes a file lock on its ``.db``: one process at a time may open it. A server that serves
lite builds therefore keeps ``kbsearch ingest`` in another process from opening the same file (and the
other way round); run ``milvus-lite server --data-dir <home>/milvus.db`` and point every process at its
``http://`` uri, or use a Milvus server: that is the multi-process story (``docs/milvus.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kbsearch.codes import FallbackCause
from kbsearch.config import IndexSettings
from kbsearch.errors import BackendError, BadInputError, IndexCorruptError, MissingDependencyError
from kbsearch.index.base import FLAT, check_queries, check_vectors

log = logging.getLogger(__name__)

FORMAT = 1
"""Format of ``milvus.json``."""
ROW, VECTOR = "row", "vector"
"""The collection's fields: the primary key (the build's row number) and the vector."""
CONNECT_TIMEOUT_S = 10.0
"""How long connecting to a Milvus server may take before the build or load fails."""
INSERT_ROWS = 2000
"""Rows per insert call (a gRPC message stays well under Milvus's 64 MB limit at 4096 dimensions)."""
FETCH_ROWS = 4096
"""Primary keys per ``query`` when fetching stored vectors (Milvus returns at most 16384 rows per query)."""
MAX_TOP_K = 16384
"""Milvus's largest ``limit`` for one search."""
LITE_GRPC_OPTIONS = {"grpc.keepalive_time_ms": 360_000, "grpc.keepalive_permit_without_calls": False}
"""gRPC options towards milvus-lite's in-process server: pymilvus pings every 10 s, idle or not, and the lite
server (gRPC's default policy: at most one ping per 5 minutes) answers with GOAWAY ``too_many_pings``, closing
the connection under whatever call is in flight. Pings every 6 minutes, and only during calls, are within it."""


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise MissingDependencyError("the milvus vector backend needs pymilvus (and milvus-lite for a local .db): "
                                     "pip install 'kbsearch[milvus]'") from exc
    return pymilvus


def is_lite(uri: str) -> bool:
    """True when ``uri`` names a milvus-lite database (a local path ending in ``.db``), as pymilvus decides it."""
    return uri.endswith(".db")


def milvus_name(*parts: str) -> str:
    """A Milvus collection or alias name from ``parts`` joined by ``_``: letters, digits and ``_`` only.

    A part with other characters (a KB named ``shop-eu``, a build id's ``-``) has them replaced by ``_`` and
    gets the first 8 hex digits of its sha256 appended, so two KBs whose names differ only there (``a-b``,
    ``a_b``) never share an alias.
    """
    out = []
    for part in parts:
        clean = re.sub(r"[^A-Za-z0-9_]", "_", part)
        out.append(clean if clean == part else f"{clean}_{hashlib.sha256(part.encode()).hexdigest()[:8]}")
    return "_".join(out)


@dataclass(frozen=True)
class MilvusTarget:
    """Where a new build's collection goes, and under which names.

    Attributes:
        uri: ``http(s)://host:port`` of a Milvus server or cluster, or the path of a milvus-lite ``.db``.
        token: The server's token (``user:password`` or an API key); empty for none (and for milvus-lite).
        prefix: Prefix of the collection and alias names (``IndexSettings.milvus_prefix``).
        kb: The knowledge base (names the collection and the alias; empty: an unpublished index, e.g. in tests).
        build_id: The build the collection belongs to (empty: a random name).
    """

    uri: str
    token: str = field(default="", repr=False)
    prefix: str = "kbsearch"
    kb: str = ""
    build_id: str = ""

    @classmethod
    def from_settings(cls, settings: IndexSettings, home: Path, kb: str = "", build_id: str = "") -> MilvusTarget:
        """Where ``settings`` put a build of ``kb`` (``milvus_uri`` empty: milvus-lite at ``<home>/milvus.db``)."""
        uri = settings.milvus_uri or str(Path(home) / "milvus.db")
        if is_lite(uri):
            uri = os.path.abspath(uri)
        return cls(uri=uri, token=settings.milvus_token, prefix=settings.milvus_prefix, kb=kb, build_id=build_id)

    def collection_name(self) -> str:
        """The build's collection: ``<prefix>_<kb>_<build id>``, or a new ``<prefix>_<random hex>`` without them."""
        if self.kb and self.build_id:
            return milvus_name(self.prefix, self.kb, self.build_id)
        return milvus_name(self.prefix, uuid.uuid4().hex)

    @property
    def alias(self) -> str:
        """The KB's alias ``<prefix>_<kb>``, which publishing moves to the active build's collection ('' without kb)."""
        return milvus_name(self.prefix, self.kb) if self.kb else ""


_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def _client(uri: str, token: str) -> Any:
    """A connected ``MilvusClient`` for ``uri``, shared by every index of this process (gRPC clients are thread-safe).

    Raises:
        MissingDependencyError: pymilvus (or, for a ``.db``, milvus-lite) is not installed.
        BackendError: the server cannot be reached, or another process holds the milvus-lite database.
    """
    key = (uri, token)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None:
            return client
        pymilvus = _pymilvus()
        if is_lite(uri):
            try:
                import milvus_lite  # noqa: F401 - pymilvus only says "open local milvus failed" without it
            except ImportError as exc:
                raise MissingDependencyError("a milvus-lite database (.db) needs milvus-lite: "
                                             "pip install 'kbsearch[milvus]'") from exc
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            extra = {"grpc_options": LITE_GRPC_OPTIONS} if is_lite(uri) else {}
            client = pymilvus.MilvusClient(uri=uri, token=token, timeout=CONNECT_TIMEOUT_S, **extra)
        except pymilvus.MilvusException as exc:
            where = _where(uri)
            hint = (" (milvus-lite lets one process open a .db at a time: is a server or another kbsearch command "
                    "using it? Run `milvus-lite server --data-dir <db>` and use its http:// uri for several "
                    "processes)") if is_lite(uri) else ""
            raise BackendError(f"cannot open Milvus at {where}: {getattr(exc, 'message', None) or exc}{hint}",
                               FallbackCause.VECTOR_ERROR) from exc
        _clients[key] = client
        return client


def _where(uri: str) -> str:
    """``uri`` for a message: a server's address, or only the file name of a lite database (no local paths)."""
    return f"milvus-lite {Path(uri).name}" if is_lite(uri) else uri


@contextlib.contextmanager
def _milvus_errors(what: str, collection: str) -> Iterator[None]:
    """Map pymilvus's errors to ``BackendError`` (the query path falls back to BM25)."""
    pymilvus = _pymilvus()
    try:
        yield
    except pymilvus.MilvusException as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise BackendError(f"Milvus {what} on collection {collection} failed: {message}",
                           FallbackCause.VECTOR_ERROR) from exc


class MilvusIndex:
    """A build's vectors in one Milvus collection (exact inner-product search).

    Build one with :meth:`build`, open a saved one with :meth:`load`; the constructor only records them.

    Args:
        client: A connected ``MilvusClient``.
        uri: Where the collection is (as the target named it).
        collection: The collection's name.
        alias: The KB's alias ('' when the index belongs to no KB).
        dim: The vectors' dimension.
        rows: The number of vectors.
    """

    backend = "milvus"
    kind = FLAT

    def __init__(self, client: Any, uri: str, collection: str, alias: str, dim: int, rows: int):
        self._client, self.uri, self.collection, self.alias = client, uri, collection, alias
        self.dim, self._rows = dim, rows

    @classmethod
    def build(cls, vectors: np.ndarray, device: str = "cpu", *, target: MilvusTarget | None = None) -> MilvusIndex:
        """A new collection at ``target`` holding ``vectors`` (row ``i`` = primary key ``i``), indexed and loaded.

        ``device`` is accepted for the factory and ignored: Milvus searches where it runs.

        Raises:
            BadInputError: ``vectors`` is not a non-empty matrix, or no target was given.
            BackendError: Milvus refused or failed (the collection is dropped again when it was created).
        """
        v = check_vectors(vectors)
        if target is None:
            raise BadInputError("the milvus backend needs a target (IndexSettings.milvus_uri) to build into")
        pymilvus = _pymilvus()
        client = _client(target.uri, target.token)
        name = target.collection_name()
        with _milvus_errors("create", name):
            if client.has_collection(name):  # a collection is written once: never add to another build's
                raise BackendError(f"Milvus collection {name} exists already", FallbackCause.VECTOR_ERROR)
            schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(ROW, pymilvus.DataType.INT64, is_primary=True)
            schema.add_field(VECTOR, pymilvus.DataType.FLOAT_VECTOR, dim=int(v.shape[1]))
            index = client.prepare_index_params()
            index.add_index(field_name=VECTOR, index_type="FLAT", metric_type="IP")
            client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
        try:
            with _milvus_errors("insert", name):
                for start in range(0, len(v), INSERT_ROWS):
                    part = v[start:start + INSERT_ROWS]
                    client.insert(name, [{ROW: start + i, VECTOR: vec} for i, vec in enumerate(part)])
                client.flush(name)
                client.load_collection(name)
        except BaseException:
            drop_collection(client, name)
            raise
        return cls(client, target.uri, name, target.alias, int(v.shape[1]), len(v))

    def __len__(self) -> int:
        return self._rows

    def drop(self) -> None:
        """Drop the collection (of a build that failed before it was published); logs, never raises, on failure."""
        drop_collection(self._client, self.collection)

    def params(self) -> dict[str, int]:
        """See :class:`~kbsearch.index.base.VectorIndex` (a flat index has none)."""
        return {}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`~kbsearch.index.base.VectorIndex`.

        Raises:
            BadInputError: the queries' dimension is not ``dim``, or ``k`` is above Milvus's limit (16384).
            BackendError: the search failed (the server is down, the collection was dropped) or came back short.
        """
        q = check_queries(queries, self.dim)
        k = min(k, len(self))
        if k > MAX_TOP_K:
            raise BadInputError(f"Milvus returns at most {MAX_TOP_K} results per query, asked for {k}")
        with _milvus_errors("search", self.collection):
            found = self._client.search(self.collection, data=[row.tolist() for row in q], limit=k, anns_field=VECTOR,
                                        search_params={"metric_type": "IP"}, output_fields=[ROW])
        scores = np.zeros((len(q), k), dtype=np.float32)
        rows = np.zeros((len(q), k), dtype=np.int64)
        for i, hits in enumerate(found):
            if len(hits) != k:  # a flat index returns k: fewer means the collection lost rows
                raise BackendError(f"Milvus search on collection {self.collection} returned {len(hits)} of {k} rows",
                                   FallbackCause.VECTOR_ERROR)
            rows[i] = [hit[ROW] for hit in hits]
            scores[i] = [hit["distance"] for hit in hits]
        return scores, rows

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """See :class:`~kbsearch.index.base.VectorIndex`: fetched from the collection by primary key.

        Raises:
            BadInputError: a row is out of range.
            BackendError: the fetch failed, or a row is missing from the collection.
        """
        want = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(want):
            return np.zeros((0, self.dim), dtype=np.float32)
        if want.min() < 0 or want.max() >= len(self):
            raise BadInputError(f"rows out of range 0..{len(self) - 1}")
        unique = np.unique(want)
        got = np.zeros((len(unique), self.dim), dtype=np.float32)
        seen = np.zeros(len(unique), dtype=bool)
        with _milvus_errors("query", self.collection):
            for start in range(0, len(unique), FETCH_ROWS):
                part = unique[start:start + FETCH_ROWS]
                for record in self._client.query(self.collection, filter=f"{ROW} in {part.tolist()}",
                                                 output_fields=[ROW, VECTOR], limit=len(part)):
                    at = int(np.searchsorted(unique, int(record[ROW])))
                    got[at], seen[at] = np.asarray(record[VECTOR], dtype=np.float32), True
        if not seen.all():
            raise BackendError(f"Milvus collection {self.collection} lacks rows {unique[~seen][:5].tolist()}",
                               FallbackCause.VECTOR_ERROR)
        return got[np.searchsorted(unique, want)]

    def similarity(self, query: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """See :class:`~kbsearch.index.base.VectorIndex`."""
        return self.vectors(rows) @ np.asarray(query, dtype=np.float32).reshape(-1)

    def save(self, path: Path) -> None:
        """Write ``milvus.json`` (where the collection is, its name and alias, dimension and rows) to a new file.

        A lite database is recorded relative to the file's folder, so a home moved with its ``milvus.db`` still loads.

        Raises:
            FileExistsError: ``path`` exists.
        """
        uri = os.path.relpath(self.uri, Path(path).parent) if is_lite(self.uri) else self.uri
        record = {"format": FORMAT, "uri": uri, "lite": is_lite(self.uri), "collection": self.collection,
                  "alias": self.alias, "dim": self.dim, "rows": len(self), "index_type": "FLAT", "metric": "IP"}
        with open(path, "x", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)

    @classmethod
    def load(cls, path: Path, device: str = "cpu", *, token: str = "") -> MilvusIndex:
        """Open the collection ``milvus.json`` at ``path`` names, at the uri the build recorded.

        Args:
            path: The build's ``milvus.json``.
            device: Ignored (Milvus searches where it runs).
            token: The server's token (``IndexSettings.milvus_token``; never written into a build).

        Raises:
            IndexCorruptError: the file is missing or malformed, or the collection is gone or holds another
                number of rows than the build.
            BackendError: Milvus cannot be reached or refused.
        """
        record = read_record(path)
        uri = _record_uri(path, record)
        client = _client(uri, token)
        name = record["collection"]
        with _milvus_errors("load", name):
            if not client.has_collection(name):
                raise IndexCorruptError(f"Milvus collection {name} of {path.name} is missing (dropped?) "
                                        f"at {_where(uri)}")
            client.load_collection(name)
            stored = int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])
        if stored != record["rows"]:
            raise IndexCorruptError(f"Milvus collection {name} holds {stored} rows, the build {record['rows']}")
        return cls(client, uri, name, record["alias"], record["dim"], record["rows"])


def read_record(path: Path) -> dict[str, Any]:
    """The parsed ``milvus.json`` at ``path``.

    Raises:
        IndexCorruptError: missing, not JSON, or lacking a field.
    """
    if not Path(path).is_file():
        raise IndexCorruptError(f"vector index {Path(path).name} is missing")
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return {"uri": str(raw["uri"]), "lite": bool(raw["lite"]), "collection": str(raw["collection"]),
                "alias": str(raw.get("alias") or ""), "dim": int(raw["dim"]), "rows": int(raw["rows"])}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(f"vector index {Path(path).name} is unreadable: {type(exc).__name__}") from exc


def _record_uri(path: Path, record: dict[str, Any]) -> str:
    """The uri a ``milvus.json`` records (a lite database's path, relative to the file's folder, made absolute)."""
    return os.path.normpath(Path(path).parent / record["uri"]) if record["lite"] else record["uri"]


def drop_collection(client: Any, name: str) -> None:
    """Drop collection ``name`` if it exists; log (never raise) when Milvus refuses: for cleanup after a failure."""
    try:
        if client.has_collection(name):
            client.drop_collection(name)
    except _pymilvus().MilvusException as exc:
        log.warning("could not drop Milvus collection %s: %s", name, exc)


def publish(path: Path, token: str = "") -> None:
    """Point the KB's alias at the collection of the build whose ``milvus.json`` is ``path`` (create it, or move it).

    Outside readers of the cluster who search the alias see one whole build, then the next. No-op for an index
    saved without a KB (no alias).

    Raises:
        IndexCorruptError: ``path`` is missing or malformed. BackendError: Milvus refused or is unreachable.
    """
    record = read_record(path)
    if not record["alias"]:
        return
    client = _client(_record_uri(path, record), token)
    alias, name = record["alias"], record["collection"]
    with _milvus_errors("alias", name):
        current = _alias_target(client, alias)
        if current is None:
            client.create_alias(name, alias)
        elif current != name:
            client.alter_alias(name, alias)


def _alias_target(client: Any, alias: str) -> str | None:
    """The collection ``alias`` points at, or None when there is no such alias (listed first: pymilvus logs every
    failed call as an error, and a KB's first publish would log one)."""
    if alias not in _aliases(client):
        return None
    return str(client.describe_alias(alias)["collection_name"])


def _aliases(client: Any) -> list[str]:
    found = client.list_aliases()
    return list(found.get("aliases", []) if isinstance(found, dict) else found)


def drop(path: Path, token: str = "") -> None:
    """Drop the collection of the build whose ``milvus.json`` is ``path`` (a deleted build's), unless an alias
    still points at it (a build being deleted is never the active one).

    Raises:
        IndexCorruptError: ``path`` is missing or malformed. BackendError: Milvus refused or is unreachable.
    """
    record = read_record(path)
    client = _client(_record_uri(path, record), token)
    name = record["collection"]
    with _milvus_errors("drop", name):
        if record["alias"] and _alias_target(client, record["alias"]) == name:
            raise BackendError(f"Milvus collection {name} is still the target of alias {record['alias']}")
        if client.has_collection(name):
            client.drop_collection(name)
