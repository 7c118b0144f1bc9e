"""Where a store lives: fsspec URLs, storage options, and the few file operations we need.

Accepted: a plain path, ``file://``, ``memory://``, ``s3://``, ``gs://`` (or ``gcs://``), and any
other fsspec URL. ``storage_options`` go to fsspec and zarr unchanged; credentials otherwise come
from the usual environment (``AWS_*`` for s3fs/botocore, ``STORAGE_EMULATOR_HOST`` and Google
application credentials for gcsfs). Option values never appear in messages: see ``mask``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import uuid
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

from schemas.errors import StoreError

_SECRET_KEY = re.compile(
    r"key|secret|token|password|passwd|credential|session|auth|signature", re.I
)
_OPTION_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value); VALUE is JSON when it parses (true, 3, {...}), else text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise StoreError("storage option must look like KEY=VALUE (no '=' found)")
    if not _OPTION_KEY.match(key):
        raise StoreError(f"storage option key {key!r} is not an identifier")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def mask(options: Any) -> Any:
    """A copy of ``options`` safe to print: values of credential-like keys become '***'."""
    if isinstance(options, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) else mask(v) for k, v in options.items()}
    if isinstance(options, list | tuple):
        return [mask(v) for v in options]
    return options


def redact_url(url: str) -> str:
    """Drop any ``user:password@`` from a URL before it goes into a message."""
    return re.sub(r"^([A-Za-z0-9+.-]+://)[^/@]*@", r"\1***@", url)


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
_SECRETS: set[str] = set()  # credential values this process was given (URLs, options)


def credentials_in_url(url: str) -> str | None:
    """Why ``url`` is refused when it carries ``user:password@`` (``None`` when it does not).

    fsspec reads ``s3://KEY:SECRET@bucket/x`` as a bucket named ``KEY:SECRET@bucket``; a
    credential in a URL also ends up in shell history and in every tool's logs. Options and the
    environment are the ways to pass one.
    """
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*@", url or ""):
        return None
    return (
        f"{redact_url(url)}: credentials in a URL are not accepted; pass them as storage "
        "options (s3: --storage-option key=... --storage-option secret=...; gs: "
        "--storage-option token=FILE) or through the environment (AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)"
    )


def remember_secrets(url: str, storage_options: dict | None = None) -> None:
    """Note the credentials in a URL's ``user:password@`` and in credential-like storage
    options, so that ``redact`` removes them wherever they turn up (an exception's message
    may quote them without the URL around them)."""
    found = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/@]*)@", url or "")
    parts = found.group(1).split(":") if found else []
    parts += [str(v) for k, v in (storage_options or {}).items() if _SECRET_KEY.search(str(k))]
    for part in parts:
        for value in {part, unquote(part)}:
            if len(value) >= 4:
                _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with credentials removed: any URL's ``user:password@``, the values
    ``remember_secrets`` noted and the AWS credentials of the environment."""
    text = _USERINFO.sub(r"\1***@", str(text))
    secrets = _SECRETS | {os.environ.get(name, "") for name in _ENV_SECRETS}
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


_UNKNOWN_KEYWORD = re.compile(r"unexpected keyword argument '([^']+)'")


def unknown_option(exc: BaseException) -> str | None:
    """The storage option a filesystem client refused, when ``exc`` is that refusal: s3fs and
    gcsfs pass unknown options on to their client's constructor, which raises TypeError on
    first use."""
    found = _UNKNOWN_KEYWORD.search(str(exc)) if isinstance(exc, TypeError) else None
    return found.group(1) if found else None


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line (its lines joined), credentials redacted."""
    option = unknown_option(exc)
    if option is not None:
        return f"unknown storage option {option!r} (see the filesystem's documentation)"
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:limit]


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through ``redact`` (message and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _redacted_excepthook(kind, value, tb) -> None:
    import traceback

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


def install_redaction() -> None:
    """For an entry point: every log line (through the root logger's handlers, configured
    now, and the last-resort handler) and the traceback of any uncaught exception go out
    through ``redact``. Filters sit on handlers: a logger's own filters miss records that
    propagate from its children."""
    sys.excepthook = _redacted_excepthook
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def _is_local(url: str) -> bool:
    return ("://" not in url and "::" not in url) or url.startswith("file://")


def _emulator_defaults(url: str, options: dict) -> dict:
    # gcsfs against STORAGE_EMULATOR_HOST: no Google credentials to look up, and its gRPC
    # bucket-type probe stalls 60 s per bucket on emulators unless switched off before import.
    if re.match(r"^gc?s://", url) and os.environ.get("STORAGE_EMULATOR_HOST"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        return {"token": "anon", **options}
    return options


class Location:
    """A store root: the URL as given, an fsspec filesystem, and the root path inside it.

    Picklable (filesystems are rebuilt on first use), so it travels to worker processes.
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        if not isinstance(url, str) or not url.strip():
            raise StoreError("store URL is empty")
        self.url = url.rstrip("/") or url
        self.local = _is_local(url)
        self.storage_options = _emulator_defaults(url, dict(storage_options or {}))
        self.display = redact_url(self.url)
        remember_secrets(url, self.storage_options)
        refused = credentials_in_url(url)
        if refused:
            raise StoreError(refused)

    def __getstate__(self) -> dict:
        keep = ("url", "local", "storage_options", "display")
        return {k: v for k, v in self.__dict__.items() if k in keep}

    def __repr__(self) -> str:
        return f"Location({self.display!r}, storage_options={mask(self.storage_options)!r})"

    def _fs_and_root(self):
        # Rebuilt in a forked child: a filesystem's event-loop thread does not survive fork.
        cached = self.__dict__.get("_cached")
        if cached is None or cached[0] != os.getpid():
            cached = (os.getpid(), *self._connect())
            self.__dict__["_cached"] = cached
        return cached[1], cached[2]

    def _connect(self):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        with self.errors("open"):
            if self.local:
                path = self.url.removeprefix("file://")
                return LocalFileSystem(auto_mkdir=True), os.path.abspath(os.path.expanduser(path))
            try:
                fs, root = fsspec.url_to_fs(self.url, **self.storage_options)
            except (ValueError, ImportError, TypeError) as exc:  # scheme unknown or not installed
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise StoreError(f"cannot open {self.display}: {redact(first)}") from None
        return fs, root.rstrip("/")

    @property
    def fs(self):
        return self._fs_and_root()[0]

    @property
    def root(self) -> str:
        return self._fs_and_root()[1]

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def zarr_store(self, read_only: bool):
        """A zarr store for the root: LocalStore for local paths, FsspecStore otherwise.

        The FsspecStore wraps this location's own (synchronous) filesystem instead of letting
        zarr build a second, asynchronous one: writes through zarr then invalidate the listing
        cache our reads use, one connection pool serves both, and the client session is
        closed at exit (an asynchronous s3fs instance leaves "Unclosed client session" on
        stderr of every command that touched an array).
        """
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
        from zarr.storage import FsspecStore, LocalStore

        with self.errors("open"):
            if self.local:
                return LocalStore(self.root, read_only=read_only)
            wrapped = AsyncFileSystemWrapper(self.fs, asynchronous=True)
            return FsspecStore(wrapped, path=self.root, read_only=read_only)

    @contextmanager
    def errors(self, action: str):
        """Turn filesystem and client failures into one-line StoreErrors naming this store."""
        try:
            yield
        except StoreError:
            raise
        except FileNotFoundError:
            raise
        except (OSError, *client_errors()) as exc:
            raise StoreError(f"cannot {action} {self.display}: {one_line(exc)}") from None
        except TypeError as exc:
            if unknown_option(exc) is None:
                raise  # a bug of ours, not the user's option
            raise StoreError(f"cannot {action} {self.display}: {one_line(exc)}") from None

    def read(self, rel: str) -> bytes:
        with self.errors("read"):
            return self.fs.cat_file(self.path(rel))

    def write(self, rel: str, data: bytes) -> None:
        """One PUT on object stores; on local disk a plain write (callers rewrite on retry)."""
        with self.errors("write"):
            self.fs.pipe_file(self.path(rel), data)

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Readers see the old object or the new one, never a partial one.

        Object stores make a single PUT atomic; on local disks we write a temporary file next to
        the target and rename it, which POSIX makes atomic within one directory.
        """
        if not self.local:
            self.write(rel, data)
            return
        target = self.path(rel)
        temporary = f"{target}.tmp-{uuid.uuid4().hex}"
        with self.errors("write"):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)

    def exists(self, rel: str) -> bool:
        with self.errors("read"):
            self.fs.invalidate_cache()
            return self.fs.exists(self.path(rel))

    def delete(self, rel: str) -> None:
        with self.errors("delete from"):
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                pass

    def delete_all(self, keep: tuple[str, ...] = ()) -> None:
        """Delete every object under the root but ``keep`` (relative paths)."""
        with self.errors("delete"):
            if not keep:
                try:
                    self.fs.rm(self.root, recursive=True)
                except FileNotFoundError:
                    pass
                return
            doomed = [self.path(rel) for rel in self.list_objects() if rel not in keep]
            if doomed:
                self.fs.rm(doomed)

    def list_objects(self, prefix: str = "") -> dict[str, int]:
        """{path relative to the root: size in bytes} of every object under ``prefix``."""
        base = self.path(prefix).rstrip("/") if prefix else self.root
        with self.errors("list"):
            # Other processes (and zarr's own filesystem instance) write here too, and s3fs and
            # gcsfs answer reads from a cached listing ("not found" for newer objects): keep no
            # listing cached before or after.
            self.fs.invalidate_cache()
            try:
                found = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return {}
            finally:
                self.fs.invalidate_cache()
        # ``find`` strips protocols and slashes inconsistently across filesystems; compare
        # stripped forms so memory:// ("/x") and bucket ("bkt/x") roots both work.
        root = self.root.strip("/") + "/"
        objects = {}
        for name, info in found.items():
            if info.get("type", "file") != "file":
                continue
            stripped = self.fs._strip_protocol(name).strip("/")
            if stripped.startswith(root):
                objects[stripped[len(root) :]] = int(info.get("size") or 0)
        return objects


def client_errors() -> tuple[type[BaseException], ...]:
    # botocore raises its own types for unreachable endpoints and missing credentials.
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return ()
    return BotoCoreError, ClientError
