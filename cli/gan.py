"""``advmix gan ...``: train, evaluate and inspect StyleGAN2 generators."""

from __future__ import annotations

import json
from pathlib import Path

import click

from advmix import shipped
from cli.options import DATASET_SPEC, data_root_option, device_options, set_threads, start_or_resume

# The options that shape the generator: --init-from takes them from its file instead.
GENERATOR_SHAPE = ("z_dim", "w_dim", "mapping_layers", "resolution", "channel_base", "channel_max")


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
@click.option(
    "--init-from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Fine-tune: start G from this generator file (its architecture replaces the "
    "architecture options); D starts fresh.",
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
          d_channel_base, d_channel_max, mix_k, snapshot_every, sample_every, init_from, seed,
          device, resume, data_root, no_progress, threads, time_limit_min) -> None:  # fmt: skip
    """Train a StyleGAN2 generator on unlabelled images (non-saturating loss, lazy R1, style
    mixing, EMA); writes snapshots, sample and style-mixing grids into OUT."""
    from advmix.discriminator import DiscriminatorConfig
    from advmix.stylegan import GeneratorConfig
    from gan.train import GANTrainConfig, GANTrainer, fine_tuning

    set_threads(threads)
    if init_from is not None:
        given = [f"--{name.replace('_', '-')}" for name in GENERATOR_SHAPE
                 if click.get_current_context().get_parameter_source(name).name != "DEFAULT"]  # fmt: skip
        if given:
            raise click.UsageError(f"--init-from takes the generator's architecture from the "
                                   f"file; drop {', '.join(given)}")  # fmt: skip
    try:
        gcfg = GeneratorConfig(
            z_dim=z_dim, w_dim=w_dim, resolution=resolution, mapping_layers=mapping_layers,
            channel_base=channel_base, channel_max=channel_max,
        )  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    cfg = GANTrainConfig(
        dataset=str(spec), iterations=iterations, batch=batch, lr=lr, r1_gamma=r1_gamma,
        r1_interval=r1_interval, style_mix_prob=style_mix_prob, ema_kimg=ema_kimg, seed=seed,
        snapshot_every=snapshot_every, sample_every=sample_every, mix_k=mix_k, G=gcfg,
    )  # fmt: skip
    if init_from is not None:
        cfg = fine_tuning(cfg, init_from)
    cfg.D = DiscriminatorConfig(resolution=cfg.G.resolution, channel_base=d_channel_base,
                                channel_max=d_channel_max)  # fmt: skip
    if mix_k is not None and mix_k >= cfg.G.num_ws:
        raise click.BadParameter(f"must be < num_ws = {cfg.G.num_ws}", param_hint="--mix-k")
    trainer = GANTrainer(cfg, run_dir, device=device)
    if start_or_resume(trainer, resume, run_dir):
        click.echo(f"resumed from iteration {trainer.iteration}", err=True)
    trainer.load_data(data_root)
    n_g = sum(p.numel() for p in trainer.G.parameters())
    n_d = sum(p.numel() for p in trainer.D.parameters())
    click.echo(
        f"training G ({n_g / 1e6:.2f} M params, num_ws {cfg.G.num_ws}) and D ({n_d / 1e6:.2f} M) "
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
@click.option(
    "--real",
    "real_spec",
    type=DATASET_SPEC,
    default="cfmnist:random",
    help="Real images the generated ones are compared with (the data's held-out split).",
)
@click.option(
    "--real-floor",
    "floor_spec",
    type=DATASET_SPEC,
    default="cfmnist:train-random",
    help="Second real set, compared with --real for the distances' floor (the training split).",
)
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
def evaluate(generator_path, classifier_path, pairs, fd_samples, truncation, real_spec,
             floor_spec, seed, grids, write_k, force_k, threads, data_root) -> None:  # fmt: skip
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
    if force_k is not None and force_k >= G.num_ws:
        raise click.BadParameter(f"must be < num_ws = {G.num_ws}", param_hint="--k")
    result = {"generator": str(generator_path), "fingerprint": generator_fingerprint(G)}
    # The metrics judge mixes with a Colored Fashion-MNIST classifier: they need its domain.
    measurable = (G.cfg.resolution, G.cfg.img_channels) == (32, 3)
    if measurable:
        classifier, info = load_classifier(classifier_path)
        result |= {"classifier": str(classifier_path),
                   "classifier_test_accuracy": info.get("test_accuracy")}  # fmt: skip
        result |= evaluate_generator(
            G, classifier, pairs=pairs, fd_samples=fd_samples, seed=seed,
            truncation_psi=truncation, real_spec=str(real_spec), baseline_spec=str(floor_spec),
            data_root=data_root,
        )  # fmt: skip
    elif grids is None and force_k is None:
        raise click.UsageError(
            f"the metrics need a 32x32 RGB generator of Colored Fashion-MNIST; this one makes "
            f"{G.cfg.resolution}x{G.cfg.resolution}x{G.cfg.img_channels}: pass --grids DIR to "
            "choose k by eye, then --write-k OUT --k K"
        )
    else:
        result["metrics"] = "not measured: the evaluation classifier judges 32x32 RGB images"
    if grids is not None:
        save_grid(sample_grid(G, 64 if G.cfg.resolution <= 64 else 16), grids / "samples.png",
                  nrow=8)  # fmt: skip
        for k in range(1, G.num_ws):
            save_grid(mixing_grid(G, k), grids / f"mixing-k{k}.png", nrow=7)
        result["grids"] = [str(grids / "samples.png")] + [
            str(grids / f"mixing-k{k}.png") for k in range(1, G.num_ws)
        ]
    if write_k is not None:
        if force_k is None and not measurable:
            raise click.UsageError("pass --k with --write-k: no k was measured for this generator")
        extra = read_generator_checkpoint(generator_path)["extra"]
        G.cfg.k = force_k or result["chosen_k"]
        extra["evaluate"] = {key: v for key, v in result.items() if key != "fingerprint"}
        result["written"] = {"path": str(write_k), "k": G.cfg.k,
                             "fingerprint": save_generator(G, write_k, extra)}  # fmt: skip
    click.echo(json.dumps(result, indent=2))


@gan.command("import")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The project's generator checkpoint to write (tensors only).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["auto", "nvlabs", "rosinality"]),
              default="auto", help="auto: a zip archive is rosinality's, anything else NVlabs'.")  # fmt: skip
@click.option("--k", type=click.IntRange(1), default=None,
              help="Record this coarse/fine split (choose it with `advmix gan evaluate --grids`).")  # fmt: skip
def import_(src: Path, out: Path, fmt: str, k: int | None) -> None:
    """Import a StyleGAN2 generator from NVlabs stylegan2-ada-pytorch (network-snapshot-*.pkl,
    read as data: its embedded code never runs) or rosinality stylegan2-pytorch (.pt)."""
    from advmix.checkpoints import save_generator
    from advmix.importers import describe, import_generator

    imported = import_generator(src, fmt, k)
    G = imported.generator
    click.echo(f"found: {describe(G)}")
    fingerprint = save_generator(G, out, extra={"imported": imported.info})
    split = f"k {G.cfg.k}" if G.cfg.k is not None else "no k yet (pass --k, or choose one with " \
        "`advmix gan evaluate --grids`)"  # fmt: skip
    click.echo(f"wrote {out} ({imported.info['format']} {src.name}, sha256 "
               f"{imported.info['sha256'][:16]}...; fingerprint {fingerprint[:16]}...; {split})")  # fmt: skip
