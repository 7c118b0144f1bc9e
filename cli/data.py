"""``advmix data ...``: look at the datasets both stages read."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import DATASET_SPEC, data_root_option


@click.group()
def data() -> None:
    """Inspect input datasets."""


@data.command()
@click.option(
    "--dataset",
    "spec",
    type=DATASET_SPEC,
    required=True,
    help="Dataset spec, e.g. cfmnist:random?seed=0.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="PNG file to write.",
)
@click.option(
    "--count", type=click.IntRange(1, 1024), default=100, help="Number of images in the grid."
)
@data_root_option
def preview(spec, out: Path, count: int, data_root: str | None) -> None:
    """Write a grid of the first COUNT images of a dataset, one row per ten images."""
    import torch
    from torchvision.utils import save_image

    from advmix.datasets import load

    images = load(spec, data_root=data_root)
    shown = torch.from_numpy(images.images[:count]).float() / 255.0
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(shown, str(out), nrow=10, padding=2)
    counts = ", ".join(
        f"{name}={int((images.labels[:count] == i).sum())}"
        for i, name in enumerate(images.label_names)
    )
    click.echo(f"wrote {out} ({len(shown)} images of {spec}; {counts})")
