"""Dataset spec strings shared by both stages: ``NAME:SPLIT?key=value&key=value``.

Examples: ``cfmnist:train?sigma=0.05&seed=0&limit=1000``, ``cfmnist:random``,
``cfmnist:iid?gray=1``. The canonical string (``str(spec)``) is what stores and runs record.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from urllib.parse import parse_qsl

from advmix.errors import DataError

# Datasets this module knows, with the splits each offers. Colored Fashion-MNIST and colored
# MNIST follow the same protocol (advmix.datasets); only the source IDX files differ.
SPLITS = {
    "cfmnist": ("train", "train-random", "iid", "random", "swapped"),
    "cmnist": ("train", "train-random", "iid", "random", "swapped"),
    # CelebA from its own files (?root=DIR), read by the encode job, not by advmix.datasets
    "celeba": ("train", "valid", "test", "all"),
    # IRM's Colored Fashion-MNIST (Ahuja et al. 2020), built as its authors built it: advmix.irmcf
    "irmcf": ("train", "train-random", "test"),
}
ALL_OPTIONS = ("sigma", "seed", "limit", "offset", "gray", "root")
# Datasets that take fewer options: irmcf's colours are its authors' protocol (no sigma), and
# its grey variant is the colour-blind classifier (--grayscale), not a dataset option.
OPTIONS = {"irmcf": ("seed", "limit", "offset", "root")}
DEFAULT_SIGMA = 0.05


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    split: str
    sigma: float = DEFAULT_SIGMA
    seed: int = 0
    limit: int | None = None
    offset: int = 0
    gray: bool = False
    root: str | None = None

    def __str__(self) -> str:
        defaults = DatasetSpec(self.name, self.split)
        params = [
            f"{f.name}={_format(getattr(self, f.name))}"
            for f in fields(self)
            if f.name not in ("name", "split")
            and getattr(self, f.name) != getattr(defaults, f.name)
        ]
        query = "?" + "&".join(params) if params else ""
        return f"{self.name}:{self.split}{query}"


def _format(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def _parse_float(key: str, text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"dataset spec {spec!r}: {key}={text!r} is not a number") from None
    if not 0.0 <= value <= 10.0:
        raise DataError(f"dataset spec {spec!r}: {key} must be in [0, 10], got {value}")
    return value


def _parse_int(key: str, text: str, spec: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"dataset spec {spec!r}: {key}={text!r} is not an integer") from None
    if value < minimum:
        raise DataError(f"dataset spec {spec!r}: {key} must be >= {minimum}, got {value}")
    return value


def _parse_bool(key: str, text: str, spec: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise DataError(f"dataset spec {spec!r}: {key}={text!r} is not a boolean (use 0 or 1)")


def parse_spec(text: str) -> DatasetSpec:
    """Parse a spec string, raising DataError with a one-line reason when it is malformed."""
    head, _, query = text.strip().partition("?")
    name, sep, split = head.partition(":")
    if name not in SPLITS:
        known = ", ".join(sorted(SPLITS))
        raise DataError(f"dataset spec {text!r}: unknown dataset {name!r} (known: {known})")
    if not sep or not split:
        raise DataError(f"dataset spec {text!r}: missing split, expected {name}:SPLIT")
    if split not in SPLITS[name]:
        raise DataError(
            f"dataset spec {text!r}: unknown split {split!r} (known: {', '.join(SPLITS[name])})"
        )
    values: dict = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise DataError(f"dataset spec {text!r}: malformed query, expected key=value&...") from None
    allowed = OPTIONS.get(name, ALL_OPTIONS)
    for key, raw in pairs:
        if key in values:
            raise DataError(f"dataset spec {text!r}: {key} given twice")
        if key not in allowed:
            what = f"{name} takes no option" if key in ALL_OPTIONS else "unknown option"
            raise DataError(f"dataset spec {text!r}: {what} {key!r} (known: {', '.join(allowed)})")
        if key == "sigma":
            values[key] = _parse_float(key, raw, text)
        elif key in ("seed", "offset"):
            values[key] = _parse_int(key, raw, text, minimum=0)
        elif key == "limit":
            values[key] = _parse_int(key, raw, text, minimum=1)
        elif key == "gray":
            values[key] = _parse_bool(key, raw, text)
        else:
            values[key] = raw  # root
    return DatasetSpec(name=name, split=split, **values)
