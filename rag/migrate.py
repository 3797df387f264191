"""Copying a collection between vector stores without re-embedding."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

from rag import plugins
from rag.collection import Collection
from rag.config import Settings
from rag.errors import CollectionNotFoundError, StoreError
from rag.manifest import Manifest, collection_dir


def migrate(
    settings: Settings,
    *,
    source_store: str,
    target_store: str,
    target_url: str | None = None,
    batch_size: int = 1000,
    progress: bool = False,
) -> dict[str, Any]:
    """Copy ``settings.collection`` from ``source_store`` (at ``settings.store_url``, or its
    embedded engine) to ``target_store`` (at ``target_url``, with ``settings.store_options``,
    saved with it): vectors, texts, metadata and the ingest record, in batches; the source's
    store options and recall calibration go along only to a store of the same kind. The target ends up with
    exactly the source's chunks (extra ones are removed), and the counts are verified."""
    for name in (source_store, target_store):
        plugins.get("stores", name)  # a known store, before its name becomes a folder
    if source_store == target_store and target_url == settings.store_url:
        raise StoreError("source and target are the same store; name another with --to or --to-url")
    started = time.perf_counter()
    src_settings = replace(settings, store=source_store, store_options={})
    dst_settings = replace(settings, store=target_store, store_url=target_url)
    src = Collection(src_settings)
    if src.manifest is None:
        raise CollectionNotFoundError(
            f"collection {settings.collection!r} has no manifest in {source_store}"
        )
    dst_dir = collection_dir(dst_settings)
    dst_dir.mkdir(parents=True, exist_ok=True)
    manifest_file = dst_dir / "manifest.json"
    if manifest_file.exists():
        existing = Manifest.load(manifest_file)
        if (existing.embed_model, existing.embed_backend, existing.dim) != (
            src.manifest.embed_model,
            src.manifest.embed_backend,
            src.manifest.dim,
        ):
            raise StoreError(
                f"collection {settings.collection!r} already exists in {target_store} with another "
                f"embedder ({existing.embed_model}, {existing.dim}d); drop it first"
            )
    # Store options and a recall calibration belong to a kind of store: they travel only to
    # the same kind (another server of it); the target's own come from the settings, and a
    # later ingest calibrates it.
    same_kind = source_store == target_store
    m = replace(
        src.manifest,
        store=target_store,
        store_options={
            **(src.manifest.store_options if same_kind else {}),
            **settings.store_options,
        },
        calibration=src.manifest.calibration if same_kind else None,
    )
    m.save(manifest_file)
    dst = Collection(dst_settings)
    bar = None
    try:
        with src.lock(), dst.lock():
            total = src.store.count()
            if progress:
                from tqdm import tqdm

                bar = tqdm(
                    total=total,
                    unit="chunk",
                    desc=f"{source_store} → {target_store}",
                    file=sys.stderr,
                )
            seen: set[str] = set()
            copied = 0
            for chunks, vectors in src.store.scan(batch_size=batch_size):
                dst.store.upsert(chunks, vectors)
                seen.update(c.id for c in chunks)
                copied += len(chunks)
                if bar is not None:
                    bar.update(len(chunks))
            extra = [
                c.id
                for batch, _ in dst.store.scan(batch_size=batch_size)
                for c in batch
                if c.id not in seen
            ]
            if extra:
                dst.store.delete(extra)
            dst.records.copy_from(src.records)
            source_count, target_count = src.store.count(), dst.store.count()
            if source_count != target_count:
                raise StoreError(
                    f"migration incomplete: {source_count} chunks in {source_store} but "
                    f"{target_count} in {target_store}"
                )
    finally:
        if bar is not None:
            bar.close()
        src.close()
        dst.close()
    return {
        "collection": settings.collection,
        "from": source_store,
        "to": target_store,
        "copied": copied,
        "removed_extra": len(extra),
        "source_count": source_count,
        "target_count": target_count,
        "seconds": round(time.perf_counter() - started, 3),
    }
