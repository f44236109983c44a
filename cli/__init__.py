"""The ``xmargin`` command line: one entry point for people and scripts."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from protocol_model.errors import ConfigError

from .common import EXIT_BAD_INPUT, EXIT_FAILED, Context, check_renamed_env, fail


class OneLineUsageError(click.UsageError):
    """A usage error shown as one line on stderr (exit 2), like every other error of the CLI."""

    def __init__(self, exc: click.UsageError) -> None:
        super().__init__(exc.format_message(), exc.ctx)

    def show(self, file: Any = None) -> None:
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message()}{where}", err=True)


class Group(click.Group):
    """The root group: usage errors of any command below it are one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise OneLineUsageError(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.NoArgsIsHelpError, OneLineUsageError):
            raise
        except click.UsageError as exc:
            raise OneLineUsageError(exc) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="more log output (-v info, -vv debug)")
@click.version_option(package_name="xmargin")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """xmargin: cross-margin perpetuals, their exact model, and a liquidation bot."""
    ctx.ensure_object(Context)
    ctx.meta["verbose"] = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        check_renamed_env()
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


def _register() -> None:
    from . import deploy_cmd, price  # noqa: F401  (commands register themselves on import)

    for name in ("seed", "health", "node", "botrun", "demo", "simulate"):
        try:
            __import__(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Unexpected errors are one line too, unless -v asks for the traceback."""
    try:
        cli.main(args=argv, prog_name="xmargin", standalone_mode=True)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - last-resort boundary of the CLI
        if "-v" in sys.argv or "-vv" in sys.argv or "--verbose" in sys.argv:
            raise
        click.echo(f"error: internal error ({type(exc).__name__}: {exc}); rerun with -v for details", err=True)
        sys.exit(EXIT_FAILED)
