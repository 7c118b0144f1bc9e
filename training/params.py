"""click parameter types shared by commands: parsing errors become usage errors (exit 2)."""

from __future__ import annotations

import click

from advmix.errors import DataError
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
