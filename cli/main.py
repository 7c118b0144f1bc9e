"""The ``advmix`` command: a click group; each command family lives in its own module.

User-facing failures (bad data, bad store, bad checkpoint) are raised as exceptions with a
one-line message; ``main`` prints that line and exits 1 instead of showing a traceback. Usage
errors (bad option values) are click's and exit 2.
"""

from __future__ import annotations

import io
import sys

import click

from advmix.errors import AdvmixError
from cli.data import data
from cli.encoder import encoder
from cli.gan import gan
from cli.store import store
from cli.train import evaluate, train
from schemas.errors import StoreError
from schemas.urls import install_redaction, redact

CONTEXT = {
    "auto_envvar_prefix": "ADVMIX",
    "show_default": True,
    "help_option_names": ["-h", "--help"],
}

# Exception types whose message is the whole story: the core's and the store contract's.
USER_ERRORS: tuple[type[BaseException], ...] = (AdvmixError, StoreError)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="advmix")
def cli() -> None:
    """AdvMix: adversarial mixing with disentangled StyleGAN representations."""


cli.add_command(data)
cli.add_command(gan)
cli.add_command(encoder)
cli.add_command(store)
cli.add_command(train)
cli.add_command(evaluate)


def main(argv: list[str] | None = None) -> None:
    # Whatever this process prints (errors, logs, the traceback of a bug) goes out without
    # the credentials it was given in URLs, options or the environment.
    install_redaction()
    try:
        cli.main(args=argv, prog_name="advmix", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # one line: the whole usage text buries what was wrong
        where = exc.ctx.command_path if exc.ctx is not None else "advmix"
        sys.stderr.write(redact(f"Error: {exc.format_message()} (see {where} --help)\n"))
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        shown = io.StringIO()
        exc.show(file=shown)
        sys.stderr.write(redact(shown.getvalue()))
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        click.echo(f"Error: {redact(str(exc))}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
