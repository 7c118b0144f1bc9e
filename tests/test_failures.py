"""Nothing silently wrong: damaged stores are refused on read, bad inputs get one line and a
non-zero exit before any costly work, credentials never show, training stops when it diverges,
and one encode at a time writes a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_store import run as run_in_process
from tiny_nets import tiny_features, tiny_generator
from train_helpers import write_store

from advmix.checkpoints import generator_fingerprint, load_generator
from schemas.errors import StoreError
from schemas.lease import LEASE, WriterLease
from schemas.testing import moto_s3
from schemas.urls import Location, redact, remember_secrets

SECRET_KEY, SECRET = "AKIAEXAMPLE1234", "s3cr3t/Value+XYZ"


cli = run_in_process  # advmix ARGS in this process: (exit code, stdout, stderr)


def encode(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.encode", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("failures")
    G_path = tiny_generator(root / "G.pt", k=4)
    G = load_generator(G_path)
    store = write_store(
        str(root / "store.zarr"), num_samples=48, shard_size=16, k=4,
        fingerprint=generator_fingerprint(G), generator=G, image_source="cfmnist:train?limit=48",
    )  # fmt: skip
    text = root / "notes.txt"
    text.write_text("hello, I am not a checkpoint\n")
    return {"root": root, "G": str(G_path), "F": str(tiny_features(root / "F.pt")),
            "store": store, "text": str(text)}  # fmt: skip


@pytest.fixture
def damaged(nets, tmp_path):
    """A copy of the store with one bit flipped in the middle of shard 1's ``w`` object."""
    import shutil

    copy = tmp_path / "damaged.zarr"
    shutil.copytree(nets["store"], copy)
    target = copy / "w" / "c" / "1" / "0" / "0"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    return str(copy)


# -- 1. reads are verified ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nominal", "randmix"])
def test_training_refuses_a_flipped_bit(capsys, nets, damaged, tmp_path, method):
    code, _, err = cli(capsys, "train", "--store", damaged, "--generator", nets["G"],
                       "--method", method, "--epochs", "1", "--batch-size", "16", "--width", "4",
                       "--out", str(tmp_path / "run"), "--no-progress")  # fmt: skip
    assert code == 1
    assert "shard 1 is damaged: w/c/1/0/0 does not match its sha256" in one_error_line(err)
    assert not (tmp_path / "run" / "classifier.pt").exists()


def test_evaluate_and_report_refuse_a_flipped_bit(capsys, nets, damaged, tmp_path):
    code, _, _ = cli(capsys, "train", "--store", nets["store"], "--generator", nets["G"],
                     "--method", "nominal", "--epochs", "1", "--batch-size", "16", "--width", "4",
                     "--out", str(tmp_path / "run"), "--no-progress")  # fmt: skip
    assert code == 0
    code, _, err = cli(capsys, "evaluate", "--checkpoint", str(tmp_path / "run" / "classifier.pt"),
                       "--store", damaged)  # fmt: skip
    assert code == 1 and "shard 1 is damaged" in one_error_line(err)
    code, _, err = cli(capsys, "store", "report", damaged, "--generator", nets["G"],
                       "--limit", "48")  # fmt: skip
    assert code == 1 and "shard 1 is damaged" in one_error_line(err)


def test_validate_says_what_the_fast_check_leaves_out(capsys, damaged):
    code, out, _ = cli(capsys, "store", "validate", damaged)
    assert code == 0 and "Not checked: the contents (sha256); pass --full" in out
    code, _, err = cli(capsys, "store", "validate", damaged, "--full")
    assert code == 1 and "checksum mismatch in shard 1" in one_error_line(err)


# -- 3. no credentials in messages ----------------------------------------------------------------


def test_credentials_in_a_url_never_show(nets, tmp_path):
    with moto_s3(buckets=("advmix",)) as options:
        url = f"s3://{SECRET_KEY}:{SECRET.replace('/', '%2F')}@advmix/imgs/"
        for argv in (
            ["--input", url, "--output", str(tmp_path / "o"), "--generator", nets["G"]],
            ["--input", "cfmnist:iid?limit=4", "--output", url, "--generator", nets["G"]],
            ["--input", "cfmnist:iid?limit=4", "--output", str(tmp_path / "o"), "--generator",
             url + "G.pt"],
        ):  # fmt: skip
            result = encode(*argv, "--features", nets["F"], "--steps", "1",
                            "--storage-option", f"endpoint_url={options['endpoint_url']}")  # fmt: skip
            assert result.returncode == 1, result.stderr
            printed = result.stdout + result.stderr
            assert SECRET_KEY not in printed and "s3cr3t" not in printed, printed
            assert "***" in one_error_line(result.stderr)


def test_credentials_in_a_url_are_refused_saying_how_to_pass_them(capsys, nets, tmp_path):
    # fsspec would read "KEY:SECRET@bucket" as the bucket's name; refused before any request.
    url = f"s3://{SECRET_KEY}:{SECRET.replace('/', '%2F')}@advmix/"
    for argv in (
        ["--input", url + "x.parquet", "--output", str(tmp_path / "o")],
        ["--input", "cfmnist:iid?limit=4", "--output", url + "store.zarr"],
    ):
        result = encode(*argv, "--generator", nets["G"], "--features", nets["F"], "--steps", "1")
        line = one_error_line(result.stderr)
        assert result.returncode == 1 and "credentials in a URL are not accepted" in line
        assert "--storage-option key=" in line and SECRET_KEY not in line
    code, _, err = cli(capsys, "store", "info", url + "store.zarr")
    assert code == 1 and "credentials in a URL are not accepted" in one_error_line(err)


def test_an_unknown_storage_option_is_one_line_naming_it(capsys, nets, tmp_path):
    with moto_s3(buckets=("advmix",)) as options:
        endpoint = f"endpoint_url={options['endpoint_url']}"
        code, _, err = cli(capsys, "store", "info", "s3://advmix/store.zarr",
                           "--storage-option", endpoint, "--storage-option", "bogus_option=x")  # fmt: skip
        assert code == 1 and "unknown storage option 'bogus_option'" in one_error_line(err)
        result = encode("--input", "cfmnist:iid?limit=4", "--output", "s3://advmix/o.zarr",
                        "--generator", nets["G"], "--features", nets["F"], "--steps", "1",
                        "--storage-option", endpoint, "--storage-option", "bogus=1")  # fmt: skip
        assert result.returncode == 1
        assert "unknown storage option 'bogus'" in one_error_line(result.stderr)


def test_an_unreadable_parquet_input_in_a_bucket_is_one_line(nets, tmp_path):
    with moto_s3(buckets=("advmix",)) as options:
        argv = ["--input", "s3://advmix/nothere.parquet", "--output", str(tmp_path / "o"),
                "--generator", nets["G"], "--features", nets["F"], "--steps", "1"]  # fmt: skip
        missing = encode(*argv, "--storage-option", f"endpoint_url={options['endpoint_url']}")
        assert missing.returncode == 1
        assert "cannot read Parquet s3://advmix/nothere.parquet" in one_error_line(missing.stderr)
    # No credentials anywhere: botocore's NoCredentialsError, in one line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    uncredentialed = subprocess.run([sys.executable, "-m", "pipeline.encode", *argv,
                                     "--storage-option", "endpoint_url=http://127.0.0.1:9"],
                                    capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert uncredentialed.returncode == 1
    assert "cannot read Parquet" in one_error_line(uncredentialed.stderr)


def test_redact_catches_credentials_outside_urls():
    # a secret with "/" is percent-encoded in a URL; redact removes both spellings
    remember_secrets(f"s3://{SECRET_KEY}:{SECRET.replace('/', '%2F')}@bucket/x",
                     {"secret": "token-value-1"})  # fmt: skip
    message = f'Invalid bucket name "{SECRET_KEY}:{SECRET}@bucket"; token-value-1 refused'
    assert SECRET_KEY not in redact(message) and SECRET not in redact(message)
    assert "token-value-1" not in redact(message)


# -- 4. one line, before any costly work ---------------------------------------------------------


@pytest.mark.parametrize("command", [["store", "info"], ["store", "validate"]])
def test_an_unknown_url_scheme_is_one_line(capsys, command):
    code, _, err = cli(capsys, *command, "foo://bucket/store.zarr")
    assert code == 1 and "Protocol not known: foo" in one_error_line(err)


def test_train_with_an_unknown_scheme_or_a_text_file_as_generator(capsys, nets, tmp_path):
    out = str(tmp_path / "run")
    code, _, err = cli(capsys, "train", "--store", "foo://b/s.zarr", "--generator", nets["G"],
                       "--out", out)  # fmt: skip
    assert code == 1 and "Protocol not known" in one_error_line(err)
    code, _, err = cli(capsys, "train", "--store", nets["store"], "--generator", nets["text"],
                       "--out", out)  # fmt: skip
    assert code == 1 and "not a readable generator checkpoint" in one_error_line(err)
    code, _, err = cli(capsys, "evaluate", "--checkpoint", nets["text"], "--store", nets["store"])
    assert code == 1 and "not a readable classifier checkpoint" in one_error_line(err)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--data", "irmcf:nope", "--real-steps", "1"], "unknown split 'nope'"),
        (["--data", "cfmnist:train-random?limit=8"], "--data needs --real-steps N"),
    ],
)
def test_encoder_training_data_is_checked_before_any_step(capsys, nets, tmp_path, flags, words):
    out = tmp_path / "enc"
    code, _, err = cli(capsys, "encoder", "train", "--generator", nets["G"], "--features",
                       nets["F"], "--out", str(out), "--steps", "5", *flags)  # fmt: skip
    assert code == 1 and words in one_error_line(err)
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_learning_rates_are_usage_errors(capsys, nets, tmp_path, value):
    code, _, err = cli(capsys, "train", "--store", nets["store"], "--generator", nets["G"],
                       "--out", str(tmp_path / "run"), "--lr", value)  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "is not a finite number" in err or "not in the range x>0" in err
    assert not (tmp_path / "run").exists()


def _contents(root) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def test_encoding_into_a_committed_store_is_refused_up_front(nets):
    before = _contents(nets["store"])
    result = encode("--input", "cfmnist:train?limit=2000", "--output", nets["store"],
                    "--generator", nets["G"], "--features", nets["F"], "--steps", "50")  # fmt: skip
    assert result.returncode == 1
    assert "already a committed store; pass --overwrite" in one_error_line(result.stderr)
    assert "inverted" not in result.stdout + result.stderr  # no image was inverted
    assert _contents(nets["store"]) == before  # the committed store is untouched


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--steps", "zero"], "--steps: not a whole number"),
        (["--lr", "nan"], "--lr: nan is not a finite number"),
        (["--lr", "0"], "--lr: must be > 0"),
        (["--beta-mix", "-1"], "--beta-mix: must be >= 0"),
        (["--adam-betas", "0.9"], "--adam-betas: expected two numbers B1,B2"),
        (["--adam-betas", "0.9,1"], "--adam-betas: each beta must be in [0, 1)"),
    ],
)
def test_encode_usage_errors_are_one_line(flags, words):
    result = encode("--input", "cfmnist:iid", "--output", "x.zarr", "--generator", "G.pt", *flags)
    assert result.returncode == 2 and words in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "args, words, command",
    [
        (["train", "--epochz", "3"], "No such option '--epochz'", "advmix train"),
        (["train", "--lr", "nan"], "'nan' is not a finite number", "advmix train"),
        (["store", "info"], "Missing argument 'URL'", "advmix store info"),
    ],
)
def test_advmix_usage_errors_are_one_line(capsys, args, words, command):
    code, _, err = cli(capsys, *args)
    line = one_error_line(err)
    assert code == 2 and words in line and line.endswith(f"(see {command} --help)")


# -- 5. divergence stops training ------------------------------------------------------------------


@pytest.mark.parametrize("lr", ["1e37", "1e38"])  # weights turn inf; the update overflows
def test_diverging_training_stops_and_saves_nothing_non_finite(capsys, nets, tmp_path, lr):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--store", nets["store"], "--generator", nets["G"],
                       "--method", "nominal", "--epochs", "3", "--batch-size", "8", "--width", "4",
                       "--lr", lr, "--checkpoint-every", "1", "--out", str(run),
                       "--no-progress")  # fmt: skip
    assert code == 1 and "training diverged at step" in one_error_line(err)
    assert not (run / "classifier.pt").exists()
    if (run / "checkpoint.pt").exists():  # every checkpoint written holds finite weights
        state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# -- 6. one writer per store -----------------------------------------------------------------------


def _refused_while_leased(nets, output: str, options: dict) -> None:
    held = WriterLease(Location(output, options), settle=0.1)
    held.acquire()
    try:
        extra = [f"--storage-option=endpoint_url={options['endpoint_url']}"] if options else []
        result = encode("--input", "cfmnist:train?limit=32", "--output", output, "--generator",
                        nets["G"], "--features", nets["F"], "--steps", "1", "--shard-size", "16",
                        *extra)  # fmt: skip
        assert result.returncode == 1
        assert "is being written by another encode job" in one_error_line(result.stderr)
        assert "inverted" not in result.stdout + result.stderr
        listing = Location(output, options).list_objects()
        assert set(listing) == {LEASE}  # the refused job wrote nothing
    finally:
        held.release()
    assert Location(output, options).list_objects() == {}  # released: the lease is gone
    extra = [f"--storage-option=endpoint_url={options['endpoint_url']}"] if options else []
    result = encode("--input", "cfmnist:train?limit=32", "--output", output, "--generator",
                    nets["G"], "--features", nets["F"], "--steps", "1", "--shard-size", "16",
                    *extra)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert LEASE not in Location(output, options).list_objects()


def test_a_second_encode_into_a_store_being_written_is_refused_local(nets, tmp_path):
    _refused_while_leased(nets, str(tmp_path / "store.zarr"), {})


def test_a_second_encode_into_a_store_being_written_is_refused_s3(nets):
    with moto_s3(buckets=("advmix",)) as options:
        _refused_while_leased(nets, "s3://advmix/busy.zarr", options)


def _race(url: str, options: dict) -> list[str]:
    """Two jobs take the lease at the same instant: what each got."""
    barrier, results = threading.Barrier(2), []

    def job() -> None:
        lease = WriterLease(Location(url, options), settle=0.3)
        barrier.wait()
        try:
            lease.acquire()
            results.append("held")
            time.sleep(0.5)
            lease.release()
        except StoreError:
            results.append("refused")

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


def test_exactly_one_of_two_racing_jobs_gets_the_lease(tmp_path):
    for attempt in range(3):
        assert _race(str(tmp_path / f"race{attempt}"), {}) == ["held", "refused"]
    with moto_s3(buckets=("advmix",)) as options:
        for attempt in range(3):
            assert _race(f"s3://advmix/race{attempt}", options) == ["held", "refused"]


def test_a_dead_jobs_lease_is_taken_over(tmp_path):
    """A job killed mid-encode leaves its lease; rerunning on the same host resumes at once."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    location = Location(str(tmp_path / "store.zarr"))
    record = {"token": "old", "host": os.uname().nodename, "pid": int(gone),
              "expires": time.time() + 600}  # fmt: skip
    location.write(LEASE, json.dumps(record).encode())
    with WriterLease(location, settle=0.1):
        assert json.loads(location.read(LEASE))["token"] != "old"
    assert not location.exists(LEASE)


def test_a_lease_taken_over_is_never_overwritten_by_the_old_holder(tmp_path):
    """A job that stalled past its lease finds another job's lease: it stops renewing instead
    of writing over it."""
    location = Location(str(tmp_path / "store.zarr"))
    lease = WriterLease(location, ttl=0.3, settle=0.05)
    lease.acquire()
    other = {"token": "other", "host": "elsewhere", "pid": 1, "expires": time.time() + 600}
    location.write(LEASE, json.dumps(other).encode())
    assert lease.lost.wait(2.0)
    time.sleep(0.3)  # a renewal would have come by now
    assert json.loads(location.read(LEASE))["token"] == "other"
    with pytest.raises(StoreError, match="another encode job took the store over"):
        lease.__exit__(None, None, None)  # the job finishing: told in one line, not silently
    assert json.loads(location.read(LEASE))["token"] == "other"  # release leaves it too


def test_a_verified_read_returns_the_stored_bytes(nets):
    from schemas.reader import open_store

    store = open_store(nets["store"])
    w = np.concatenate([store.read_arrays(s)["w"] for s in range(store.num_shards)])
    assert w.shape == (48, 8, 32) and np.isfinite(w).all()
