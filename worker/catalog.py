"""Catalogue loading: MovieLens ``movies.csv`` or JSONL -> embeddings -> content store.

JSONL lines: ``{"id": "1", "title": "...", "tags": ["genre:Comedy", ...], ...}``
(extra keys become payload). MovieLens genres become ``genre:<name>`` tags.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from worker.recsys_core.ports import CatalogWriter, EmbeddingModel
from worker.recsys_core.types import Content

_NO_GENRE = "(no genres listed)"


def read_movielens(path: Path) -> Iterator[Content]:
    """Items of a MovieLens ``movies.csv`` (movieId,title,genres)."""
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            genres = [g for g in row["genres"].split("|") if g and g != _NO_GENRE]
            yield Content(
                id=row["movieId"],
                title=row["title"],
                tags=tuple(f"genre:{g}" for g in genres),
            )


def read_jsonl(path: Path) -> Iterator[Content]:
    """Items of a JSONL catalogue."""
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj: dict[str, Any] = orjson.loads(line)
            try:
                cid = str(obj.pop("id"))
            except KeyError:
                raise ValueError(f"{path}:{n}: catalogue line has no 'id'") from None
            title = str(obj.pop("title", ""))
            tags = tuple(str(t) for t in obj.pop("tags", []))
            yield Content(id=cid, title=title, tags=tags, payload=obj)


def read_catalog(path: Path) -> list[Content]:
    """Read a catalogue, picking the format from the file name."""
    if path.suffix == ".csv":
        return list(read_movielens(path))
    return list(read_jsonl(path))


def embedding_text(item: Content) -> str:
    """What gets embedded for an item: its title and its tag labels."""
    labels = ", ".join(t.split(":", 1)[-1] for t in item.tags)
    return f"{item.title}. {labels}" if labels else item.title


async def load_catalog(
    items: list[Content],
    *,
    store: CatalogWriter,
    embedder: EmbeddingModel,
    batch_size: int = 256,
    progress: Any = None,
) -> int:
    """Embed and upsert ``items``; return how many were written."""
    encode_many = getattr(embedder, "encode_many", None)
    written = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        texts = [embedding_text(c) for c in chunk]
        vectors = encode_many(texts) if encode_many else [embedder.encode(t) for t in texts]
        await store.upsert(list(zip(chunk, vectors, strict=True)))
        written += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    optimize = getattr(store, "optimize", None)
    if optimize is not None:
        await optimize()
    return written
