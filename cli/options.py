"""click options built from settings dataclasses, and parameter types commands share.

``options_from(TrainConfig)`` turns every field that carries a setting spec
(``advmix.settings``) into a click option: its type, range, choices, default and help come
from the dataclass, so a setting is written once. Parsing errors become usage errors (exit 2).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import MISSING
from pathlib import Path

import click

from advmix.errors import DataError
from advmix.settings import flag_of, flat_name, settings, spec_of
from advmix.spec import DatasetSpec, parse_spec


class DatasetSpecType(click.ParamType):
    name = "SPEC"

    def convert(self, value, param, ctx) -> DatasetSpec:
        if isinstance(value, DatasetSpec):
            return value
        try:
            return parse_spec(value)
        except DataError as exc:
            self.fail(str(exc), param, ctx)


DATASET_SPEC = DatasetSpecType()


class DatasetSpecText(DatasetSpecType):
    """A dataset spec checked like ``DATASET_SPEC`` but kept as the text the user typed (the
    form config dataclasses and run records hold)."""

    def convert(self, value, param, ctx) -> str:
        super().convert(value, param, ctx)
        return str(value)


class FractionType(click.ParamType):
    """A float, or ``A/B`` (e.g. ``8/255``)."""

    name = "FLOAT|A/B"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float | int):
            number = float(value)
        else:
            text = str(value).strip()
            m = re.fullmatch(r"([0-9.]+)\s*/\s*([0-9.]+)", text)
            try:
                number = float(m.group(1)) / float(m.group(2)) if m else float(text)
            except (ValueError, ZeroDivisionError):
                self.fail(f"{value!r} is not a number or a fraction like 8/255", param, ctx)
        if (self.low is not None and number < self.low) or (
            self.high is not None and number > self.high
        ):
            self.fail(f"{value!r} must be in [{self.low:g}, {self.high:g}]", param, ctx)
        return number


class FiniteFloatRange(click.FloatRange):
    """A float in a range, never nan or infinite (those pass click's own range checks)."""

    def convert(self, value, param, ctx) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class StorageOptionType(click.ParamType):
    """``KEY=VALUE`` for fsspec; VALUE is JSON when it parses (``anon=true``), else a string."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx) -> tuple:
        from schemas.errors import StoreError
        from schemas.urls import parse_storage_option

        if isinstance(value, tuple):
            return value
        try:
            return parse_storage_option(value)
        except StoreError as exc:  # the message never repeats the value: it may be a secret
            self.fail(str(exc), param, ctx)


STORAGE_OPTION = StorageOptionType()


def storage_options(command):
    """Add a repeatable ``--storage-option KEY=VALUE``, passed as dict ``storage_options``."""
    return click.option(
        "--storage-option",
        "storage_options",
        type=STORAGE_OPTION,
        multiple=True,
        callback=lambda ctx, param, pairs: dict(pairs),
        help="fsspec option for the store URL, repeatable (e.g. endpoint_url=http://..., "
        "anon=true). Credentials also come from AWS_* / STORAGE_EMULATOR_HOST / Google "
        "application credentials in the environment.",
    )(command)


def _click_type(kind: type, spec):
    """The click type of a setting: its Python type narrowed by the spec's range or choices."""
    if spec.kind == "fraction":
        return FractionType(spec.low, spec.high)
    if spec.kind == "dataset":
        return DatasetSpecText()
    if spec.kind == "file":
        return click.Path(exists=True, dir_okay=False)
    if spec.choices is not None:
        return click.Choice(spec.choices)
    if kind is int:
        return click.IntRange(spec.low, spec.high)
    if kind is float:
        return FiniteFloatRange(spec.low, spec.high, min_open=spec.low_open)
    return click.STRING


def options_from(cls, skip: tuple[str, ...] = ()):
    """A decorator adding one click option per setting of dataclass ``cls``; an option's
    destination is the setting's flat name (``advmix.settings.from_flat`` builds ``cls`` back
    from them); ``skip`` leaves fields out."""

    def decorate(command):
        for f, kind in reversed(settings(cls)):
            if f.name in skip:
                continue
            spec, flag = spec_of(f), flag_of(f)
            base = _optional_type(kind)
            if getattr(base, "__origin__", None) is tuple:  # tuple[str, ...]: repeatable
                command = click.option(f"--{flag}", flat_name(f), multiple=True, default=f.default,
                                       type=_click_type(str, spec), help=spec.help,
                                       callback=lambda ctx, param, v: tuple(v))(command)  # fmt: skip
                continue
            if base is bool:
                names = f"--{flag}/--no-{flag}" if f.default else f"--{flag}"
                command = click.option(names, flat_name(f), is_flag=True, default=f.default,
                                       help=spec.help)(command)  # fmt: skip
                continue
            required = f.default is MISSING and f.default_factory is MISSING
            command = click.option(
                f"--{flag}", flat_name(f), type=_click_type(base, spec), required=required,
                default=None if required else f.default, help=spec.help,
            )(command)  # fmt: skip
        return command

    return decorate


def _optional_type(kind):
    """``int | None`` -> int; other types unchanged."""
    args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 else kind


def load_config(ctx: click.Context, param, value):
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
    # Keys are option names (``attack-steps`` or ``attack_steps``); map them to destinations.
    by_flag = {
        opt.lstrip("-").replace("-", "_"): p.name
        for p in ctx.command.params
        if p.name not in ("config", "help")
        for opt in (*p.opts, p.name)
    }
    defaults = {}
    for key, val in data.items():
        name = by_flag.get(str(key).replace("-", "_"))
        if name is None:
            raise click.BadParameter(f"{path}: unknown option {key!r}", ctx, param)
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def config_option(command):
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        callback=load_config,
        is_eager=True,
        expose_value=False,
        help="JSON or TOML file of option defaults (keys as option names); flags override it.",
    )(command)


def device_options(command):
    """``--device cpu|cuda`` (checked: one line when CUDA is missing) and ``--threads N``."""
    command = click.option(
        "--threads", type=click.IntRange(1), default=None, help="CPU threads for torch."
    )(command)
    return click.option(
        "--device", type=click.Choice(["cpu", "cuda"]), default="cpu", callback=_check_device
    )(command)


def _check_device(ctx, param, device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", ctx, param)
    return device


def set_threads(threads: int | None) -> None:
    """CPU intra-op threads. On a CPU shared with other jobs, 1 thread avoids the thread-pool
    stalls that made 2-thread iterations 10x slower in our runs."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def data_root_option(command):
    return click.option(
        "--data-root", type=click.Path(file_okay=False), default=None,
        help="Folder with the IDX files.",
    )(command)  # fmt: skip


def start_or_resume(trainer, resume: bool, run_dir) -> bool:
    """``--resume``: load the run's checkpoint (one line when there is none); without it,
    refuse a directory that already holds a run. Returns whether the run resumed."""
    from advmix.errors import AdvmixError

    if resume:
        if not trainer.checkpoint_path.is_file():
            raise AdvmixError(f"{trainer.checkpoint_path}: nothing to resume")
        trainer.load_checkpoint()
        return True
    if trainer.checkpoint_path.exists():
        raise AdvmixError(f"{run_dir} already holds a run; pass --resume or another --out")
    return False
