"""Latent store throughput: whole-shard writes and reads, and random single-sample reads.

Measured on local disk and on the S3 emulator (moto on 127.0.0.1, same process, so its server
work competes with the client for the same cores). Sizes follow the project's 32x32 generator:
w [N, 8, 128] float16 plus the 3x32x32 uint8 source image.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from schemas.layout import Layout
from schemas.manifest import Provenance
from schemas.reader import open_store
from schemas.testing import moto_s3
from schemas.writer import StoreWriter

LAYOUT = Layout(
    num_samples=4096,
    shard_size=512,
    num_ws=8,
    w_dim=128,
    w_dtype="float16",
    image_shape=(3, 32, 32),
    label_names=tuple(f"class{i}" for i in range(10)),
)
RANDOM_READS = 128


def _inputs(shard: int, rng: np.random.Generator) -> dict:
    start, stop = LAYOUT.shard_bounds(shard)
    n = stop - start
    return {
        "w": rng.normal(size=(n, LAYOUT.num_ws, LAYOUT.w_dim)).astype(np.float32),
        "labels": rng.integers(0, 10, n),
        "images": rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
        "rows": {
            "id": [f"s{i}" for i in range(start, stop)],
            "rec_mse": rng.uniform(0, 0.05, n),
            "rec_psnr": rng.uniform(20, 40, n),
        },
    }


def _measure(url: str, storage_options: dict | None) -> dict:
    rng = np.random.default_rng(0)
    inputs = [_inputs(s, rng) for s in range(LAYOUT.num_shards)]

    started = time.perf_counter()
    writer = StoreWriter.create(url, LAYOUT, Provenance(k=4), storage_options=storage_options)
    for shard, shard_inputs in enumerate(inputs):
        writer.write_shard(shard, **shard_inputs)
    writer.commit(code_version="bench")
    write_s = time.perf_counter() - started

    started = time.perf_counter()
    store = open_store(url, storage_options)
    fast_check_s = time.perf_counter() - started
    started = time.perf_counter()
    store.validate(full=True)
    full_check_s = time.perf_counter() - started

    store.index()  # loaded once per process by any loader; not part of the read cost
    started = time.perf_counter()
    count = sum(len(shard) for shard in store.iter_shards())
    shard_read_s = time.perf_counter() - started

    picks = rng.integers(0, LAYOUT.num_samples, RANDOM_READS)
    started = time.perf_counter()
    for sample in picks:
        store.read_sample(int(sample))
    random_read_s = time.perf_counter() - started

    shard_sps = count / shard_read_s
    random_sps = RANDOM_READS / random_read_s
    return {
        "write_samples_per_s": round(LAYOUT.num_samples / write_s, 1),
        "shard_read_samples_per_s": round(shard_sps, 1),
        "random_read_samples_per_s": round(random_sps, 1),
        "shard_vs_random_read_ratio": round(shard_sps / random_sps, 1),
        "fast_check_s": round(fast_check_s, 3),
        "full_check_s": round(full_check_s, 3),
        "store_bytes": store.size_bytes,
    }


def _inner_chunk_reads(tmp: str) -> dict:
    """Whole-shard read speed of ``w`` alone for several inner chunk sizes (plain zarr).

    The store uses one-sample chunks so that single samples are addressable; this shows what
    that costs for whole-shard reads, where zarr 3.1 decodes every inner chunk separately.
    """
    import zarr

    num, size = LAYOUT.num_samples, LAYOUT.shard_size
    shape = (LAYOUT.num_ws, LAYOUT.w_dim)
    data = np.random.default_rng(0).normal(size=(num, *shape)).astype(np.float16)
    speeds = {}
    for chunk in (1, 16, size):
        array = zarr.create_array(
            f"{tmp}/w{chunk}", shape=data.shape, dtype=data.dtype,
            chunks=(chunk, *shape), shards=(size, *shape),
        )  # fmt: skip
        array[:] = data
        started = time.perf_counter()
        for start in range(0, num, size):
            array[start : start + size]
        speeds[str(chunk)] = round(num / (time.perf_counter() - started), 1)
    return speeds


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        local = _measure(f"{tmp}/store.zarr", None)
        inner = _inner_chunk_reads(tmp)
    with moto_s3(buckets=("bench",)) as options:
        s3 = _measure("s3://bench/store.zarr", options)
    return {
        "layout": {
            "num_samples": LAYOUT.num_samples,
            "shard_size": LAYOUT.shard_size,
            "w": [LAYOUT.num_ws, LAYOUT.w_dim, LAYOUT.w_dtype],
            "image": list(LAYOUT.image_shape),
            "random_reads": RANDOM_READS,
        },
        "local": local,
        "s3_emulator": s3,
        "local_vs_s3_write_ratio": round(
            local["write_samples_per_s"] / s3["write_samples_per_s"], 2
        ),
        "local_vs_s3_shard_read_ratio": round(
            local["shard_read_samples_per_s"] / s3["shard_read_samples_per_s"], 2
        ),
        "w_shard_read_samples_per_s_by_inner_chunk": inner,
    }
