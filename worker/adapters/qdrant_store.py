"""``QdrantContentStore``: the catalogue in a Qdrant server, through qdrant-client.

Implements the ``ContentStore`` and ``CatalogWriter`` ports on
``qdrant_client.AsyncQdrantClient``. The client is passed in (the composition root
builds it from ``QDRANT_API_URL`` / ``QDRANT_API_KEY``); nothing here connects at
import time. Tests drive the same code with ``AsyncQdrantClient(location=":memory:")``
(qdrant-client's local mode, which speaks the same API).

Point layout (shared with the embedded adapter, ``qdrant_edge_store``):

* **Point id**: ``point_id(content_id)``. A canonical non-negative decimal id
  (``"1234"``, not ``"0042"`` or ``"+7"``) below 2**63 becomes that int, so catalogue
  ids produced by ``rudderstack.normalize_content_id`` map 1:1 onto Qdrant ints. Any
  other id (``"LB-7730-PB"``, ``"0042"``) becomes the first 8 bytes of
  ``blake2b(id.encode("utf-8"), digest_size=8, person=b"recsys-pid")`` read big-endian
  with the top bit cleared: a stable 63-bit int, the same in every process and
  release (unlike Python's salted ``hash``). A hashed id could in theory collide with
  another id (~n**2 / 2**64); reads check the stored ``content_id`` so a collision
  never returns the wrong item.
* **Payload**: ``content_id`` (the original string id), ``title``, ``tag_labels``
  (list of ``facet:label`` strings, KEYWORD-indexed) plus the item's extra payload
  at top level (so it can be filtered/indexed like any Qdrant field). Those three
  keys are reserved: an extra payload key with one of these names is rejected.
* **Vector**: one dense cosine vector, named ``vector_name`` (default ``"text"``);
  ``vector_name=None`` (or ``""``) uses Qdrant's unnamed default vector.

Candidates: ``search_vector`` gives ``source="vector"`` with the cosine score.
``search_tags`` is a filter, not a ranker: it returns up to ``limit`` items that carry
any of the tags (in the store's scroll order, i.e. by point id), each with
``source="tags"``, ``score`` = how many of the requested tags the item carries (>= 1)
and ``detail`` = the first requested tag it carries.

Errors: connection failures, timeouts, 429/5xx-unavailable answers and the gRPC
equivalents raise ``TransientStoreError`` (retry); everything else the driver raises
becomes ``StoreError``; a collection whose vector config disagrees with ``dim``
raises ``ConfigurationError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from worker.recsys_core.errors import (
    ConfigurationError,
    RecsysError,
    StoreError,
    TransientStoreError,
)
from worker.recsys_core.types import Candidate, Content, Vector

__all__ = [
    "RESERVED_PAYLOAD_KEYS",
    "QdrantContentStore",
    "content_from_payload",
    "payload_from_content",
    "point_id",
]

#: Payload keys the adapters own; an item's extra payload may not use them.
RESERVED_PAYLOAD_KEYS = frozenset({"content_id", "title", "tag_labels"})
TAG_FIELD = "tag_labels"
VECTOR_SOURCE = "vector"
TAG_SOURCE = "tags"

_MAX_INT_ID = 2**63
_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_SCROLL_PAGE = 256


def point_id(content_id: str) -> int:
    """The Qdrant point id of ``content_id`` (see the module docstring)."""
    if content_id.isascii() and content_id.isdigit() and str(int(content_id)) == content_id:
        value = int(content_id)
        if value < _MAX_INT_ID:
            return value
    digest = hashlib.blake2b(
        content_id.encode("utf-8"), digest_size=8, person=b"recsys-pid"
    ).digest()
    return int.from_bytes(digest, "big") & (_MAX_INT_ID - 1)


_pid = point_id


def payload_from_content(content: Content) -> dict[str, Any]:
    """The point payload of ``content``; raises ValueError on a reserved extra key."""
    clash = RESERVED_PAYLOAD_KEYS.intersection(content.payload)
    if clash:
        raise ValueError(
            f"content {content.id!r}: payload keys {sorted(clash)} are reserved by the store"
        )
    payload: dict[str, Any] = dict(content.payload)
    payload["content_id"] = content.id
    payload["title"] = content.title
    payload[TAG_FIELD] = list(content.tags)
    return payload


def content_from_payload(payload: Mapping[str, Any] | None, fallback_id: str) -> Content:
    """Rebuild a ``Content`` from a point payload (tolerates points written by others)."""
    payload = dict(payload or {})
    cid = payload.pop("content_id", None)
    title = payload.pop("title", None)
    tags = payload.pop(TAG_FIELD, None)
    if isinstance(tags, str):
        tags = [tags]
    return Content(
        id=str(cid) if cid is not None else fallback_id,
        title=str(title) if title is not None else "",
        tags=tuple(str(t) for t in tags or ()),
        payload=payload,
    )


def tag_candidate(content_id: str, tags: Iterable[Any], tag_keys: Sequence[str]) -> Candidate:
    """The ``tags`` candidate of an item carrying ``tags`` for requested ``tag_keys``."""
    carried = set(tags)
    hits = [t for t in dict.fromkeys(tag_keys) if t in carried]
    return Candidate(
        content_id=content_id,
        score=float(max(len(hits), 1)),
        source=TAG_SOURCE,
        detail=hits[0] if hits else "",
    )


def unique_ids(ids: Iterable[str]) -> list[str]:
    """``ids`` as strings, first occurrence order, duplicates dropped."""
    return list(dict.fromkeys(str(i) for i in ids))


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ResourceExhaustedResponse):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in _TRANSIENT_HTTP
    if isinstance(exc, ResponseHandlingException):
        return _is_transient(exc.source)
    if isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError):
        return True
    try:  # gRPC transport (prefer_grpc=True); grpc is a dependency of qdrant-client.
        import grpc
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
        }
    return False


def _translate(exc: Exception, what: str) -> NoReturn:
    if isinstance(exc, RecsysError):
        raise exc
    if _is_transient(exc):
        raise TransientStoreError(f"qdrant {what}: {exc!r}") from exc
    raise StoreError(f"qdrant {what}: {exc!r}") from exc


class QdrantContentStore:
    """ContentStore + CatalogWriter on a Qdrant collection via ``AsyncQdrantClient``."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        collection_name: str,
        *,
        vector_name: str | None = "text",
    ) -> None:
        self._client = client
        self._collection = collection_name
        self._vector_name = vector_name or None

    @property
    def collection_name(self) -> str:
        return self._collection

    @property
    def vector_name(self) -> str | None:
        return self._vector_name

    async def ensure_collection(self, dim: int) -> None:
        """Create the collection (cosine vector of ``dim``) and the tag index if missing.

        Idempotent and safe when several replicas race to create it. Raises
        ``ConfigurationError`` if the collection exists with another vector layout.
        """
        try:
            exists = await self._client.collection_exists(self._collection)
            if not exists:
                params = models.VectorParams(size=dim, distance=models.Distance.COSINE)
                vectors: Any = {self._vector_name: params} if self._vector_name else params
                try:
                    await self._client.create_collection(self._collection, vectors_config=vectors)
                except Exception:
                    # Lost a creation race with another replica? Then it exists now.
                    if not await self._client.collection_exists(self._collection):
                        raise
            await self._check_vector_config(dim)
            await self._client.create_payload_index(
                self._collection,
                field_name=TAG_FIELD,
                field_schema=models.PayloadSchemaType.KEYWORD,
                wait=True,
            )
        except Exception as exc:
            _translate(exc, f"ensure_collection({self._collection!r})")

    async def _check_vector_config(self, dim: int) -> None:
        info = await self._client.get_collection(self._collection)
        vectors = info.config.params.vectors
        if isinstance(vectors, Mapping):
            params = vectors.get(self._vector_name or "")
        else:
            params = None if self._vector_name else vectors
        if params is None:
            raise ConfigurationError(
                f"qdrant collection {self._collection!r} has no vector named "
                f"{self._vector_name!r} (vectors: {vectors!r}); set the vector name or "
                "use another collection"
            )
        if params.size != dim or params.distance != models.Distance.COSINE:
            raise ConfigurationError(
                f"qdrant collection {self._collection!r} vector {self._vector_name!r} is "
                f"{params.size}-dim {params.distance}, the embedding model needs {dim}-dim "
                "Cosine; use another collection or recreate it"
            )

    async def upsert(self, items: Sequence[tuple[Content, Vector]]) -> None:
        """Insert or replace items with their vectors (payload replaced as a whole)."""
        if not items:
            return
        points = []
        for content, vector in items:
            vec = [float(x) for x in vector]
            points.append(
                models.PointStruct(
                    id=point_id(content.id),
                    vector={self._vector_name: vec} if self._vector_name else vec,
                    payload=payload_from_content(content),
                )
            )
        try:
            await self._client.upsert(self._collection, points=points, wait=True)
        except Exception as exc:
            _translate(exc, f"upsert into {self._collection!r}")

    async def _retrieve(self, ids: Iterable[str], *, with_vectors: bool) -> list[tuple[str, Any]]:
        wanted = unique_ids(ids)
        if not wanted:
            return []
        by_pid = {point_id(cid): cid for cid in wanted}
        try:
            records = await self._client.retrieve(
                self._collection,
                ids=list(by_pid),
                with_payload=True,
                with_vectors=[self._vector_name]
                if with_vectors and self._vector_name
                else with_vectors,
            )
        except Exception as exc:
            _translate(exc, f"retrieve from {self._collection!r}")
        out = []
        for rec in records:
            cid = by_pid.get(int(rec.id)) if isinstance(rec.id, int) else None
            payload = rec.payload or {}
            # Guard against a hash collision: the stored id must be the one asked for.
            if cid is None or str(payload.get("content_id", cid)) != cid:
                continue
            out.append((cid, rec))
        return out

    async def get(self, ids: Iterable[str]) -> dict[str, Content]:
        """Payloads of the known ids; unknown ids are absent from the result."""
        return {
            cid: content_from_payload(rec.payload, cid)
            for cid, rec in await self._retrieve(ids, with_vectors=False)
        }

    async def get_vectors(self, ids: Iterable[str]) -> dict[str, Vector]:
        """Stored (L2-normalised, as Qdrant keeps cosine vectors) embeddings by id."""
        out: dict[str, Vector] = {}
        for cid, rec in await self._retrieve(ids, with_vectors=True):
            vec = rec.vector
            if isinstance(vec, Mapping):
                vec = vec.get(self._vector_name or "")
            if vec is not None:
                out[cid] = tuple(float(x) for x in vec)
        return out

    async def search_vector(self, vector: Vector, *, limit: int) -> list[Candidate]:
        """Top ``limit`` items by cosine similarity, best first."""
        if limit <= 0:
            return []
        try:
            resp = await self._client.query_points(
                self._collection,
                query=[float(x) for x in vector],
                using=self._vector_name,
                limit=limit,
                with_payload=["content_id"],
            )
        except Exception as exc:
            _translate(exc, f"vector search in {self._collection!r}")
        return [
            Candidate(
                content_id=str((p.payload or {}).get("content_id", p.id)),
                score=float(p.score),
                source=VECTOR_SOURCE,
            )
            for p in resp.points
        ]

    async def search_tags(self, tag_keys: Sequence[str], *, limit: int) -> list[Candidate]:
        """Up to ``limit`` items carrying any of ``tag_keys`` (a filter, not a ranker)."""
        keys = list(dict.fromkeys(tag_keys))
        if limit <= 0 or not keys:
            return []
        match: Any = (
            models.MatchValue(value=keys[0]) if len(keys) == 1 else models.MatchAny(any=keys)
        )
        flt = models.Filter(should=[models.FieldCondition(key=TAG_FIELD, match=match)])
        out: list[Candidate] = []
        offset: Any = None
        try:
            while len(out) < limit:
                records, offset = await self._client.scroll(
                    self._collection,
                    scroll_filter=flt,
                    limit=min(limit - len(out), _SCROLL_PAGE),
                    offset=offset,
                    with_payload=["content_id", TAG_FIELD],
                    with_vectors=False,
                )
                for rec in records:
                    payload = rec.payload or {}
                    cid = str(payload.get("content_id", rec.id))
                    out.append(tag_candidate(cid, payload.get(TAG_FIELD) or (), keys))
                if offset is None or not records:
                    break
        except Exception as exc:
            _translate(exc, f"tag search in {self._collection!r}")
        return out[:limit]

    async def count(self) -> int:
        """Number of points in the collection (exact)."""
        try:
            result = await self._client.count(self._collection, exact=True)
        except Exception as exc:
            _translate(exc, f"count of {self._collection!r}")
        return int(result.count)

    async def ping(self) -> None:
        """Cheap health check: the server answers and the collection exists.

        Raises ``TransientStoreError`` when Qdrant is unreachable or slow,
        ``StoreError`` when it answers with an error (e.g. a bad API key) or the
        collection is missing.
        """
        try:
            exists = await self._client.collection_exists(self._collection)
        except Exception as exc:
            _translate(exc, "ping")
        if not exists:
            raise StoreError(f"qdrant collection {self._collection!r} does not exist")

    async def close(self) -> None:
        """Close the underlying client."""
        try:
            await self._client.close()
        except Exception as exc:
            _translate(exc, "close")
