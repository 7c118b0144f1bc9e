"""Settings typed once: a config dataclass field that also describes its command-line option.

    @dataclass
    class AdvMixConfig:
        steps: int = setting(5, "AdvMix ascent steps K.", flag="attack-steps", low=0)

The dataclass is the single place a setting's name, type, default, range and help live. The
trainer and evaluation build from the dataclass; ``cli.options`` turns its fields into click
options (types and ranges included), so a bad value is a usage error on the command line and
the same one-line ``ValueError`` from ``check`` when the config is built in code. Nothing here
imports click: the core stays free of the command line.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import MISSING, dataclass, field


@dataclass(frozen=True)
class Spec:
    """What a setting accepts, beyond its type."""

    help: str = ""
    flag: str | None = None  # option name without dashes; default: the field name, dashed
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself not allowed
    choices: tuple[str, ...] | None = None
    kind: str | None = None  # how the CLI parses it: "fraction" (8/255), "file" (must exist),
    # "dataset" (a dataset spec such as cfmnist:random?limit=2000)
    fixed: bool = False  # must not change when a run resumes


def setting(default=MISSING, help: str = "", *, factory=MISSING, **spec):
    """A dataclass field with its option ``Spec`` in the metadata."""
    metadata = {"spec": Spec(help=help, **spec)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def spec_of(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get("spec")


def flag_of(f: dataclasses.Field) -> str:
    spec = spec_of(f)
    return (spec.flag if spec and spec.flag else f.name).replace("_", "-")


def settings(cls) -> list[tuple[dataclasses.Field, type]]:
    """(field, resolved type) of every field that describes an option, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if spec_of(f) is not None]


def check(obj) -> None:
    """Raise ``ValueError`` (one line, naming the option) for a value out of its range."""
    for f, _ in settings(type(obj)):
        spec, value = spec_of(f), getattr(obj, f.name)
        if value is None or isinstance(value, bool | tuple | list):
            continue
        name = f"--{flag_of(f)}"
        if spec.choices is not None and value not in spec.choices:
            raise ValueError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}")
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
            if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
                op = ">" if spec.low_open else ">="
                raise ValueError(f"{name} must be {op} {spec.low:g}, got {value}")
            if spec.high is not None and value > spec.high:
                raise ValueError(f"{name} must be <= {spec.high:g}, got {value}")


def flat_name(f: dataclasses.Field) -> str:
    """The setting's name in run records and config files: its flag, underscored."""
    return flag_of(f).replace("-", "_")


def as_flat_dict(obj) -> dict:
    """``{flat name: value}`` over the settings of ``obj`` and of the settings dataclasses it
    holds: one namespace, the one the command line, config files and run records share."""
    out: dict = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(as_flat_dict(value))
        elif spec_of(f) is not None:
            out[flat_name(f)] = list(value) if isinstance(value, tuple) else value
    return out


def fixed_names(cls) -> list[str]:
    """Flat names of the settings that must not change across a resume."""
    names = []
    for f in dataclasses.fields(cls):
        spec = spec_of(f)
        if spec is not None:
            names += [flat_name(f)] if spec.fixed else []
        elif _holds_settings(f):
            names += fixed_names(f.default_factory)
    return names


def from_flat(cls, values: dict, **direct):
    """Build ``cls`` from ``{flat name: value}`` (its own settings and those of the settings
    dataclasses it holds); ``direct`` are constructor arguments passed as they are."""
    unknown = set(values) - _flat_names(cls)
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(sorted(unknown))}")
    kwargs = dict(direct)
    for f in dataclasses.fields(cls):
        if spec_of(f) is not None and flat_name(f) in values:
            kwargs[f.name] = values[flat_name(f)]
        elif spec_of(f) is None and _holds_settings(f):
            inner = _flat_names(f.default_factory)
            kwargs[f.name] = from_flat(f.default_factory, {k: v for k, v in values.items()
                                                           if k in inner})  # fmt: skip
    return cls(**kwargs)


def _holds_settings(f: dataclasses.Field) -> bool:
    return f.default_factory is not MISSING and dataclasses.is_dataclass(f.default_factory)


def _flat_names(cls) -> set[str]:
    names = set()
    for f in dataclasses.fields(cls):
        if spec_of(f) is not None:
            names.add(flat_name(f))
        elif _holds_settings(f):
            names |= _flat_names(f.default_factory)
    return names
