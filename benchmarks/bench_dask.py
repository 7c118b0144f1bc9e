"""Stage 1 on Dask: encode throughput with 1 and 2 Dask worker processes vs the FnApiRunner.

One run, same images, networks and settings for every runner: the project's 32x32 generator
(the shipped checkpoint when present, else a random one of the same architecture) and the
shipped VGG trunk. Each figure is the wall time of ``pipeline.encode`` (screening, shards,
commit); the Dask clusters (LocalCluster of worker processes, one thread each, on 127.0.0.1)
are started before the clock starts, as a long-lived cluster would be. The FnApiRunner runs in
this process twice, with torch's own thread count and with ``--torch-threads 1`` (what each
Dask worker uses), so the figures separate the runner from the thread count.

Each runner is measured twice, in the order A B C D then D C B A, so a drift in the load of
other processes reaches every runner alike; the ratios use each runner's faster run, and
``spread`` (slower / faster run of one runner) shows how much the load moved the figures.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_encode import _generator

NUM_IMAGES = 64
STEPS = 20
SHARD = 16  # 4 shards: both workers of the 2-worker cluster have work throughout


def _encode(argv: list[str]) -> float:
    from pipeline.encode import run as encode

    started = time.perf_counter()
    counts = encode(argv)
    assert counts["encoded"] > 0
    return time.perf_counter() - started


def run(num_images: int = NUM_IMAGES, steps: int = STEPS, shard: int = SHARD) -> dict:
    from distributed import LocalCluster

    spec = f"cfmnist:train?limit={num_images}"
    results: dict = {
        "num_images": num_images, "steps": steps, "shard_size": shard,
        "cpu_count": os.cpu_count(), "fnapi_torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        _, g_path = _generator(Path(tmp))

        def argv(name: str, *extra: str) -> list[str]:
            return ["--input", spec, "--output", str(Path(tmp) / name), "--generator", g_path,
                    "--steps", str(steps), "--batch-size", str(shard), "--shard-size",
                    str(shard), *extra]  # fmt: skip

        def cluster_run(workers: int, name: str) -> float:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:  # fmt: skip
                address = f"--dask_client_address={cluster.scheduler_address}"
                return _encode(argv(name, "--runner=DaskRunner", address))

        runners = {
            "fnapi": lambda name: _encode(argv(name)),
            "fnapi_1_thread": lambda name: _encode(argv(name, "--torch-threads", "1")),
            "dask_1": lambda name: cluster_run(1, name),
            "dask_2": lambda name: cluster_run(2, name),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        order = list(runners) + list(reversed(runners))
        for i, name in enumerate(order):
            seconds[name].append(runners[name](f"{name}-{i}"))
    best = {name: min(times) for name, times in seconds.items()}
    results |= {f"{name}_images_per_s": round(num_images / s, 3) for name, s in best.items()}
    results |= {f"{name}_spread": round(max(t) / min(t), 3) for name, t in seconds.items()}
    results |= {
        "dask_1_vs_fnapi": round(best["fnapi"] / best["dask_1"], 3),
        "dask_2_vs_fnapi": round(best["fnapi"] / best["dask_2"], 3),
        "dask_2_vs_dask_1": round(best["dask_1"] / best["dask_2"], 3),
        "dask_1_vs_fnapi_1_thread": round(best["fnapi_1_thread"] / best["dask_1"], 3),
    }
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
