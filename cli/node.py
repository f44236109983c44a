"""``xmargin node``: the embedded local chain as a JSON-RPC HTTP server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from protocol_model.wad import ETHER

from . import cli
from .common import EXIT_BAD_INPUT, fail, handle_errors


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind")
@click.option("--port", type=click.IntRange(0, 65535), default=8545, show_default=True, help="TCP port (0 picks a free one)")
@click.option("--block-time", type=click.FloatRange(min=0, min_open=True), default=None,
              help="seconds between blocks; pending transactions wait in a mempool ordered by priority fee "
                   "[default: mine every transaction at once]")
@click.option("--accounts", type=click.IntRange(1, 100), default=10, show_default=True, help="funded dev accounts")
@click.option("--export-keys", type=click.Path(dir_okay=False), default=None,
              help="write the dev accounts' private keys to this JSON file (mode 0600); they are never printed")
@handle_errors
def node(host: str, port: int, block_time: float | None, accounts: int, export_keys: str | None) -> None:
    """Run a local chain (eth-tester on py-evm) until Ctrl-C, like anvil."""
    from devnode import DevNode

    dev = DevNode(block_time=block_time, port=port, host=host, accounts=accounts)
    try:
        dev.start()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port", EXIT_BAD_INPUT)
    w3_balance = int(dev.tester.get_balance(dev.accounts[0][0]))
    click.echo(f"xmargin dev node: chain id {dev.chain.chain_id}")
    click.echo("Available accounts (unlocked on this node):")
    for i, (address, _key) in enumerate(dev.accounts):
        click.echo(f"  ({i}) {address}" + (f"  {w3_balance // ETHER} ETH" if w3_balance else ""))
    if export_keys:
        path = Path(export_keys)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump([{"address": a, "private_key": k} for a, k in dev.accounts], fh, indent=1)
        click.echo(f"Dev keys written to {path} (mode 0600)")
    click.echo(f"Block time: {f'{block_time} s, fee-priority ordering' if block_time else 'automine'}")
    click.echo(f"listening on {dev.url}", nl=True)
    dev.serve_forever()
