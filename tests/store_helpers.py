"""Small deterministic latent stores for the store tests (importable by spawned workers)."""

from __future__ import annotations

import numpy as np

from schemas.layout import Layout
from schemas.manifest import Provenance
from schemas.writer import StoreWriter

# 10 samples in shards of 4: the last shard is short on purpose.
LAYOUT = Layout(
    num_samples=10,
    shard_size=4,
    num_ws=3,
    w_dim=5,
    w_dtype="float16",
    image_shape=(3, 4, 4),
    label_names=("tee", "trouser", "bag"),
)
PROVENANCE = Provenance(
    k=1,
    generator_fingerprint="0f" * 32,
    generator_config={"resolution": 32, "num_ws": 3},
    encoder={"steps": 5, "lr": 0.1},
    dataset="cfmnist:train?limit=10",
)


def samples(layout: Layout = LAYOUT, seed: int = 0) -> dict:
    """Every input of the store, as the encoder would produce it."""
    rng = np.random.default_rng(seed)
    n = layout.num_samples
    data = {
        "w": rng.normal(size=(n, layout.num_ws, layout.w_dim)).astype(np.float32),
        "labels": rng.integers(0, max(len(layout.label_names), 1), n),
        "ids": [f"img-{i:03d}" for i in range(n)],
        "rec_mse": rng.uniform(0, 0.1, n),
    }
    if layout.image_shape:
        data["images"] = rng.integers(0, 256, (n, *layout.image_shape), dtype=np.uint8)
    return data


def shard_inputs(shard: int, layout: Layout = LAYOUT, seed: int = 0) -> dict:
    start, stop = layout.shard_bounds(shard)
    data = samples(layout, seed)
    rows = {
        "id": data["ids"][start:stop],
        "source": [f"fashion-mnist/train/{i}" for i in range(start, stop)],
        "split": ["train"] * (stop - start),
        "rec_mse": data["rec_mse"][start:stop],
        "rec_psnr": 10 * np.log10(1 / data["rec_mse"][start:stop]),
    }
    inputs = {"w": data["w"][start:stop], "labels": data["labels"][start:stop], "rows": rows}
    if "images" in data:
        inputs["images"] = data["images"][start:stop]
    return inputs


def create(url: str, storage_options: dict | None = None, **kwargs) -> StoreWriter:
    return StoreWriter.create(url, LAYOUT, PROVENANCE, storage_options=storage_options, **kwargs)


def write_shards(url: str, storage_options: dict | None, shards) -> None:
    """What one worker does: open the created store and write whole shards."""
    writer = StoreWriter.open(url, storage_options)
    for shard in shards:
        writer.write_shard(shard, **shard_inputs(shard))


def write_store(url: str, storage_options: dict | None = None, commit: bool = True):
    """Create, write every shard (last one first), add a dead letter, commit."""
    writer = create(url, storage_options)
    write_shards(url, storage_options, reversed(range(LAYOUT.num_shards)))
    writer.write_dead_letters(
        "worker-0", [{"id": "img-bad", "source": "fashion-mnist/train/99", "reason": "not 28x28"}]
    )
    return writer.commit(code_version="test") if commit else writer
