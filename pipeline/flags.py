"""The encode job's command line: its flags, their defaults and range checks. Every check
that can refuse a value does so here, before Beam starts and before any model loads."""

from __future__ import annotations

import argparse
import math


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit 2 (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"Error: {message} (see python -m pipeline.encode --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m pipeline.encode",
        description="Invert images into a latent store (Algorithm 1) with Apache Beam. "
        "Unknown options are passed to Beam.",
    )
    p.add_argument("--input", required=True, help="dataset spec, image folder URL or .parquet URL")
    p.add_argument("--output", required=True, help="store URL (path, file://, s3://, gs://, ...)")
    p.add_argument(
        "--generator", required=True, help="generator checkpoint path or URL (advmix gan train)"
    )
    p.add_argument(
        "--features", default="cfmnist", help="perceptual weights: cfmnist, imagenet, path"
    )
    p.add_argument("--steps", type=positive_int, default=100, help="inversion steps N")
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="Adam learning rate on W+ [default: 0.2 from the mean style, 0.05 from "
        "an encoder's prediction: a warm start takes small steps]",
    )
    p.add_argument(
        "--adam-betas",
        type=beta_pair,
        default=None,
        metavar="B1,B2",
        help="Adam's betas [default: 0.9,0.999 from the mean style (the paper), 0.5,0.9 from "
        "an encoder's prediction: short memories suit a short refinement]",
    )
    p.add_argument(
        "--mix-steps",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="the mixing loss on the last N steps only [default: every step, Algorithm 1]; a "
        "step without it takes under half the time",
    )
    p.add_argument(
        "--beta-mix", type=non_negative_float, default=0.2, help="mixing-loss weight per VGG layer"
    )
    p.add_argument(
        "--w-avg-samples", type=positive_int, default=1000, help="M latents for the init"
    )
    p.add_argument(
        "--init",
        choices=("mean", "encoder"),
        default="mean",
        help="start from the mean style (the paper) or an encoder's prediction",
    )
    p.add_argument("--encoder", default=None, help="amortised encoder (advmix encoder train)")
    p.add_argument("--k", type=positive_int, default=None, help="coarse/fine split (default: G's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--shard-size", type=positive_int, default=256)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; asserted, never swapped")
    p.add_argument("--w-dtype", choices=("float16", "float32"), default="float32")
    p.add_argument("--store-images", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--large-model", action="store_true", help="one shared model per machine")
    p.add_argument(
        "--torch-threads",
        type=positive_int,
        default=None,
        help="CPU threads torch uses per worker while inverting [default: torch's own, which "
        "differs between runners: Dask workers use 1]; the store's bytes depend on it",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument(
        "--attributes",
        default=None,
        help="CSV or Parquet of named binary attributes per image (key column id, "
        "image, file or filename) for an image folder or Parquet input",
    )
    p.add_argument(
        "--resize",
        choices=("center-crop", "none"),
        default="center-crop",
        help="images of another size: crop the centred square and resize it to the "
        "generator's resolution, or reject them",
    )
    p.add_argument("--image-column", default="image")
    p.add_argument("--label-column", default="label")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    return p


def positive_int(text: str) -> int:
    return _whole_number(text, minimum=1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, minimum=0)


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def beta_pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers B1,B2, got {text!r}")
    betas = (finite_float(parts[0]), finite_float(parts[1]))
    if not all(0 <= b < 1 for b in betas):
        raise argparse.ArgumentTypeError(f"each beta must be in [0, 1), got {text}")
    return betas


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value
