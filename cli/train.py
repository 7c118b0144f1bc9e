"""``advmix train`` and ``advmix evaluate``: stage 2 of the pipeline.

Both commands take their settings from the config dataclasses (``TrainConfig``,
``AdvMixConfig``): the options below are generated from them, so names, types, ranges and
defaults are written once.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from advmix.attacks import AdvMixConfig
from advmix.settings import from_flat
from cli.options import (
    DATASET_SPEC,
    config_option,
    data_root_option,
    device_options,
    options_from,
    set_threads,
    start_or_resume,
    storage_options,
)
from training.config import TrainConfig
from training.evaluate import ATTACKS


@click.command()
@config_option
@options_from(TrainConfig)
@options_from(AdvMixConfig)
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its checkpoint.")
@device_options
@click.option("--no-progress", is_flag=True)
@storage_options
def train(run_dir, resume, device, threads, no_progress, storage_options, **settings) -> None:
    """Train a classifier on a latent store (nominal | at | randmix | advmix | mixup).

    Runs on one CPU/GPU, or as DDP under `torchrun --nproc_per_node=N -m cli train ...`.
    """
    from training.train import Trainer

    set_threads(threads)
    try:
        cfg = from_flat(TrainConfig, settings, storage_options=storage_options)
    except ValueError as exc:  # a combination the option types cannot see
        raise click.UsageError(str(exc)) from None
    trainer = Trainer(cfg, run_dir, device=device)
    if start_or_resume(trainer, resume, run_dir) and trainer.dist.main:
        click.echo(f"resumed at step {trainer.step} (epoch {trainer.epoch})", err=True)
    trainer.write_run_record()
    summary = trainer.train(progress=not no_progress)
    if trainer.dist.main:
        click.echo(
            json.dumps(
                {
                    "classifier": str(run_dir / "classifier.pt"),
                    "step": trainer.step,
                    "epochs": trainer.epoch,
                    "train_s": round(trainer.elapsed_s, 1),
                    **{k: v for k, v in summary.items() if k in ("loss", "acc")},
                }
            )
        )
    if trainer.dist.enabled:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


@click.command()
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="A training checkpoint.pt or a classifier.pt.",
)
@click.option("--data", "specs", type=DATASET_SPEC, multiple=True, help="Dataset spec, repeatable.")
@click.option("--store", "store_url", default=None, help="Latent store to evaluate (and attack).")
@click.option("--attack", type=click.Choice(["none", *ATTACKS]), default="none")
@click.option("--generator", "generator_path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--k",
    type=click.IntRange(1),
    default=None,
    help="Coarse/fine split of the attack [default: the store's, else the generator's].",
)
@options_from(AdvMixConfig)
@click.option("--limit", type=click.IntRange(1), default=None, help="Store samples to use.")
@click.option("--batch-size", type=click.IntRange(1), default=256)
@click.option("--seed", type=click.IntRange(0), default=0)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@device_options
@data_root_option
@storage_options
def evaluate(checkpoint, specs, store_url, attack, generator_path, k, limit, batch_size, seed,
             json_out, device, threads, data_root, storage_options, **settings) -> None:  # fmt: skip
    """Accuracy on dataset splits (--data, e.g. cfmnist:random) and on a store, with robust
    accuracy under an AdvMix (or RandMix) attack of the stated budget (--store --attack)."""
    from training.evaluate import (
        evaluate_datasets,
        evaluate_store,
        format_table,
        load_model,
        write_json,
    )

    if not specs and store_url is None:
        raise click.UsageError("give --data SPEC (repeatable) and/or --store URL")
    if attack != "none" and store_url is None:
        raise click.BadParameter("an attack needs latents: pass --store", param_hint="--attack")
    set_threads(threads)
    model, info = load_model(checkpoint, device)
    rows = evaluate_datasets(model, specs, batch_size, device, data_root)
    if store_url is not None:
        rows.append(
            evaluate_store(
                model,
                store_url,
                storage_options,
                attack=attack,
                generator_path=generator_path,
                cfg=from_flat(AdvMixConfig, settings),
                k=k,
                seed=seed,
                batch_size=batch_size,
                limit=limit,
                device=device,
            )  # fmt: skip
        )
    click.echo(format_table(rows))
    if json_out is not None:
        write_json(json_out, {"checkpoint": str(checkpoint), "model": info, "results": rows})
