"""``advmix gan ...``: train, evaluate and inspect StyleGAN2 generators."""

from __future__ import annotations

import json
from pathlib import Path

import click

from advmix import shipped
from cli.options import DATASET_SPEC, data_root_option, device_options, set_threads


@click.group()
def gan() -> None:
    """Train and evaluate StyleGAN2 generators."""


@gan.command()
@click.option(
    "--dataset",
    "spec",
    type=DATASET_SPEC,
    default="cfmnist:train-random",
    help="Training images (unlabelled use), e.g. cfmnist:train-random.",
)
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run directory: checkpoint, snapshots, grids, log.",
)
@click.option("--iterations", type=click.IntRange(1), default=10_000, help="G+D steps in total.")
@click.option("--batch", type=click.IntRange(2), default=32)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.0025)
@click.option("--r1-gamma", type=click.FloatRange(0), default=0.01)
@click.option("--r1-interval", type=click.IntRange(1), default=16)
@click.option("--style-mix-prob", type=click.FloatRange(0, 1), default=0.9)
@click.option("--ema-kimg", type=click.FloatRange(0, min_open=True), default=10.0)
@click.option("--z-dim", type=click.IntRange(1), default=128)
@click.option("--w-dim", type=click.IntRange(1), default=128)
@click.option("--mapping-layers", type=click.IntRange(1), default=4)
@click.option("--resolution", type=click.IntRange(8, 1024), default=32)
@click.option(
    "--channel-base",
    type=click.IntRange(1),
    default=1024,
    help="G channels at resolution r: min(base // r, max).",
)
@click.option("--channel-max", type=click.IntRange(1), default=128)
@click.option("--d-channel-base", type=click.IntRange(1), default=512)
@click.option("--d-channel-max", type=click.IntRange(1), default=64)
@click.option(
    "--mix-k",
    type=click.IntRange(1),
    default=None,
    help="k of the training-time mixing grids [default: num_ws // 2].",
)
@click.option(
    "--snapshot-every",
    type=click.IntRange(1),
    default=1000,
    help="Iterations between checkpoints and G_ema snapshots.",
)
@click.option(
    "--sample-every",
    type=click.IntRange(1),
    default=500,
    help="Iterations between sample and mixing grids.",
)
@click.option("--seed", type=int, default=0)
@device_options
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@data_root_option
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--time-limit-min",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop (with checkpoint and snapshot) after this many minutes.",
)
def train(spec, run_dir: Path, iterations, batch, lr, r1_gamma, r1_interval, style_mix_prob,
          ema_kimg, z_dim, w_dim, mapping_layers, resolution, channel_base, channel_max,
          d_channel_base, d_channel_max, mix_k, snapshot_every, sample_every, seed, device,
          resume, data_root, no_progress, threads, time_limit_min) -> None:  # fmt: skip
    """Train a StyleGAN2 generator on unlabelled images (non-saturating loss, lazy R1, style
    mixing, EMA); writes snapshots, sample and style-mixing grids into OUT."""
    from advmix.discriminator import DiscriminatorConfig
    from advmix.errors import AdvmixError
    from advmix.stylegan import GeneratorConfig
    from gan.train import GANTrainConfig, GANTrainer

    set_threads(threads)
    try:
        gcfg = GeneratorConfig(
            z_dim=z_dim, w_dim=w_dim, resolution=resolution, mapping_layers=mapping_layers,
            channel_base=channel_base, channel_max=channel_max,
        )  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if mix_k is not None and mix_k >= gcfg.num_ws:
        raise click.BadParameter(f"must be < num_ws = {gcfg.num_ws}", param_hint="--mix-k")
    cfg = GANTrainConfig(
        dataset=str(spec), iterations=iterations, batch=batch, lr=lr, r1_gamma=r1_gamma,
        r1_interval=r1_interval, style_mix_prob=style_mix_prob, ema_kimg=ema_kimg, seed=seed,
        snapshot_every=snapshot_every, sample_every=sample_every, mix_k=mix_k, G=gcfg,
        D=DiscriminatorConfig(resolution=resolution, channel_base=d_channel_base,
                              channel_max=d_channel_max),
    )  # fmt: skip
    trainer = GANTrainer(cfg, run_dir, device=device)
    if resume:
        if not trainer.checkpoint_path.is_file():
            raise AdvmixError(f"{trainer.checkpoint_path}: nothing to resume")
        trainer.load_checkpoint()
        click.echo(f"resumed from iteration {trainer.iteration}", err=True)
    elif trainer.checkpoint_path.exists():
        raise AdvmixError(f"{run_dir} already holds a run; pass --resume or another --out")
    trainer.load_data(data_root)
    n_g = sum(p.numel() for p in trainer.G.parameters())
    n_d = sum(p.numel() for p in trainer.D.parameters())
    click.echo(
        f"training G ({n_g / 1e6:.2f} M params, num_ws {gcfg.num_ws}) and D ({n_d / 1e6:.2f} M) "
        f"on {spec} ({len(trainer.images)} images), device {device}",
        err=True,
    )
    time_limit_s = None if time_limit_min is None else time_limit_min * 60
    trainer.train(progress=not no_progress, time_limit_s=time_limit_s)
    click.echo(
        json.dumps(
            {
                "generator": str(run_dir / "generator.pt"),
                "iterations": trainer.iteration,
                "train_wall_s": round(trainer.elapsed_s, 1),
            }
        )
    )


@gan.command("train-classifier")
@click.option(
    "--dataset",
    "train_spec",
    type=DATASET_SPEC,
    default="cfmnist:train?gray=1",
    help="Real labelled training images.",
)
@click.option(
    "--test",
    "test_spec",
    type=DATASET_SPEC,
    default="cfmnist:random",
    help="Real labelled test images (accuracy is reported).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--epochs", type=click.IntRange(1), default=3)
@click.option(
    "--input-mode",
    type=click.Choice(["gray-max", "rgb"]),
    default="gray-max",
    help="gray-max: colour-blind input (max over RGB).",
)
@click.option("--seed", type=int, default=0)
@click.option("--threads", type=click.IntRange(1), default=None)
@data_root_option
def train_classifier_cmd(train_spec, test_spec, out: Path, epochs, input_mode, seed, threads,
                         data_root) -> None:  # fmt: skip
    """Train the small evaluation classifier (SmallCNN) used by `advmix gan evaluate`."""
    from advmix.classifiers import save_classifier
    from gan.evaluate import train_classifier

    set_threads(threads)
    model, info = train_classifier(
        str(train_spec), str(test_spec), epochs=epochs, seed=seed, input_mode=input_mode,
        data_root=data_root,
    )  # fmt: skip
    save_classifier(model, out, extra=info)
    click.echo(json.dumps(info))


@gan.command()
@click.option(
    "--generator",
    "generator_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Generator checkpoint (advmix format).",
)
@click.option(
    "--classifier",
    "classifier_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=shipped.GRAY_CLASSIFIER,
    show_default="the shipped gray classifier",
    help="Colour-blind evaluation classifier (`advmix gan train-classifier`).",
)
@click.option("--pairs", type=click.IntRange(10), default=1000, help="(A, B) pairs per k.")
@click.option(
    "--fd-samples",
    type=click.IntRange(10),
    default=2000,
    help="Generated and real images for the Frechet distances.",
)
@click.option("--truncation", type=click.FloatRange(0, 1), default=1.0)
@click.option("--seed", type=int, default=0)
@click.option(
    "--grids",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write samples.png and mixing-k<k>.png for every k here.",
)
@click.option(
    "--write-k",
    "write_k",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Save a copy of the generator with the chosen k in its config "
    "(and these metrics in its extra) to this path.",
)
@click.option(
    "--k",
    "force_k",
    type=click.IntRange(1),
    default=None,
    help="With --write-k: record this k instead of the chosen one.",
)
@click.option("--threads", type=click.IntRange(1), default=None)
@data_root_option
def evaluate(generator_path, classifier_path, pairs, fd_samples, truncation, seed, grids,
             write_k, force_k, threads, data_root) -> None:  # fmt: skip
    """Print JSON metrics: class kept and colour following B under mix(A, B, k) for every k,
    Frechet distances to real images, and the chosen k."""
    from advmix.checkpoints import (
        generator_fingerprint,
        load_generator,
        read_generator_checkpoint,
        save_generator,
    )
    from advmix.classifiers import load_classifier
    from gan.evaluate import evaluate_generator
    from gan.train import mixing_grid, sample_grid, save_grid

    set_threads(threads)
    G = load_generator(generator_path)
    classifier, info = load_classifier(classifier_path)
    if force_k is not None and force_k >= G.num_ws:
        raise click.BadParameter(f"must be < num_ws = {G.num_ws}", param_hint="--k")
    metrics = evaluate_generator(
        G, classifier, pairs=pairs, fd_samples=fd_samples, seed=seed, truncation_psi=truncation,
        data_root=data_root,
    )  # fmt: skip
    result = {
        "generator": str(generator_path),
        "fingerprint": generator_fingerprint(G),
        "classifier": str(classifier_path),
        "classifier_test_accuracy": info.get("test_accuracy"),
        **metrics,
    }
    if grids is not None:
        save_grid(sample_grid(G, 64), grids / "samples.png", nrow=8)
        for k in range(1, G.num_ws):
            save_grid(mixing_grid(G, k), grids / f"mixing-k{k}.png", nrow=7)
    if write_k is not None:
        extra = read_generator_checkpoint(generator_path)["extra"]
        G.cfg.k = force_k or metrics["chosen_k"]
        extra["evaluate"] = {key: v for key, v in result.items() if key != "fingerprint"}
        result["written"] = {"path": str(write_k), "k": G.cfg.k,
                             "fingerprint": save_generator(G, write_k, extra)}  # fmt: skip
    click.echo(json.dumps(result, indent=2))
