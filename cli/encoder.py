"""``advmix encoder ...``: amortised encoders that give Algorithm 1 its starting styles."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.options import data_root_option, device_options, options_from, set_threads, start_or_resume
from gan.encoder import EncoderTrainConfig


@click.group()
def encoder() -> None:
    """Train image -> W+ encoders for a generator (pipeline.encode --init encoder)."""


@encoder.command()
@click.option("--generator", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The generator the encoder inverts; encoding refuses any other.")  # fmt: skip
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory: checkpoint.pt, metrics.jsonl, tb/, encoder.pt.")  # fmt: skip
@click.option("--features", default="cfmnist", show_default=True,
              help="Perceptual weights of the reconstruction loss: cfmnist, imagenet or a path.")  # fmt: skip
@options_from(EncoderTrainConfig)
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its checkpoint.")
@click.option("--time-limit-min", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop (with a checkpoint and encoder.pt) after this many minutes.")  # fmt: skip
@click.option("--no-progress", is_flag=True)
@device_options
@data_root_option
def train(generator, run_dir, features, resume, time_limit_min, no_progress, device, threads,
          data_root, **settings) -> None:  # fmt: skip
    """Train an encoder on the generator's own samples (random z, style-mixed: a latent, a
    pixel and a perceptual loss), then optionally fine-tune it on real unlabelled images
    (--data SPEC --real-steps N: reconstruction only)."""
    from advmix.checkpoints import load_generator
    from advmix.perceptual import load_features
    from advmix.settings import from_flat
    from gan.encoder import EncoderTrainer

    set_threads(threads)
    cfg = from_flat(EncoderTrainConfig, settings)
    G = load_generator(generator)
    trainer = EncoderTrainer(cfg, G, load_features(features), run_dir, device=device)
    if start_or_resume(trainer, resume, run_dir):
        click.echo(f"resumed at step {trainer.step}", err=True)
    if cfg.real_steps:
        trainer.load_real_data(data_root)
    out = trainer.train(progress=not no_progress,
                        time_limit_s=None if time_limit_min is None else time_limit_min * 60)  # fmt: skip
    click.echo(json.dumps({"encoder": str(out), "step": trainer.step,
                           "train_wall_s": round(trainer.elapsed_s, 1), **trainer.last_record}))  # fmt: skip
