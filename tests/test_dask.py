"""The encode job on a real Dask cluster (a LocalCluster of worker processes on 127.0.0.1):
the same store bytes as Beam's local runners, shards spread over the workers, and a worker
killed with SIGKILL mid-job never leaves a half-written shard in a committed store."""

import io
import os
import signal
import threading
import time

import distributed
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from advmix.datasets import load
from pipeline.encode import run
from schemas.reader import open_store
from tests.tiny_nets import tiny_features, tiny_generator

SPEC = "cfmnist:train?limit=16"


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nets")
    return tiny_generator(root / "G.pt"), tiny_features(root / "F.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """16 Fashion-MNIST images and one row without a label, as a Parquet of PNG bytes: both
    of the job's pipelines (screening, then the shards) run on the runner under test."""
    data = load("cfmnist:train?limit=16")
    rows = [_png(image) for image in data.images] + [_png(data.images[0])]
    path = tmp_path_factory.mktemp("in") / "images.parquet"
    labels = [int(x) for x in data.labels] + [None]
    pq.write_table(pa.table({"id": [f"img-{i:02d}" for i in range(17)], "image": rows,
                             "label": labels}), path)  # fmt: skip
    return str(path)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cluster():
    # Starting worker processes sets OMP_NUM_THREADS=1 and the like in this process's
    # environment and leaves them: later tests' subprocesses would run with other thread counts.
    environ = dict(os.environ)
    yield from _cluster()
    os.environ.clear()
    os.environ.update(environ)


def _cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        yield cluster, client


def _args(nets, output, *extra, shard_size=8, steps=2, source=SPEC):
    G, F = nets
    return [
        "--input", source, "--output", str(output), "--generator", str(G), "--features", str(F),
        "--steps", str(steps), "--batch-size", "4", "--shard-size", str(shard_size),
        "--w-avg-samples", "16", "--torch-threads", "1", *extra,
    ]  # fmt: skip


def _fingerprint(url):
    """Every shard's object checksums and the sha256 of the index, dead letters and skipped."""
    manifest = open_store(str(url), full_check=True).manifest
    tables = {e.path: e.sha256 for e in (manifest.index, manifest.dead_letter, manifest.skipped)}
    return [s.sha256 for s in manifest.shards], tables


def _dask(cluster):
    return ["--runner=DaskRunner", f"--dask_client_address={cluster[0].scheduler_address}"]


def test_every_runner_writes_the_same_store(nets, images, cluster, tmp_path):
    fnapi = _fingerprint(_run(_args(nets, tmp_path / "fnapi", source=images)))
    multi = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert _fingerprint(_run(_args(nets, tmp_path / "multi", *multi, source=images))) == fnapi
    with distributed.get_task_stream(cluster[1]) as stream:
        counts = run(_args(nets, tmp_path / "dask", *_dask(cluster), source=images))
    assert (counts["encoded"], counts["rejected"], counts["resumed_shards"]) == (16, 1, 0)
    assert _fingerprint(tmp_path / "dask") == fnapi
    assert len(fnapi[0]) == 2
    # one partition per shard: both worker processes wrote a shard
    workers = {task["worker"] for task in stream.data}
    assert workers == set(cluster[0].scheduler_info["workers"]), workers


def _run(argv):
    run(argv)
    return argv[argv.index("--output") + 1]


def test_a_worker_killed_mid_job_leaves_nothing_half_written(nets, cluster, tmp_path):
    reference = _fingerprint(_run(_args(nets, tmp_path / "ref", shard_size=4, steps=8)))
    _, client = cluster
    pids = client.run(os.getpid)
    out = tmp_path / "killed"
    killed = []

    def kill_one_worker_mid_encode():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            # the store exists: screening is over, the encode pipeline is starting
            if (out / "zarr.json").exists():
                busy = [addr for addr, tasks in client.processing().items() if tasks]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_worker_mid_encode, daemon=True)
    killer.start()
    argv = _args(nets, out, *_dask(cluster), shard_size=4, steps=8)
    try:
        counts = run(argv)  # Dask reruns the lost worker's shard elsewhere
        print("the job finished after the kill")
    except Exception as exc:  # or the job stops with one line, and the rerun finishes
        message = str(exc)
        assert "\n" not in message and "rerun the same command" in message, message
        assert not (out / "manifest.json").exists()
        counts = run(argv)
        print(f"the job stopped ({message}); the rerun resumed {counts['resumed_shards']} shards")
    killer.join()
    assert killed, "no worker was busy with the encode pipeline"
    assert counts["encoded"] == 16
    assert _fingerprint(out) == reference  # full_check: every object matches its sha256


def test_short_runner_name_and_no_address_start_a_local_cluster(nets, tmp_path):
    """Without --dask_client_address the job starts (and stops) its own cluster."""
    counts = run(_args(nets, tmp_path / "own", "--runner=DaskRunner"))
    assert counts["encoded"] == 16


def test_an_unreachable_scheduler_is_one_line(nets, tmp_path):
    argv = _args(nets, tmp_path / "x", "--runner=DaskRunner",
                 "--dask_client_address=tcp://127.0.0.1:9", "--dask_connection_timeout=2")  # fmt: skip
    with pytest.raises(Exception) as exc:
        run(argv)
    assert "\n" not in str(exc.value) and "pipeline stopped" in str(exc.value)
    assert not (tmp_path / "x" / "manifest.json").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--runner=DaskRunner"], {"npartitions": 3}),
        (["--runner", "dask", "--dask_client_address=tcp://10.0.0.1:8786"],
         {"npartitions": 3, "address": "tcp://10.0.0.1:8786"}),
        (["--runner=DaskRunner", "--dask_npartitions=7"], {"npartitions": 7}),
        (["--runner=DaskRunner", "--dask_partition_size=2"], {"partition_size": 2}),
    ],
)  # fmt: skip
def test_dask_flags_reach_the_runner(flags, expected, caplog):
    """What Beam's DaskRunner reads from the options: one partition per shard unless the
    user chose, and the scheduler's address; nothing logged as unparseable."""
    from apache_beam.runners.dask.dask_runner import DaskOptions

    from pipeline.engines import DASK_RUNNER, Engine

    engine = Engine(flags)
    assert engine.is_dask and not engine.runs_here
    options = engine.options(3)
    assert options.get_all_options()["runner"] == DASK_RUNNER
    read = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
    assert {k: read[k] for k in ("npartitions", "partition_size", "address") if k in read} == (
        expected
    )
    assert "unparseable" not in caplog.text
