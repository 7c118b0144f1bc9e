"""The latent store on local disk and memory://: round trips, resume, workers, every error."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from store_helpers import LAYOUT, PROVENANCE, create, samples, shard_inputs, write_shards
from store_helpers import write_store as write_store_

from schemas.errors import StoreError
from schemas.layout import Layout
from schemas.manifest import Provenance
from schemas.reader import open_store
from schemas.urls import mask, parse_storage_option, redact_url
from schemas.writer import StoreWriter


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.fixture
def store_path(tmp_path) -> Path:
    path = tmp_path / "store.zarr"
    write_store_(str(path))
    return path


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def checksums(manifest: dict) -> list:
    return [s["sha256"] for s in manifest["shards"]] + [manifest["index"]["sha256"]]


# -- round trips ---------------------------------------------------------------------------


def test_round_trip_with_a_short_last_shard(store_path):
    data = samples()
    store = open_store(str(store_path), full_check=True)
    assert (store.num_samples, store.shard_size, store.num_shards) == (10, 4, 3)
    assert store.shard_bounds(2) == (8, 10)
    assert store.k == 1 and store.label_names == ("tee", "trouser", "bag")
    assert store.generator_fingerprint == PROVENANCE.generator_fingerprint
    assert store.generator_config == {"resolution": 32, "num_ws": 3}
    assert store.encoder == {"steps": 5, "lr": 0.1}
    assert store.dataset == "cfmnist:train?limit=10" and store.code_version == "test"
    assert store.size_bytes > 0 and store.num_dead_letters == 1

    shards = list(store.iter_shards())
    assert [len(s) for s in shards] == [4, 4, 2]
    w = np.concatenate([s.w for s in shards])
    assert w.dtype == np.float16
    np.testing.assert_array_equal(w, data["w"].astype(np.float16))
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), data["labels"])
    np.testing.assert_array_equal(np.concatenate([s.images for s in shards]), data["images"])
    rows = shards[2].rows
    assert list(rows["id"]) == ["img-008", "img-009"] and list(rows["sample"]) == [8, 9]
    assert list(rows["label"]) == list(data["labels"][8:])
    np.testing.assert_allclose(rows["rec_mse"], data["rec_mse"][8:])

    sample = store.read_sample(5)
    np.testing.assert_array_equal(sample.w, data["w"][5].astype(np.float16))
    assert sample.label == data["labels"][5] and sample.row["id"] == "img-005"
    np.testing.assert_array_equal(sample.image, data["images"][5])
    assert store.dead_letters().to_dict("records") == [
        {"id": "img-bad", "source": "fashion-mnist/train/99", "reason": "not 28x28"}
    ]


def test_arrays_only_shard_reads(store_path):
    store = open_store(str(store_path))
    both = store.read_arrays(2, ["w", "label"])
    assert set(both) == {"w", "label"} and len(both["w"]) == 2
    np.testing.assert_array_equal(both["label"], samples()["labels"][8:])
    assert set(store.read_arrays(0)) == {"w", "label", "image"}
    with pytest.raises(StoreError) as exc:
        store.read_arrays(0, ["w", "latents"])
    assert "no arrays ['latents']" in one_line(exc)


def test_plain_zarr_and_pandas_read_the_store(store_path):
    data = samples()
    group = zarr.open_group(str(store_path), mode="r")
    np.testing.assert_array_equal(group["w"][:], data["w"].astype(np.float16))
    assert group["w"].chunks == (1, 3, 5) and group["w"].shards == (4, 3, 5)
    np.testing.assert_array_equal(group["label"][:], data["labels"])
    index = pd.read_parquet(store_path / "index.parquet")
    assert list(index["id"]) == data["ids"] and list(index["sample"]) == list(range(10))
    assert set(index.columns) >= {"id", "label", "source", "split", "rec_mse", "rec_psnr"}
    assert len(pd.read_parquet(store_path / "dead_letter.parquet")) == 1
    manifest = manifest_of(store_path)
    assert manifest["schema_version"] == 1 and manifest["num_shards"] == 3


@pytest.mark.parametrize("scheme", ["file://", "memory://"])
def test_round_trip_on_file_and_memory_urls(tmp_path, store_path, scheme):
    url = f"file://{tmp_path}/other.zarr" if scheme == "file://" else "memory://rt/store.zarr"
    manifest = write_store_(url)
    store = open_store(url, full_check=True)
    np.testing.assert_array_equal(store.read_shard(1).w, samples()["w"][4:8].astype(np.float16))
    # Checksums cover stored bytes, which do not depend on where the store lives.
    assert checksums(manifest.to_dict()) == checksums(manifest_of(store_path))


# -- workers, retries, resume ----------------------------------------------------------------


def test_concurrent_writers_in_separate_processes(tmp_path, store_path):
    url = str(tmp_path / "parallel.zarr")
    writer = create(url)
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=write_shards, args=(url, None, shards)) for shards in ([0, 2], [1])
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    manifest = writer.commit()
    assert checksums(manifest.to_dict()) == checksums(manifest_of(store_path))
    np.testing.assert_array_equal(
        open_store(url, full_check=True).read_shard(2).labels, samples()["labels"][8:]
    )


def test_rewriting_a_shard_gives_the_same_bytes(tmp_path):
    url = str(tmp_path / "s.zarr")
    writer = create(url)
    first = writer.write_shard(1, **shard_inputs(1))
    record = (tmp_path / "s.zarr/shards/shard-00001.json").read_bytes()
    second = StoreWriter.open(url).write_shard(1, **shard_inputs(1))
    assert first == second
    assert (tmp_path / "s.zarr/shards/shard-00001.json").read_bytes() == record


def test_resume_after_an_interrupted_encode(tmp_path, store_path):
    url = str(tmp_path / "resumed.zarr")
    create(url)
    write_shards(url, None, [0, 2])  # the encode dies here, before shard 1 and the commit

    with pytest.raises(StoreError) as exc:
        open_store(url)
    assert "not committed" in one_line(exc) and "2 of 3 shards written" in str(exc.value)
    with pytest.raises(StoreError) as exc:
        StoreWriter.open(url).commit()
    assert "1 of 3 shards not written (1)" in one_line(exc)

    resumed = create(url)  # the rerun creates again with the same plan: nothing is lost
    assert resumed.completed_shards() == [0, 2] and resumed.missing_shards() == [1]
    write_shards(url, None, resumed.missing_shards())
    resumed.write_dead_letters(
        "worker-0", [{"id": "img-bad", "source": "fashion-mnist/train/99", "reason": "not 28x28"}]
    )
    manifest = resumed.commit().to_dict()
    reference = manifest_of(store_path)
    assert checksums(manifest) == checksums(reference)
    assert manifest["shards"] == reference["shards"]
    assert manifest["dead_letter"] == reference["dead_letter"]


def test_a_half_written_shard_object_is_replaced_on_retry(tmp_path, store_path):
    url = str(tmp_path / "s.zarr")
    create(url)
    write_shards(url, None, [0, 1, 2])
    os.remove(tmp_path / "s.zarr/shards/shard-00001.json")  # the worker died mid-shard
    (tmp_path / "s.zarr/w/c/1/0/0").write_bytes(b"partial")
    (tmp_path / "s.zarr/image/c/1/0/0/0").write_bytes(b"partial")
    assert create(url).missing_shards() == [1]
    write_shards(url, None, [1])
    reference = manifest_of(store_path)["shards"]
    assert [s.to_dict() for s in StoreWriter.open(url).commit().shards] == reference


def test_a_shard_with_a_missing_object_is_written_again(tmp_path):
    url = str(tmp_path / "s.zarr")
    writer = create(url)
    write_shards(url, None, [0, 1])
    os.remove(tmp_path / "s.zarr/w/c/1/0/0")  # e.g. a worker killed between objects
    assert writer.missing_shards() == [1, 2]


def test_create_refuses_other_plans_and_committed_stores(tmp_path):
    url = str(tmp_path / "s.zarr")
    create(url)
    other = Layout(num_samples=12, shard_size=4, num_ws=3, w_dim=5)
    with pytest.raises(StoreError) as exc:
        StoreWriter.create(url, other, PROVENANCE)
    assert "different layout" in one_line(exc)
    write_shards(url, None, range(3))
    StoreWriter.open(url).commit()
    with pytest.raises(StoreError) as exc:
        create(url)
    assert "already a committed store" in one_line(exc)
    with pytest.raises(StoreError) as exc:
        StoreWriter.open(url)
    assert "already committed" in one_line(exc)
    assert create(url, overwrite=True).completed_shards() == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(StoreError) as exc:
        create(str(tmp_path / "notes"))
    assert "not a latent store" in one_line(exc)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: {**i, "w": i["w"][:3]}, "written whole"),
        (lambda i: {**i, "w": i["w"][:, :2]}, "expected (4, 3, 5)"),
        (lambda i: {**i, "w": i["w"] * np.nan}, "finite"),
        (lambda i: {**i, "w": i["w"] * 1e6}, "overflows float16"),
        (lambda i: {**i, "labels": i["labels"] + 3}, "labels must be in [0, 3)"),
        (lambda i: {**i, "labels": i["labels"].astype(float)}, "labels must be 4 integers"),
        (lambda i: {k: v for k, v in i.items() if k != "images"}, "needs images"),
        (lambda i: {**i, "images": i["images"].astype(np.int16)}, "images must be uint8"),
        (lambda i: {**i, "rows": {**i["rows"], "colour": [0] * 4}}, "not declared"),
        (lambda i: {**i, "rows": {**i["rows"], "label": [0] * 4}}, "filled by the writer"),
        (lambda i: {**i, "rows": {**i["rows"], "id": ["a", "a", "b", "c"]}}, "not unique"),
        (lambda i: {**i, "rows": {**i["rows"], "id": ["a", "b", "c"]}}, "has 3 rows, not 4"),
        (lambda i: {**i, "rows": {"id": list("abcd")}}, "metric column 'rec_mse'"),
        (lambda i: {**i, "rows": {**i["rows"], "rec_mse": list("abcd")}}, "must be numbers"),
    ],
)
def test_write_shard_rejects_bad_inputs(tmp_path, change, message):
    writer = create(str(tmp_path / "s.zarr"))
    with pytest.raises(StoreError) as exc:
        writer.write_shard(0, **change(shard_inputs(0)))
    assert message in one_line(exc)
    assert writer.completed_shards() == []


def test_rows_as_a_list_of_dicts_or_a_dataframe(tmp_path):
    writer = create(str(tmp_path / "s.zarr"))
    inputs = shard_inputs(0)
    frame = pd.DataFrame(inputs["rows"])
    a = writer.write_shard(0, **{**inputs, "rows": frame})
    b = writer.write_shard(0, **{**inputs, "rows": frame.to_dict("records")})
    assert a == b == writer.write_shard(0, **inputs)
    with pytest.raises(StoreError) as exc:
        writer.write_shard(3, **inputs)
    assert "shard 3 out of range" in one_line(exc)


def test_commit_rejects_duplicate_ids_across_shards(tmp_path):
    url = str(tmp_path / "s.zarr")
    writer = create(url)
    write_shards(url, None, [0, 2])
    inputs = shard_inputs(1)
    writer.write_shard(1, **{**inputs, "rows": {**inputs["rows"], "id": ["img-000", *"xyz"]}})
    with pytest.raises(StoreError) as exc:
        writer.commit()
    assert "duplicate sample ids 'img-000'" in one_line(exc)
    assert not (tmp_path / "s.zarr/manifest.json").exists()


def test_dead_letter_parts_are_replaced_not_appended(tmp_path):
    url = str(tmp_path / "s.zarr")
    writer = create(url)
    write_shards(url, None, range(3))
    rows = [{"id": "x", "source": "a.png", "reason": "corrupt image"}]
    writer.write_dead_letters("bundle-7", rows)
    writer.write_dead_letters("bundle-7", rows)  # a retried bundle
    writer.write_dead_letters("bundle-8", [{"source": "b.png", "reason": "wrong shape"}])
    writer.commit()
    assert open_store(url).dead_letters()["source"].tolist() == ["a.png", "b.png"]
    for part, bad, message in [
        ("../up", rows, "part name"),
        ("ok", [{"id": "y"}], "non-empty reason"),
        ("ok", [{"id": "y", "reason": "r", "colour": "red"}], "unknown dead-letter columns"),
    ]:
        with pytest.raises(StoreError) as exc:
            writer.write_dead_letters(part, bad)
        assert message in one_line(exc)


def test_bad_plans_are_refused(tmp_path):
    for make, message in [
        (lambda: Layout(10, 0, 3, 5), "shard_size must be a positive integer"),
        (lambda: Layout(10, 4, 3, 5, w_dtype="int8"), "w_dtype must be one of"),
        (lambda: Layout(10, 4, 3, 5, image_shape=(32, 32)), "image_shape must be (C, H, W)"),
        (lambda: Layout(10, 4, 3, 5, label_names=("a", "a")), "label_names must be distinct"),
        (lambda: Layout(10, 4, 3, 5, metrics=("id",)), "reserved index column"),
        (lambda: StoreWriter.create(str(tmp_path / "b"), LAYOUT, Provenance(k=4)), "k must be in"),
        (
            lambda: StoreWriter.create(
                str(tmp_path / "c"), LAYOUT, Provenance(k=1, encoder={"f": print})
            ),
            "encoder is not plain JSON",
        ),
    ]:
        with pytest.raises(StoreError) as exc:
            make()
        assert message in one_line(exc)


# -- reader errors ---------------------------------------------------------------------------


def edit_manifest(path: Path, edit) -> None:
    manifest = manifest_of(path)
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_no_manifest(tmp_path):
    with pytest.raises(StoreError) as exc:
        open_store(str(tmp_path / "nothing-here"))
    assert "no latent store at" in one_line(exc)
    with pytest.raises(StoreError) as exc:
        open_store("memory://nowhere/store.zarr")
    assert "no manifest.json" in one_line(exc)


def test_unknown_schema_version(store_path):
    edit_manifest(store_path, lambda m: m.update(schema_version=3, shards="whatever"))
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path))
    assert "unknown store schema version 3 (this reader knows 1, 2)" in one_line(exc)


def test_manifest_that_is_not_json(store_path):
    (store_path / "manifest.json").write_text('{"format": "advmix-latent-store", ')
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path))
    assert "not valid JSON" in one_line(exc)


def test_missing_shard(store_path):
    os.remove(store_path / "w/c/1/0/0")
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path))
    assert "missing shard 1: w/c/1/0/0 not found" in one_line(exc)


def test_truncated_shard(store_path):
    shard = store_path / "image/c/2/0/0/0"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path))
    assert "truncated shard 2: image/c/2/0/0/0 has" in one_line(exc)


def test_checksum_mismatch_needs_the_full_check(store_path):
    shard = store_path / "w/c/0/0/0"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = open_store(str(store_path))  # sizes still match: the fast check cannot see it
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path), full_check=True)
    assert "checksum mismatch in shard 0" in one_line(exc)
    with pytest.raises(StoreError) as exc:  # but no reader decodes it
        store.read_arrays(0)
    assert "shard 0 is damaged: w/c/0/0/0 does not match its sha256" in one_line(exc)
    store.read_arrays(1)  # the other shards read as before


def test_index_rows_are_covered_by_checksums(store_path):
    index = store_path / "index.parquet"
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0x01
    index.write_bytes(bytes(data))
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path), full_check=True)
    assert "checksum mismatch in index.parquet" in one_line(exc)


def test_generator_mismatch(store_path):
    assert open_store(str(store_path), expect_generator=PROVENANCE.generator_fingerprint)
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path), expect_generator="ab" * 32)
    assert f"generator mismatch: store was encoded with {'0f' * 32}" in one_line(exc)


@pytest.mark.parametrize(
    "bad_path", ["../outside", "/etc/passwd", "w/../../x", "s3://bucket/x", "", "w//c"]
)
def test_manifest_paths_must_stay_inside_the_root(store_path, bad_path):
    edit_manifest(store_path, lambda m: m["shards"][1]["objects"][0].update(path=bad_path))
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path))
    assert "escapes the store root" in one_line(exc)


def test_index_path_must_stay_inside_the_root(store_path):
    edit_manifest(store_path, lambda m: m["index"].update(path="../../index.parquet"))
    with pytest.raises(StoreError) as exc:
        open_store(str(store_path))
    assert "'../../index.parquet' escapes the store root" in one_line(exc)


def test_reads_out_of_range(store_path):
    store = open_store(str(store_path))
    for read, message in [
        (lambda: store.read_shard(3), "shard 3 out of range"),
        (lambda: store.read_sample(10), "sample 10 out of range"),
    ]:
        with pytest.raises(StoreError) as exc:
            read()
        assert message in one_line(exc)


# -- storage options -------------------------------------------------------------------------


def test_storage_option_values_are_json_when_they_parse():
    assert parse_storage_option("anon=true") == ("anon", True)
    assert parse_storage_option("endpoint_url=http://127.0.0.1:9000") == (
        "endpoint_url",
        "http://127.0.0.1:9000",
    )
    assert parse_storage_option('client_kwargs={"region_name": "eu"}') == (
        "client_kwargs",
        {"region_name": "eu"},
    )
    assert parse_storage_option("token=") == ("token", "")
    for bad in ["novalue", "=x", "bad key=1"]:
        with pytest.raises(StoreError):
            parse_storage_option(bad)


def test_credentials_are_masked():
    options = {
        "key": "AKIA123",
        "secret": "s3cr3t",
        "endpoint_url": "http://x",
        "client_kwargs": {"aws_session_token": "t", "region_name": "eu"},
    }
    assert mask(options) == {
        "key": "***",
        "secret": "***",
        "endpoint_url": "http://x",
        "client_kwargs": {"aws_session_token": "***", "region_name": "eu"},
    }
    assert redact_url("s3://user:pass@bucket/x") == "s3://***@bucket/x"
    assert redact_url("/plain/path") == "/plain/path"
