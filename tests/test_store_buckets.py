"""The latent store on real object-store protocols: moto S3 and fake-gcs-server on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pytest
from store_helpers import create, samples, write_shards, write_store

from schemas.errors import StoreError
from schemas.reader import open_store
from schemas.testing import fake_gcs, moto_s3
from schemas.urls import Location
from schemas.writer import StoreWriter


@pytest.fixture(scope="module")
def s3():
    with moto_s3(buckets=("advmix",)) as options:
        yield options


@pytest.fixture(scope="module")
def gcs():
    with fake_gcs(buckets=("advmix",)) as options:
        yield options


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same store on local disk: bucket stores must carry the same checksums."""
    return write_store(str(tmp_path_factory.mktemp("ref") / "store.zarr")).to_dict()


@pytest.fixture(params=["s3", "gs"])
def bucket(request):
    options = request.getfixturevalue("s3" if request.param == "s3" else "gcs")
    return request.param, options


def test_write_commit_read_round_trip(bucket, reference):
    scheme, options = bucket
    url = f"{scheme}://advmix/round-trip/store.zarr"
    writer = create(url, options)
    assert writer.missing_shards() == [0, 1, 2]
    write_shards(url, options, [2, 0])
    write_shards(url, options, [1])  # a second worker with its own filesystem handle
    writer.write_dead_letters(
        "worker-0", [{"id": "img-bad", "source": "fashion-mnist/train/99", "reason": "not 28x28"}]
    )
    manifest = writer.commit().to_dict()
    assert manifest["shards"] == reference["shards"]
    assert manifest["index"]["sha256"] == reference["index"]["sha256"]

    store = open_store(url, options, full_check=True)
    data = samples()
    np.testing.assert_array_equal(
        np.concatenate([s.w for s in store.iter_shards()]), data["w"].astype(np.float16)
    )
    assert store.read_sample(9).row["id"] == "img-009"
    assert store.index()["source"].tolist()[0] == "fashion-mnist/train/0"
    assert len(store.dead_letters()) == 1


def test_resume_and_corruption_on_a_bucket(bucket, reference):
    scheme, options = bucket
    url = f"{scheme}://advmix/resume/store.zarr"
    create(url, options)
    write_shards(url, options, [1])
    with pytest.raises(StoreError, match="not committed"):
        open_store(url, options)
    assert create(url, options).missing_shards() == [0, 2]
    write_shards(url, options, [0, 2])
    assert StoreWriter.open(url, options).commit().to_dict()["shards"] == reference["shards"]

    location = Location(url, options)
    shard = location.read("w/c/2/0/0")
    location.write("w/c/2/0/0", shard[:-3])
    with pytest.raises(StoreError, match="truncated shard 2"):
        open_store(url, options)
    location.write("w/c/2/0/0", shard[:-3] + b"\0\0\0")
    open_store(url, options)
    with pytest.raises(StoreError, match="checksum mismatch in shard 2"):
        open_store(url, options, full_check=True)
    location.delete("w/c/2/0/0")
    with pytest.raises(StoreError, match="missing shard 2"):
        open_store(url, options)


def test_missing_store_and_missing_bucket(bucket):
    scheme, options = bucket
    for url in (f"{scheme}://advmix/nothing.zarr", f"{scheme}://no-such-bucket/x.zarr"):
        with pytest.raises(StoreError) as exc:
            open_store(url, options)
        assert "no manifest.json" in str(exc.value) and "\n" not in str(exc.value)
