"""``advmix store ...``: look at and check latent stores (docs/store-format.md).

Both commands validate the store first, so a store that ``info`` describes is also one that
``validate`` passes. Storage option values that look like credentials are never printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from advmix import shipped
from advmix.attacks import AdvMixConfig
from advmix.settings import from_flat
from cli.options import options_from, storage_options


@click.group()
def store() -> None:
    """Inspect and check latent stores (local paths, file://, memory://, s3://, gs://)."""


@store.command()
@click.argument("url")
@storage_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def info(url: str, storage_options: dict, as_json: bool) -> None:
    """Summarise the committed store at URL: counts, shards, generator, k, labels, size."""
    from schemas.reader import open_store
    from schemas.urls import mask

    opened = open_store(url, storage_options)
    summary = _summary(opened)
    if storage_options:
        summary["storage_options"] = mask(storage_options)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for key, value in _lines(summary):
        click.echo(f"{key:<12} {value}")


@store.command()
@click.argument("url")
@storage_options
@click.option("--full", is_flag=True, help="Also recompute every checksum (reads the whole store).")
@click.option(
    "--generator",
    "expect_generator",
    metavar="FINGERPRINT",
    default=None,
    help="Fail unless the store was encoded with the generator of this fingerprint.",
)
def validate(url: str, storage_options: dict, full: bool, expect_generator: str | None) -> None:
    """Check the store at URL against its manifest: exit 0 if valid, 1 with the reason if not."""
    from schemas.reader import open_store

    opened = open_store(url, storage_options, expect_generator=expect_generator, full_check=full)
    click.echo(f"valid: {opened.url} ({opened.num_samples} samples in {opened.num_shards} shards)")
    if full:
        click.echo("checked: every object the manifest lists, its size and its sha256")
    else:
        click.echo(
            "checked: every object the manifest lists is present with its recorded size. "
            "Not checked: the contents (sha256); pass --full to hash every object "
            "(readers check each shard's sha256 when they read it)"
        )


@store.command()
@click.argument("url")
@click.option("--generator", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option(
    "--classifier",
    type=click.Path(exists=True, dir_okay=False),
    default=str(shipped.GRAY_CLASSIFIER),
    help="Real-data classifier (advmix gan train-classifier); default: the shipped gray one.",
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=512, help="Samples measured.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--seed", type=int, default=0, help="Seed of the random fine styles.")
@click.option(
    "--against",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A classifier trained on this store (RUN/classifier.pt): also judge the mixes AdvMix "
    "finds against it (the attack options set its budget).",
)
@options_from(AdvMixConfig)
@storage_options
def report(url, generator, classifier, limit, grid, json_out, seed, against, storage_options,
           **settings) -> None:  # fmt: skip
    """Reconstruction and mixing quality of the latents in the store at URL."""
    import torch

    from advmix.checkpoints import generator_fingerprint, load_generator
    from advmix.classifiers import load_classifier
    from schemas.reader import open_store
    from training.store_quality import encoding_report, save_grid

    G = load_generator(generator)
    opened = open_store(url, storage_options, expect_generator=generator_fingerprint(G))
    model, _ = load_classifier(classifier)
    with torch.no_grad():
        metrics, rows = encoding_report(opened, G, model, limit, seed)
    if against is not None:
        from training.evaluate import load_model
        from training.store_quality import advmix_report

        trained, _ = load_model(against)
        attack = from_flat(AdvMixConfig, settings)
        metrics |= advmix_report(opened, G, trained, model, attack, limit, seed)
    if grid is not None:
        save_grid(rows, grid)
        metrics["grid"] = str(grid)
    text = json.dumps(metrics, indent=2)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    click.echo(text)


def _summary(opened) -> dict:
    arrays = {
        name: {"shape": list(spec.shape), "dtype": spec.dtype}
        for name, spec in opened.layout.arrays.items()
    }
    last = opened.num_samples - (opened.num_shards - 1) * opened.shard_size
    return {
        "url": opened.url,
        "schema_version": opened.manifest.schema_version,
        "created": opened.created,
        "code_version": opened.code_version,
        "num_samples": opened.num_samples,
        "num_dead_letters": opened.num_dead_letters,
        "accounting": accounting.to_dict() if (accounting := opened.manifest.accounting) else None,
        "num_shards": opened.num_shards,
        "shard_size": opened.shard_size,
        "last_shard_size": last,
        "arrays": arrays,
        "k": opened.k,
        "num_ws": opened.num_ws,
        "generator": {
            "fingerprint": opened.generator_fingerprint,
            "config": opened.generator_config,
        },
        "encoder": opened.encoder,
        "label_names": list(opened.label_names),
        "metrics": list(opened.metrics),
        "dataset": opened.dataset,
        "size_bytes": opened.size_bytes,
    }


def _lines(summary: dict):
    arrays = "; ".join(
        f"{name} {spec['shape']} {spec['dtype']}" for name, spec in summary["arrays"].items()
    )
    k, ws = summary["k"], summary["num_ws"]
    generator = summary["generator"]
    yield "store", summary["url"]
    yield (
        "format",
        (
            f"latent store v{summary['schema_version']}, committed {summary['created']} "
            f"by {summary['code_version']}"
        ),
    )
    yield "samples", f"{summary['num_samples']} stored, {summary['num_dead_letters']} dead-lettered"
    counts = summary["accounting"]
    yield (
        "inputs",
        (
            f"listed {counts['listed']}: encoded {counts['encoded']}, rejected {counts['rejected']}, "
            f"skipped {counts['skipped']} (skipped.parquet)"
            if counts
            else "(no accounting: written before stores recorded their inputs)"
        ),
    )
    yield (
        "shards",
        (
            f"{summary['num_shards']} of {summary['shard_size']} samples "
            f"(last {summary['last_shard_size']})"
        ),
    )
    yield "arrays", arrays
    yield "k", f"{k} (coarse styles w[:, :{k}], fine w[:, {k}:] of {ws})"
    yield "generator", generator["fingerprint"] or "(not recorded)"
    if generator["config"]:
        yield "gen config", json.dumps(generator["config"], sort_keys=True)
    if summary["encoder"]:
        yield "encoder", json.dumps(summary["encoder"], sort_keys=True)
    yield "labels", ", ".join(summary["label_names"]) or "(none)"
    yield "metrics", ", ".join(summary["metrics"]) or "(none)"
    yield "dataset", summary["dataset"] or "(not recorded)"
    yield "size", f"{summary['size_bytes']:,} bytes ({_human(summary['size_bytes'])})"
    if "storage_options" in summary:
        yield "options", json.dumps(summary["storage_options"], sort_keys=True)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
