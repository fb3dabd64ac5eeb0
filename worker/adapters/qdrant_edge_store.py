"""``EmbeddedQdrantContentStore``: the catalogue in an in-process Qdrant Edge shard.

The local default when ``QDRANT_API_URL`` is not set (DESIGN §5): ``qdrant-edge-py``
(module ``qdrant_edge``) is Qdrant's own engine (HNSW, payload indexes, filters)
running in-process and persisted on disk at ``path``; reopening the same path sees
the same data. Point ids, payload layout, scores and candidate semantics are exactly
those of ``QdrantContentStore`` (see ``worker.adapters.qdrant_store``), and both pass
the same contract tests.

The engine is synchronous and fast (sub-millisecond searches over 10k 384-dim
points), so the async methods call it directly on the event loop; only
``optimize()`` (builds the HNSW index after a bulk load, seconds) runs in a thread.

qdrant_edge facts this adapter relies on (qdrant-edge-py 0.9):

* ``EdgeShard.create(path, EdgeConfig)`` fails if ``path`` already holds segments;
  ``EdgeShard.load(path, config)`` fails if ``path`` does not exist and checks the
  given config against the stored one (a different vector size is an error).
* A shard holds an exclusive lock on its WAL: a second open of the same path (in
  this or another process) fails until ``close()``.
* Errors are plain ``Exception`` with a message (no exception hierarchy); they are
  translated to ``StoreError`` (nothing here is a network call, so nothing is
  transient; a failed open becomes ``ConfigurationError``).
* ``EdgeShard.retrieve`` needs ``with_vector`` although the stubs mark it optional.
* Payload values must be JSON-like (bool/int/float/str/list/dict); anything else is
  a ``TypeError`` from the binding, so payloads go through a JSON round trip.
* New points land in a plain (brute-force) appendable segment; the HNSW index is
  built by ``EdgeShard.optimize()``, which this adapter never runs implicitly.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import qdrant_edge as qe

from worker.adapters.qdrant_store import (
    TAG_FIELD,
    VECTOR_SOURCE,
    content_from_payload,
    payload_from_content,
    point_id,
    tag_candidate,
    unique_ids,
)
from worker.recsys_core.errors import ConfigurationError, RecsysError, StoreError
from worker.recsys_core.types import Candidate, Content, Vector

__all__ = ["EmbeddedQdrantContentStore"]

_SCROLL_PAGE = 256
#: point ids whose content id a vector search remembers (then it starts over)
_NAMES_KEPT = 200_000


def _translate(exc: Exception, what: str) -> NoReturn:
    if isinstance(exc, RecsysError):
        raise exc
    raise StoreError(f"qdrant-edge {what}: {exc}") from exc


class EmbeddedQdrantContentStore:
    """ContentStore + CatalogWriter on a Qdrant Edge shard persisted at ``path``.

    Opens (or creates) the shard at construction time: that is a local file
    operation, not a connection. Call ``close()`` (or use ``with``) to release the
    shard's lock and flush it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        collection_name: str = "content",
        *,
        dim: int,
        vector_name: str | None = "text",
    ) -> None:
        if dim <= 0:
            raise ConfigurationError(f"embedded qdrant: dim must be positive, got {dim}")
        self._root = Path(path)
        self._collection = collection_name
        self._path = self._root / collection_name
        self._dim = dim
        self._vector_name = vector_name or ""
        params = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
        config = qe.EdgeConfig(vectors={self._vector_name: params})
        try:
            if (self._path / "edge_config.json").exists():
                self._shard = qe.EdgeShard.load(str(self._path), config)
            else:
                self._path.mkdir(parents=True, exist_ok=True)
                self._shard = qe.EdgeShard.create(str(self._path), config)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot open embedded qdrant at {self._path} (dim={dim}, vector "
                f"{self._vector_name!r}): {exc}. Is another process using it, or was it "
                "created for another embedding model? Use another path or delete it."
            ) from exc
        self._closed = False
        #: point id -> content id, for the points seen (searches skip the payload)
        self._names: dict[Any, str] = {}
        if TAG_FIELD not in self._shard.info().payload_schema:
            self._shard.update(
                qe.UpdateOperation.create_field_index(TAG_FIELD, qe.PayloadSchemaType.Keyword)
            )

    # -- lifecycle ----------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The shard directory (``path / collection_name``)."""
        return self._path

    @property
    def dim(self) -> int:
        return self._dim

    def close(self) -> None:
        """Flush and release the shard (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._shard.flush()
        finally:
            self._shard.close()

    def __enter__(self) -> EmbeddedQdrantContentStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _live(self) -> Any:
        if self._closed:
            raise StoreError(f"embedded qdrant at {self._path} is closed")
        return self._shard

    async def ensure_collection(self, dim: int) -> None:
        """Check that the shard's vectors have ``dim`` (the shard exists since __init__)."""
        if dim != self._dim:
            raise ConfigurationError(
                f"embedded qdrant at {self._path} holds {self._dim}-dim vectors, "
                f"the embedding model needs {dim}"
            )

    async def optimize(self) -> bool:
        """Build the HNSW index and merge segments (run after a bulk load; seconds).

        Runs in a worker thread. Returns True if anything was optimised.
        """
        shard = self._live()
        try:
            return bool(await asyncio.to_thread(shard.optimize))
        except Exception as exc:
            _translate(exc, "optimize")

    # -- CatalogWriter ------------------------------------------------------------

    async def upsert(self, items: Sequence[tuple[Content, Vector]]) -> None:
        """Insert or replace items with their vectors (payload replaced as a whole)."""
        if not items:
            return
        shard = self._live()
        points = []
        for content, vector in items:
            # qdrant_edge only takes JSON-like values (e.g. a date is a TypeError
            # from the binding); a JSON round trip gives every adapter one behaviour.
            payload = payload_from_content(content)  # ValueError on a reserved key
            try:
                payload = json.loads(json.dumps(payload))
            except (TypeError, ValueError) as exc:
                raise StoreError(f"content {content.id!r}: payload is not JSON: {exc}") from exc
            vec = [float(x) for x in vector]
            points.append(qe.Point(point_id(content.id), {self._vector_name: vec}, payload))
        try:
            shard.update(qe.UpdateOperation.upsert_points(points))
        except Exception as exc:
            self._names.clear()
            _translate(exc, "upsert")
        for content, _ in items:  # named again from its payload when next found
            self._names.pop(point_id(content.id), None)

    # -- ContentStore -------------------------------------------------------------

    def _retrieve(self, ids: Iterable[str], *, with_vector: bool) -> list[tuple[str, Any]]:
        wanted = unique_ids(ids)
        if not wanted:
            return []
        shard = self._live()
        by_pid = {point_id(cid): cid for cid in wanted}
        try:
            records = shard.retrieve(
                list(by_pid),
                with_payload=True,
                with_vector=[self._vector_name] if with_vector else False,
            )
        except Exception as exc:
            _translate(exc, "retrieve")
        out = []
        for rec in records:
            cid = by_pid.get(rec.id) if isinstance(rec.id, int) else None
            payload = rec.payload or {}
            if cid is None or str(payload.get("content_id", cid)) != cid:
                continue
            out.append((cid, rec))
        return out

    async def get(self, ids: Iterable[str]) -> dict[str, Content]:
        """Payloads of the known ids; unknown ids are absent from the result."""
        return {
            cid: content_from_payload(rec.payload, cid)
            for cid, rec in self._retrieve(ids, with_vector=False)
        }

    async def get_vectors(self, ids: Iterable[str]) -> dict[str, Vector]:
        """Stored (L2-normalised) embeddings by id."""
        out: dict[str, Vector] = {}
        for cid, rec in self._retrieve(ids, with_vector=True):
            vec = rec.vector
            if isinstance(vec, dict):
                vec = vec.get(self._vector_name)
            if vec is not None:
                out[cid] = tuple(float(x) for x in vec)
        return out

    async def search_vector(self, vector: Vector, *, limit: int) -> list[Candidate]:
        """Top ``limit`` items by cosine similarity, best first."""
        if limit <= 0:
            return []
        shard = self._live()
        query = qe.Query.Nearest([float(x) for x in vector], using=self._vector_name)
        names = self._names
        try:
            # Without payloads: reading ``content_id`` back was a third of the
            # search's time. Ids are named from what this store wrote or read.
            points = shard.search(qe.SearchRequest(query=query, limit=limit, with_payload=False))
            unnamed = [p.id for p in points if p.id not in names]
            if unnamed:
                self._learn_names(shard.retrieve(unnamed, with_payload=True, with_vector=False))
        except Exception as exc:
            _translate(exc, "vector search")
        return [
            Candidate(content_id=names.get(p.id) or str(p.id), score=float(p.score),
                      source=VECTOR_SOURCE)
            for p in points
        ]

    def _learn_names(self, records: Iterable[Any]) -> None:
        """Remember the content id of each point (its stored ``content_id``)."""
        if len(self._names) > _NAMES_KEPT:
            self._names.clear()
        for rec in records:
            self._names[rec.id] = str((rec.payload or {}).get("content_id", rec.id))

    async def search_tags(self, tag_keys: Sequence[str], *, limit: int) -> list[Candidate]:
        """Up to ``limit`` items carrying any of ``tag_keys`` (a filter, not a ranker)."""
        keys = list(dict.fromkeys(tag_keys))
        if limit <= 0 or not keys:
            return []
        shard = self._live()
        match: Any = qe.MatchValue(keys[0]) if len(keys) == 1 else qe.MatchAny(keys)
        flt = qe.Filter(should=[qe.FieldCondition(key=TAG_FIELD, match=match)])
        out: list[Candidate] = []
        offset: Any = None
        try:
            while len(out) < limit:
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset,
                        limit=min(limit - len(out), _SCROLL_PAGE),
                        filter=flt,
                        with_payload=["content_id", TAG_FIELD],
                        with_vector=False,
                    )
                )
                for rec in records:
                    payload = rec.payload or {}
                    cid = str(payload.get("content_id", rec.id))
                    out.append(tag_candidate(cid, payload.get(TAG_FIELD) or (), keys))
                if offset is None or not records:
                    break
        except Exception as exc:
            _translate(exc, "tag search")
        return out[:limit]

    async def count(self) -> int:
        """Number of points (exact)."""
        shard = self._live()
        try:
            return int(shard.count(qe.CountRequest(exact=True)))
        except Exception as exc:
            _translate(exc, "count")

    async def ping(self) -> None:
        """Health check: the shard is open and answers."""
        shard = self._live()
        try:
            shard.info()
        except Exception as exc:
            _translate(exc, "ping")
