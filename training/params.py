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
