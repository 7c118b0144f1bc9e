"""Property: a damaged store either reads as it was written or is refused with one StoreError.

Hypothesis mutates a committed store (a byte flipped, an object truncated or deleted, a
manifest field rewritten) and every reader path (open, the fast and the full check, whole
shards, one sample, the index, the dead letters, the training stream) must then return the
original data or raise ``StoreError``: never another exception, never different data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import LAYOUT, write_store

from schemas.errors import StoreError
from schemas.reader import open_store
from training.stream import LatentStream

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


def read_everything(url: str) -> dict:
    """What every reader path gives for the store at ``url``."""
    store = open_store(url)
    out = {
        "shards": [store.read_arrays(s) for s in range(store.num_shards)],
        "rows": [store.read_shard(s).rows.reset_index(drop=True) for s in range(store.num_shards)],
        "sample": store.read_sample(LAYOUT.num_samples - 1),
        "index": store.index(),
        "dead": store.dead_letters(),
    }
    stream = LatentStream(store, batch_size=3, shuffle=False, buffer_size=0)
    out["stream"] = [{k: v.numpy() for k, v in b.items() if k != "worker"} for b in stream]
    open_store(url, full_check=True)
    return out


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if hasattr(a, "equals"):  # DataFrame
        return a.equals(b)
    if hasattr(a, "w"):  # Sample
        return (np.array_equal(a.w, b.w) and a.label == b.label
                and np.array_equal(a.image, b.image) and a.row == b.row)  # fmt: skip
    return a == b


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("pristine") / "store.zarr"
    write_store(str(path))
    return path, read_everything(str(path))


def objects(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def check(pristine, tmp_path, mutate) -> None:
    source, original = pristine
    copy = tmp_path / "copy.zarr"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(source, copy)
    mutate(copy)
    try:
        got = read_everything(str(copy))
    except StoreError as exc:
        assert "\n" not in str(exc)
        return
    assert same(got, original), "a damaged store read as different data"


def shard_arrays(root: Path) -> list[str]:
    """The objects holding the arrays' values: where a flipped bit can decode silently."""
    return [name for name in objects(root) if name.split("/")[0] in LAYOUT.arrays and "/c/" in name]


@settings(SETTINGS, max_examples=80)
@given(data=st.data())
def test_flipped_bytes(pristine, tmp_path, data):
    root = pristine[0]
    name = data.draw(st.one_of(st.sampled_from(shard_arrays(root)), st.sampled_from(objects(root))))
    size = (root / name).stat().st_size
    offset = data.draw(st.integers(0, max(size - 1, 0)))
    mask = data.draw(st.integers(1, 255))

    def mutate(copy):
        raw = bytearray((copy / name).read_bytes())
        if raw:
            raw[offset] ^= mask
        (copy / name).write_bytes(bytes(raw))

    check(pristine, tmp_path, mutate)


@SETTINGS
@given(data=st.data())
def test_truncated_or_deleted_objects(pristine, tmp_path, data):
    root = pristine[0]
    name = data.draw(st.sampled_from(objects(root)))
    size = (root / name).stat().st_size
    keep = data.draw(st.one_of(st.none(), st.integers(0, max(size - 1, 0))))

    def mutate(copy):
        if keep is None:
            (copy / name).unlink()
        else:
            (copy / name).write_bytes((copy / name).read_bytes()[:keep])

    check(pristine, tmp_path, mutate)


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, (*path, key))
    elif isinstance(value, list) and value:
        for i, inner in enumerate(value):
            yield from _leaves(inner, (*path, i))
    else:
        yield path


REPLACEMENTS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([2**40, -(2**40)]),
    st.text(max_size=8), st.sampled_from(["../escape", "/abs", "w/c/0/0/0", "0" * 64]),
    st.lists(st.integers(0, 9), max_size=4), st.floats(allow_nan=True),
)  # fmt: skip


@SETTINGS
@given(data=st.data())
def test_rewritten_manifest_fields(pristine, tmp_path, data):
    manifest = json.loads((pristine[0] / "manifest.json").read_text())
    path = data.draw(st.sampled_from(sorted(_leaves(manifest), key=str)))
    value = data.draw(REPLACEMENTS)

    def mutate(copy):
        edited = json.loads((copy / "manifest.json").read_text())
        target = edited
        for key in path[:-1]:
            target = target[key]
        if path:
            target[path[-1]] = value
        (copy / "manifest.json").write_text(json.dumps(edited))

    check(pristine, tmp_path, mutate)
