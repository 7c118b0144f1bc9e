"""Stage 2 across machines: two torchrun launchers (as on two hosts) meeting at one rendezvous
endpoint train from one store exactly as one launcher running both ranks."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from advmix.checkpoints import generator_fingerprint, load_generator
from tests.tiny_nets import tiny_generator
from tests.train_helpers import write_store

TRAIN = [
    "--method", "advmix", "--batch-size", "16", "--width", "8", "--attack-steps", "2",
    "--buffer-size", "40", "--threads", "1", "--no-progress", "--epochs", "1",
]  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*torchrun_flags: str, store: str, generator: str, out) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", *torchrun_flags, "-m", "cli", "train",
        "--store", store, "--generator", generator, "--out", str(out), *TRAIN,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip


def finish(*procs: subprocess.Popen) -> None:
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its rank
                proc.communicate()


@pytest.mark.slow
def test_two_launchers_at_one_endpoint_train_like_one_launcher(tmp_path):
    G_path = tiny_generator(tmp_path / "G.pt", k=4)
    G = load_generator(G_path)
    store = write_store(
        str(tmp_path / "store.zarr"), num_samples=64, shard_size=16, k=4,
        fingerprint=generator_fingerprint(G), generator=G,
    )  # fmt: skip
    one = tmp_path / "one-launcher"
    finish(launch("--nproc_per_node=2", f"--master_port={free_port()}", store=store,
                  generator=str(G_path), out=one))  # fmt: skip
    two = tmp_path / "two-launchers"
    endpoint = f"127.0.0.1:{free_port()}"
    rendezvous = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
                  f"--rdzv_endpoint={endpoint}", "--rdzv_id=advmix-test"]  # fmt: skip
    # Each host writes its own run folder; rank 0's classifier is the run's.
    hosts = [launch(*rendezvous, store=store, generator=str(G_path), out=two) for _ in range(2)]
    finish(*hosts)
    ckpt_one = torch.load(one / "checkpoint.pt", weights_only=True)
    ckpt_two = torch.load(two / "checkpoint.pt", weights_only=True)
    assert [s["world_size"] for s in ckpt_two["stream"]] == [2, 2]
    assert sorted(s["samples_consumed"] for s in ckpt_two["stream"]) == [32, 32]
    assert ckpt_two["rank_steps"] == ckpt_one["rank_steps"] == [2, 2]
    first = torch.load(one / "classifier.pt", weights_only=True)["state_dict"]
    second = torch.load(two / "classifier.pt", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    for name in first:  # gloo averages two gradients: a + b == b + a, so equal bit for bit
        assert torch.equal(first[name], second[name]), name
