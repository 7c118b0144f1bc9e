"""Tiny latent stores for the training tests (importable by subprocesses and DDP workers)."""

from __future__ import annotations

import numpy as np

from schemas.layout import Layout
from schemas.manifest import Provenance
from schemas.writer import StoreWriter


def write_store(
    url: str,
    *,
    num_samples: int = 100,
    shard_size: int = 16,
    num_ws: int = 8,
    w_dim: int = 32,
    k: int = 4,
    fingerprint: str = "ab" * 32,
    images: bool = True,
    image_source: str | None = None,
    seed: int = 0,
    storage_options: dict | None = None,
    w_dtype: str = "float32",
    generator=None,
) -> str:
    """A committed store; ``generator`` (a Generator) gives w = mapping(z) so mixes decode to
    its images; ``image_source`` (a dataset spec) gives real images and labels."""
    rng = np.random.default_rng(seed)
    layout = Layout(
        num_samples=num_samples,
        shard_size=shard_size,
        num_ws=num_ws,
        w_dim=w_dim,
        w_dtype=w_dtype,
        image_shape=(3, 32, 32) if images else None,
        label_names=tuple(f"c{i}" for i in range(10)),
    )
    writer = StoreWriter.create(
        url, layout, Provenance(k=k, generator_fingerprint=fingerprint),
        storage_options=storage_options,
    )  # fmt: skip
    if image_source is not None:
        from advmix.datasets import load

        data = load(image_source)
        all_images, all_labels = data.images[:num_samples], data.labels[:num_samples]
    else:
        all_images = rng.integers(0, 256, (num_samples, 3, 32, 32), dtype=np.uint8)
        all_labels = rng.integers(0, 10, num_samples)
    if generator is not None:
        import torch

        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(num_samples, generator.z_dim, generator=g)
            all_w = generator.mapping(z).numpy()
    else:
        all_w = rng.normal(size=(num_samples, num_ws, w_dim)).astype(np.float32)
    for shard in range(layout.num_shards):
        a, b = layout.shard_bounds(shard)
        writer.write_shard(
            shard,
            w=all_w[a:b],
            labels=all_labels[a:b],
            images=all_images[a:b] if images else None,
            rows={
                "id": [f"s{i}" for i in range(a, b)],
                "rec_mse": np.zeros(b - a),
                "rec_psnr": np.full(b - a, 30.0),
            },
        )
    writer.commit(code_version="test")
    return url
