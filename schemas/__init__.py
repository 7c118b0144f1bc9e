"""The latent-store contract between stage 1 (encode) and stage 2 (train).

Format: ``docs/store-format.md``. Modules: ``layout`` (names, shapes, the index schema),
``urls`` (fsspec locations, storage options), ``manifest`` (manifest.json, provenance),
``plan`` (what the driver fixed at creation), ``writer`` (``StoreWriter``), ``reader``
(``open_store``, ``Store``), ``validate`` (fast and full checks), ``testing`` (local S3 and GCS
emulators for tests and benchmarks). Nothing here imports torch.

The names below load on first use, so ``import schemas`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SCHEMA_VERSION": "schemas.layout",
    "Layout": "schemas.layout",
    "Provenance": "schemas.manifest",
    "StoreError": "schemas.errors",
    "StoreWriter": "schemas.writer",
    "Store": "schemas.reader",
    "Shard": "schemas.reader",
    "open_store": "schemas.reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
