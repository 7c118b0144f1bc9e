"""``advmix store info|validate``: output, exit codes, one-line errors, no credentials shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from store_helpers import create, write_shards, write_store

from cli.main import main
from schemas.testing import moto_s3


def advmix(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def run(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (fast); exit codes as ``main`` sets them."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "store.zarr")
    write_store(path)
    return path


@pytest.fixture(scope="module")
def s3():
    with moto_s3(buckets=("advmix",)) as options:
        write_store("s3://advmix/cli/store.zarr", options)
        yield options


def test_info_and_validate_as_a_user_runs_them(store):
    result = advmix("store", "info", store)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["samples"] == "10 stored, 1 dead-lettered"
    assert lines["shards"] == "3 of 4 samples (last 2)"
    assert lines["k"].startswith("1 ") and lines["labels"] == "tee, trouser, bag"
    assert lines["generator"] == "0f" * 32 and lines["dataset"] == "cfmnist:train?limit=10"
    assert lines["size"].endswith("KiB)")

    with open(os.path.join(store, "w/c/1/0/0"), "r+b") as shard:
        data = bytearray(shard.read())
        data[3] ^= 0xFF
        shard.seek(0)
        shard.write(data)
    assert advmix("store", "validate", store).returncode == 0
    result = advmix("store", "validate", "--full", store)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ") and "checksum mismatch in shard 1" in result.stderr


def test_info_json(capsys, tmp_path):
    path = str(tmp_path / "s.zarr")
    write_store(path)
    code, out, _ = run(capsys, "store", "info", "--json", path)
    summary = json.loads(out)
    assert code == 0 and summary["num_samples"] == 10 and summary["num_shards"] == 3
    assert summary["label_names"] == ["tee", "trouser", "bag"] and summary["k"] == 1
    assert summary["size_bytes"] > 0 and summary["generator"]["config"]["resolution"] == 32


def test_validate_reports_why_a_store_is_invalid(capsys, tmp_path):
    url = str(tmp_path / "unfinished.zarr")
    create(url)
    write_shards(url, None, [0])
    code, out, err = run(capsys, "store", "validate", url)
    assert code == 1 and out == ""
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "not committed" in err and "1 of 3 shards written" in err

    write_shards(url, None, [1, 2])
    create(url).commit()
    code, out, _ = run(capsys, "store", "validate", "--full", url)
    assert code == 0 and out.startswith("valid: ") and "its sha256" in out
    code, _, err = run(capsys, "store", "validate", url, "--generator", "other")
    assert code == 1 and "generator mismatch" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["store", "validate"], "Missing argument 'URL'"),
        (["store", "info", "x", "--storage-option", "oops"], "KEY=VALUE"),
        (["store", "info", "x", "--storage-option", "a b=1"], "not an identifier"),
        (["store", "nonsense"], "No such command"),
    ],
)
def test_usage_errors_exit_2(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_bucket_urls_with_options_and_environment(capsys, s3):
    url = "s3://advmix/cli/store.zarr"
    secret = "do-not-print-this-secret"
    options = [
        "--storage-option", f"endpoint_url={s3['endpoint_url']}",
        "--storage-option", "key=testing",
        "--storage-option", f"secret={secret}",
    ]  # fmt: skip
    code, out, err = run(capsys, "store", "info", url, *options)
    assert code == 0, err
    assert secret not in out + err and '"secret": "***"' in out and "s3://advmix" in out
    code, out, err = run(capsys, "store", "validate", "s3://advmix/missing.zarr", *options)
    assert code == 1 and secret not in out + err and "no manifest.json" in err

    # No options at all: botocore reads the endpoint and credentials from the environment.
    env = {**os.environ, "AWS_ENDPOINT_URL": s3["endpoint_url"]}
    result = advmix("store", "validate", "--full", url, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: s3://advmix/cli/store.zarr") and result.stderr == ""
