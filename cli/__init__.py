"""The ``xmargin`` command line: one entry point for people and scripts."""

from __future__ import annotations

import logging
import sys

import click

from .common import EXIT_FAILED, Context


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="more log output (-v info, -vv debug)")
@click.version_option(package_name="xmargin")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """xmargin: cross-margin perpetuals, their exact model, and a liquidation bot."""
    ctx.ensure_object(Context)
    ctx.meta["verbose"] = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")


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
