"""One ContentStore + CatalogWriter contract, run against every implementation."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import AsyncQdrantClient

from worker.adapters.memory import InMemoryContentStore
from worker.adapters.qdrant_edge_store import EmbeddedQdrantContentStore
from worker.adapters.qdrant_store import QdrantContentStore, point_id
from worker.recsys_core.errors import ConfigurationError, StoreError
from worker.recsys_core.ports import CatalogWriter, ContentStore
from worker.recsys_core.types import Content

pytestmark = pytest.mark.filterwarnings(
    # qdrant-client's local mode (the stand-in for a Qdrant server here) warns that
    # it ignores payload indexes; the adapter creates the tag index for real servers.
    "ignore:Payload indexes have no effect in the local Qdrant:UserWarning"
)

DIM = 8


def unit(i: int, j: int | None = None, w: float = 1.0) -> list[float]:
    """Basis vector e_i (times 3, so stores must normalise), optionally + w*e_j."""
    v = [0.0] * DIM
    v[i] = 3.0
    if j is not None:
        v[j] += 3.0 * w
    return v


def normalised(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


async def _memory(_: Path) -> AsyncIterator[Any]:
    store = InMemoryContentStore()
    await store.ensure_collection(DIM)
    yield store


async def _qdrant_client(_: Path) -> AsyncIterator[Any]:
    client = AsyncQdrantClient(location=":memory:")
    store = QdrantContentStore(client, "content")
    await store.ensure_collection(DIM)
    yield store
    await client.close()


async def _qdrant_edge(tmp_path: Path) -> AsyncIterator[Any]:
    store = EmbeddedQdrantContentStore(tmp_path / "qdrant", dim=DIM)
    await store.ensure_collection(DIM)
    yield store
    store.close()


IMPLEMENTATIONS: dict[str, Callable[[Path], AsyncIterator[Any]]] = {
    "memory": _memory,
    "qdrant-client": _qdrant_client,
    "qdrant-edge": _qdrant_edge,
}


@pytest.fixture(params=list(IMPLEMENTATIONS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    gen = IMPLEMENTATIONS[request.param](tmp_path)
    yield await gen.__anext__()
    with pytest.raises(StopAsyncIteration):
        await gen.__anext__()


CATALOGUE = [
    (Content("1", "Trail shoe", ("cat:shoes", "use:trail"), {"price": 120.5}), unit(0)),
    (Content("2", "Road shoe", ("cat:shoes", "use:road"), {"price": 99}), unit(0, 1, 0.5)),
    (Content("LB-7730-PB", "Backpack", ("cat:bags", "use:trail"), {"brand": "LB"}), unit(2)),
    (Content("0042", "Lamp", ("cat:home",), {"nested": {"a": [1, 2]}}), unit(3)),
    (Content("42", "Mug", ("cat:home", "cat:kitchen"), {}), unit(4)),
    (Content("999", "Untagged", (), {}), unit(5)),
]


async def load(store: Any) -> None:
    await store.upsert(CATALOGUE)


class TestContentStoreContract:
    async def test_implements_the_ports(self, store: Any) -> None:
        assert isinstance(store, ContentStore)
        assert isinstance(store, CatalogWriter)

    async def test_roundtrip_title_tags_payload(self, store: Any) -> None:
        await load(store)
        got = await store.get([c.id for c, _ in CATALOGUE])
        assert got == {c.id: c for c, _ in CATALOGUE}
        assert await store.count() == len(CATALOGUE)

    async def test_numeric_and_opaque_ids_are_distinct(self, store: Any) -> None:
        await load(store)
        got = await store.get(["42", "0042", "LB-7730-PB"])
        assert got["42"].title == "Mug"
        assert got["0042"].title == "Lamp"
        assert got["LB-7730-PB"].title == "Backpack"

    async def test_unknown_ids_are_absent(self, store: Any) -> None:
        await load(store)
        assert await store.get(["nope", "7", "1"]) == {"1": CATALOGUE[0][0]}
        assert await store.get([]) == {}
        assert await store.get_vectors(["nope", "8"]) == {}

    async def test_get_accepts_any_iterable_and_duplicates(self, store: Any) -> None:
        await load(store)
        got = await store.get(iter(["2", "2", "LB-7730-PB"]))
        assert set(got) == {"2", "LB-7730-PB"}

    async def test_get_vectors_are_the_stored_vectors_normalised(self, store: Any) -> None:
        await load(store)
        got = await store.get_vectors([c.id for c, _ in CATALOGUE])
        assert set(got) == {c.id for c, _ in CATALOGUE}
        for content, vector in CATALOGUE:
            assert list(got[content.id]) == pytest.approx(normalised(vector), abs=1e-6)

    async def test_search_vector_nearest_first_with_cosine_scores(self, store: Any) -> None:
        await load(store)
        hits = await store.search_vector(unit(0, 1, 0.1), limit=3)
        assert [h.content_id for h in hits[:2]] == ["1", "2"]
        assert len(hits) == 3
        assert all(h.source == "vector" for h in hits)
        assert all(-1.0 - 1e-6 <= h.score <= 1.0 + 1e-6 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        q = normalised(unit(0, 1, 0.1))
        expected = sum(a * b for a, b in zip(q, normalised(unit(0, 1, 0.5)), strict=True))
        assert hits[1].score == pytest.approx(expected, abs=1e-5)

    async def test_search_vector_exact_match_scores_one(self, store: Any) -> None:
        await load(store)
        hits = await store.search_vector(unit(2), limit=1)
        assert hits[0].content_id == "LB-7730-PB"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)

    async def test_search_vector_honours_limit(self, store: Any) -> None:
        await load(store)
        assert len(await store.search_vector(unit(0), limit=len(CATALOGUE) + 5)) == len(CATALOGUE)
        assert len(await store.search_vector(unit(0), limit=2)) == 2
        assert await store.search_vector(unit(0), limit=0) == []

    async def test_search_vector_names_every_item_across_searches_and_writes(
        self, store: Any
    ) -> None:
        """Ids come out right on a repeated search and after items are written
        (the embedded store names points from memory once it has seen them)."""
        await load(store)
        first = [h.content_id for h in await store.search_vector(unit(2), limit=10)]
        assert [h.content_id for h in await store.search_vector(unit(2), limit=10)] == first
        assert set(first) == {c.id for c, _ in CATALOGUE}
        await store.upsert([(Content(id="new-7", title="New"), unit(2))])
        hits = await store.search_vector(unit(2), limit=2)
        assert sorted(h.content_id for h in hits) == ["LB-7730-PB", "new-7"]

    async def test_search_vector_on_empty_store(self, store: Any) -> None:
        assert await store.search_vector(unit(0), limit=5) == []

    async def test_search_tags_returns_exactly_the_tagged_items(self, store: Any) -> None:
        await load(store)
        hits = await store.search_tags(["use:trail", "cat:home"], limit=100)
        assert sorted(h.content_id for h in hits) == ["0042", "1", "42", "LB-7730-PB"]
        assert all(h.source == "tags" and h.score >= 1.0 for h in hits)
        by_id = {h.content_id: h for h in hits}
        assert by_id["1"].detail == "use:trail"
        assert by_id["42"].detail == "cat:home"

    async def test_search_tags_single_tag_and_unknown_tag(self, store: Any) -> None:
        await load(store)
        assert {h.content_id for h in await store.search_tags(["cat:shoes"], limit=10)} == {
            "1",
            "2",
        }
        assert await store.search_tags(["cat:nothing"], limit=10) == []
        assert await store.search_tags([], limit=10) == []

    async def test_search_tags_scores_count_the_matched_tags(self, store: Any) -> None:
        await load(store)
        hits = await store.search_tags(["cat:kitchen", "cat:home"], limit=10)
        by_id = {h.content_id: h for h in hits}
        assert by_id["42"].score == 2.0 and by_id["42"].detail == "cat:kitchen"
        assert by_id["0042"].score == 1.0 and by_id["0042"].detail == "cat:home"

    async def test_search_tags_honours_limit(self, store: Any) -> None:
        await load(store)
        hits = await store.search_tags(["cat:shoes", "cat:home", "cat:bags"], limit=3)
        assert len(hits) == 3
        assert {h.content_id for h in hits} <= {"1", "2", "0042", "42", "LB-7730-PB"}
        assert await store.search_tags(["cat:shoes"], limit=0) == []

    async def test_search_tags_pages_through_many_items(self, store: Any) -> None:
        many = [
            (
                Content(str(i), f"item {i}", ("cat:bulk",) if i % 2 else ("cat:other",)),
                unit(i % DIM),
            )
            for i in range(1, 701)
        ]
        await store.upsert(many)
        hits = await store.search_tags(["cat:bulk"], limit=1000)
        assert sorted(int(h.content_id) for h in hits) == list(range(1, 701, 2))
        assert len(await store.search_tags(["cat:bulk"], limit=300)) == 300

    async def test_upsert_replaces(self, store: Any) -> None:
        await load(store)
        new = Content("LB-7730-PB", "Backpack v2", ("cat:bags",), {"brand": "LB", "v": 2})
        await store.upsert([(new, unit(6))])
        assert (await store.get(["LB-7730-PB"]))["LB-7730-PB"] == new
        assert list((await store.get_vectors(["LB-7730-PB"]))["LB-7730-PB"]) == pytest.approx(
            normalised(unit(6)), abs=1e-6
        )
        trail = await store.search_tags(["use:trail"], limit=10)
        assert [h.content_id for h in trail] == ["1"]
        assert (await store.search_vector(unit(6), limit=1))[0].content_id == "LB-7730-PB"
        assert await store.count() == len(CATALOGUE)

    async def test_upsert_of_nothing_is_a_no_op(self, store: Any) -> None:
        await store.upsert([])
        assert await store.count() == 0

    async def test_reserved_payload_keys_are_rejected(self, store: Any) -> None:
        with pytest.raises(ValueError, match="reserved"):
            await store.upsert([(Content("5", "x", (), {"title": "clash"}), unit(0))])

    async def test_wrong_dimension_is_a_store_error(self, store: Any) -> None:
        await load(store)
        with pytest.raises(StoreError):
            await store.upsert([(Content("7", "bad"), [1.0, 2.0])])
        with pytest.raises(StoreError):
            await store.search_vector([1.0, 2.0], limit=3)

    async def test_ping(self, store: Any) -> None:
        await store.ping()


def test_point_ids() -> None:
    assert point_id("1234") == 1234
    assert point_id("0") == 0
    for opaque in ("LB-7730-PB", "0042", "+7", "-3", " 5", "١٢", str(2**63), ""):
        pid = point_id(opaque)
        assert 0 <= pid < 2**63
        assert pid == point_id(opaque)  # stable
    assert point_id("0042") != 42
    # Pinned: the mapping must never change between releases (ids are stored).
    assert point_id("LB-7730-PB") == 5825052272909783428


class TestEmbeddedOnly:
    async def test_persists_across_reopen(self, tmp_path: Path) -> None:
        store = EmbeddedQdrantContentStore(tmp_path / "q", "content", dim=DIM)
        await load(store)
        store.close()
        store.close()  # idempotent
        with EmbeddedQdrantContentStore(tmp_path / "q", "content", dim=DIM) as reopened:
            assert await reopened.get([c.id for c, _ in CATALOGUE]) == {
                c.id: c for c, _ in CATALOGUE
            }
            hits = await reopened.search_tags(["use:trail"], limit=10)
            assert {h.content_id for h in hits} == {"1", "LB-7730-PB"}
            assert (await reopened.search_vector(unit(3), limit=1))[0].content_id == "0042"

    async def test_collections_are_separate_directories(self, tmp_path: Path) -> None:
        with (
            EmbeddedQdrantContentStore(tmp_path, "a", dim=DIM) as a,
            EmbeddedQdrantContentStore(tmp_path, "b", dim=DIM) as b,
        ):
            await a.upsert(CATALOGUE[:1])
            assert await b.count() == 0 and await a.count() == 1

    async def test_reopen_with_another_dim_is_a_configuration_error(self, tmp_path: Path) -> None:
        EmbeddedQdrantContentStore(tmp_path, dim=DIM).close()
        with pytest.raises(ConfigurationError, match="dim=16"):
            EmbeddedQdrantContentStore(tmp_path, dim=16)

    async def test_second_open_while_open_fails_clearly(self, tmp_path: Path) -> None:
        with EmbeddedQdrantContentStore(tmp_path, dim=DIM), pytest.raises(ConfigurationError):
            EmbeddedQdrantContentStore(tmp_path, dim=DIM)

    async def test_closed_store_raises_store_error(self, tmp_path: Path) -> None:
        store = EmbeddedQdrantContentStore(tmp_path, dim=DIM)
        store.close()
        with pytest.raises(StoreError):
            await store.get(["1"])

    async def test_optimize_keeps_results(self, tmp_path: Path) -> None:
        with EmbeddedQdrantContentStore(tmp_path, dim=DIM) as store:
            await load(store)
            await store.optimize()
            assert (await store.search_vector(unit(2), limit=1))[0].content_id == "LB-7730-PB"
            assert await store.count() == len(CATALOGUE)


class TestQdrantClientOnly:
    async def test_ensure_collection_is_idempotent_and_checks_dim(self) -> None:
        client = AsyncQdrantClient(location=":memory:")
        try:
            store = QdrantContentStore(client, "c")
            await store.ensure_collection(DIM)
            await store.ensure_collection(DIM)
            with pytest.raises(ConfigurationError, match="16"):
                await store.ensure_collection(16)
            with pytest.raises(ConfigurationError, match="no vector named"):
                await QdrantContentStore(client, "c", vector_name="image").ensure_collection(DIM)
        finally:
            await client.close()

    async def test_unnamed_vector_collections_work(self) -> None:
        client = AsyncQdrantClient(location=":memory:")
        try:
            store = QdrantContentStore(client, "plain", vector_name=None)
            await store.ensure_collection(DIM)
            await load(store)
            vecs = await store.get_vectors(["1"])
            assert list(vecs["1"]) == pytest.approx(normalised(unit(0)), abs=1e-6)
            assert (await store.search_vector(unit(0), limit=1))[0].content_id == "1"
        finally:
            await client.close()

    async def test_missing_collection_is_a_store_error(self) -> None:
        client = AsyncQdrantClient(location=":memory:")
        try:
            store = QdrantContentStore(client, "missing")
            with pytest.raises(StoreError):
                await store.get(["1"])
            with pytest.raises(StoreError):
                await store.ping()
        finally:
            await client.close()

    async def test_unreachable_server_is_transient(self) -> None:
        from worker.recsys_core.errors import TransientStoreError

        # Port 9 (discard) on loopback: nothing listens, the connect fails at once.
        client = AsyncQdrantClient(url="http://127.0.0.1:9", timeout=2, check_compatibility=False)
        try:
            store = QdrantContentStore(client, "content")
            with pytest.raises(TransientStoreError):
                await store.ping()
            with pytest.raises(TransientStoreError):
                await store.search_vector(unit(0), limit=3)
        finally:
            await client.close()
