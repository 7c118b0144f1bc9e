"""``advmix train`` and ``advmix evaluate``: stage 2 of the pipeline."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import click

from training.params import DATASET_SPEC, storage_options

METHODS = ("nominal", "at", "randmix", "advmix", "mixup")
PROJECTIONS = ("box", "ball", "z")


class FractionType(click.ParamType):
    """A float, or ``A/B`` (e.g. ``8/255``)."""

    name = "FLOAT|A/B"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float | int):
            return float(value)
        text = str(value).strip()
        m = re.fullmatch(r"([0-9.]+)\s*/\s*([0-9.]+)", text)
        try:
            number = float(m.group(1)) / float(m.group(2)) if m else float(text)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number or a fraction like 8/255", param, ctx)
        if not 0 <= number <= 1:
            self.fail(f"{value!r} must be in [0, 1] (pixel units)", param, ctx)
        return number


FRACTION = FractionType()


def _load_config(ctx: click.Context, param, value):
    """``--config FILE`` (JSON or TOML): its keys become defaults, so flags override them."""
    if value is None:
        return value
    path = Path(value)
    try:
        text = path.read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", ctx, param) from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        first = (str(exc).splitlines() or ["parse error"])[0]
        raise click.BadParameter(f"{path} is not valid JSON/TOML ({first})", ctx, param) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a table/object of options", ctx, param)
    names = {p.name for p in ctx.command.params if p.name not in ("config", "help")}
    defaults = {}
    for key, val in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise click.BadParameter(f"{path}: unknown option {key!r}", ctx, param)
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _check_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    return device


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@click.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="JSON or TOML file of option defaults (keys as option names); flags override it.",
)
@click.option("--store", "store_url", required=True, help="Latent store URL (any fsspec URL).")
@click.option(
    "--generator",
    "generator_path",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="Generator checkpoint; must be the one the store was encoded with.",
)
@click.option("--method", type=click.Choice(METHODS), default="advmix")
@click.option("--epochs", type=click.IntRange(1), default=10)
@click.option("--batch-size", type=click.IntRange(1), default=64)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3)
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0)
@click.option("--seed", type=click.IntRange(0), default=0)
@click.option("--attack-steps", type=click.IntRange(0), default=5, help="AdvMix ascent steps K.")
@click.option("--restarts", type=click.IntRange(1), default=1, help="AdvMix restarts N_r.")
@click.option(
    "--step-size",
    type=click.FloatRange(0, min_open=True),
    default=0.25,
    help="AdvMix step, relative to the projection set (box width, ball radius, sqrt(z_dim)).",
)
@click.option("--projection", type=click.Choice(PROJECTIONS), default="ball")
@click.option(
    "--early-stop/--no-early-stop",
    default=True,
    help="Stop ascending for an example once a mix fools the classifier (Algorithm 2).",
)
@click.option(
    "--train-on",
    type=click.Choice(["both", "mixes"]),
    default=None,
    help="Train on nominal + perturbed examples, or perturbed only "
    "[default: both for advmix/randmix, mixes for at].",
)
@click.option("--eps", type=FRACTION, default="8/255", help="AT l_inf radius, pixel units.")
@click.option("--pgd-steps", type=click.IntRange(1), default=7)
@click.option("--mixup-alpha", type=click.FloatRange(0, min_open=True), default=1.0)
@click.option(
    "--grayscale",
    is_flag=True,
    help="Colour-blind classifier (max over RGB) at train and eval: the oracle baseline.",
)
@click.option("--width", type=click.IntRange(1), default=32, help="SmallCNN width.")
@click.option("--buffer-size", type=click.IntRange(0), default=4096, help="Shuffle buffer.")
@click.option("--workers", type=click.IntRange(0), default=0, help="DataLoader workers.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=50, help="Steps.")
@click.option("--log-every", type=click.IntRange(1), default=10, help="Steps.")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop after N steps.")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its checkpoint.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for torch.")
@click.option("--no-progress", is_flag=True)
@storage_options
def train(store_url, generator_path, method, epochs, batch_size, lr, weight_decay, seed,
          attack_steps, restarts, step_size, projection, early_stop, train_on, eps, pgd_steps,
          mixup_alpha, grayscale, width, buffer_size, workers, checkpoint_every, log_every, max_steps,
          run_dir, resume, device, threads, no_progress, storage_options) -> None:  # fmt: skip
    """Train a classifier on a latent store (nominal | at | randmix | advmix | mixup).

    Runs on one CPU/GPU, or as DDP under `torchrun --nproc_per_node=N -m training train ...`.
    """
    from advmix.errors import AdvmixError
    from training.train import TrainConfig, Trainer

    device = _check_device(device)
    _set_threads(threads)
    cfg = TrainConfig(
        store=store_url, generator=str(generator_path), method=method, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        attack_steps=attack_steps, restarts=restarts, step_size=step_size,
        projection=projection, early_stop=early_stop, train_on=train_on, eps=eps,
        pgd_steps=pgd_steps, mixup_alpha=mixup_alpha, grayscale=grayscale, width=width, buffer_size=buffer_size,
        workers=workers, checkpoint_every=checkpoint_every, log_every=log_every,
        max_steps=max_steps, storage_options=storage_options,
    )  # fmt: skip
    trainer = Trainer(cfg, run_dir, device=device)
    if resume:
        if not trainer.checkpoint_path.is_file():
            raise AdvmixError(f"{trainer.checkpoint_path}: nothing to resume")
        trainer.load_checkpoint()
        if trainer.dist.main:
            click.echo(f"resumed at step {trainer.step} (epoch {trainer.epoch})", err=True)
    elif trainer.checkpoint_path.exists():
        raise AdvmixError(f"{run_dir} already holds a run; pass --resume or another --out")
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
@click.option("--attack", type=click.Choice(["none", "advmix", "randmix"]), default="none")
@click.option("--generator", "generator_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--attack-steps", type=click.IntRange(0), default=5)
@click.option("--restarts", type=click.IntRange(1), default=1)
@click.option("--step-size", type=click.FloatRange(0, min_open=True), default=0.25)
@click.option("--projection", type=click.Choice(PROJECTIONS), default="ball")
@click.option("--limit", type=click.IntRange(1), default=None, help="Store samples to use.")
@click.option("--batch-size", type=click.IntRange(1), default=256)
@click.option("--seed", type=click.IntRange(0), default=0)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--data-root", type=click.Path(file_okay=False), default=None)
@storage_options
def evaluate(checkpoint, specs, store_url, attack, generator_path, attack_steps, restarts,
             step_size, projection, limit, batch_size, seed, json_out, device, threads,
             data_root, storage_options) -> None:  # fmt: skip
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
    device = _check_device(device)
    _set_threads(threads)
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
                steps=attack_steps,
                restarts=restarts,
                step_size=step_size,
                projection=projection,
                seed=seed,
                batch_size=batch_size,
                limit=limit,
                device=device,
            )  # fmt: skip
        )
    click.echo(format_table(rows))
    if json_out is not None:
        write_json(json_out, {"checkpoint": str(checkpoint), "model": info, "results": rows})
