"""Model files named by URL: workers on a cluster cannot see the launcher's disk, so the
generator may live in a bucket; it is copied once per process to a local temp file."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import fsspec

from advmix.errors import AdvmixError
from schemas.urls import credentials_in_url, one_line, redact, remember_secrets


def local_copy(url: str, storage_options: dict | None = None) -> str:
    """A local path holding the bytes at ``url`` (the path itself when it is already local)."""
    remember_secrets(url, storage_options)
    refused = credentials_in_url(url)
    if refused:
        raise AdvmixError(refused)
    try:
        fs, path = fsspec.url_to_fs(url, **(storage_options or {}))
    except (ValueError, ImportError, TypeError) as exc:  # scheme unknown or not installed
        raise AdvmixError(f"cannot fetch {redact(url)}: {one_line(exc)}") from None
    if "file" in fs.protocol or "local" in fs.protocol:
        return path
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "advmix-artifacts" / f"{digest}-{Path(path).name}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        try:
            fs.get_file(path, str(partial))
        except Exception as exc:  # any client failure (credentials, endpoint, missing object)
            raise AdvmixError(f"cannot fetch {redact(url)}: {one_line(exc)}") from None
        os.replace(partial, target)  # atomic, so a concurrent process never reads half a file
    return str(target)
