"""``xmargin node``: the embedded local chain as a JSON-RPC server (HTTP, and WebSocket on the same port)."""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

import click

from devnode.node import MAX_BLOCK_TIME
from protocol_model.errors import ConfigError
from protocol_model.wad import ETHER

from . import cli
from .common import EXIT_BAD_INPUT, check_output_folder, fail, get_ctx, handle_errors, json_option

# Dev keys are the node's well-known test keys: a light scrypt keeps the export instant.
DEV_KEYSTORE_SCRYPT_N = 2**12


def _block_time(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_BLOCK_TIME):
        raise click.BadParameter(f"{value} is not a number of seconds in (0, {MAX_BLOCK_TIME:g}]")
    return value


def _key_folder(value: str | None) -> Path | None:
    """The --export-keys folder: checked as every output folder is (a folder, or a new one whose
    parent exists), then created (owner-only) and probed by writing a file."""
    if value is None:
        return None
    path = check_output_folder(value, "--export-keys")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        probe = path / ".probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--export-keys {path} is not writable ({exc.strerror or exc}): give another folder") from None
    return path


def write_dev_keystores(folder: Path, accounts: list[tuple[str, str]]) -> list[str]:
    """Write ``folder/account-N.json`` (encrypted keystores) and ``folder/password`` (mode 0600):
    what ``xmargin bot run --keystore ... --password-file ...`` reads, as it would in production."""
    from bot.keys import write_keystore

    password = secrets.token_hex(16)
    pw = folder / "password"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    written = []
    for i, (_address, key) in enumerate(accounts):
        path = folder / f"account-{i}.json"
        write_keystore(path, key, password, iterations=DEV_KEYSTORE_SCRYPT_N, overwrite=True)
        written.append(str(path))
    return written


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind")
@click.option("--port", type=click.IntRange(0, 65535), default=8545, show_default=True, help="TCP port (0 picks a free one)")
@click.option("--block-time", type=float, default=None, callback=_block_time,
              help=f"seconds between blocks, in (0, {MAX_BLOCK_TIME:g}]; pending transactions wait in a mempool "
                   "ordered by priority fee [default: mine every transaction at once]")
@click.option("--accounts", type=click.IntRange(1, 100), default=10, show_default=True, help="funded dev accounts")
@click.option("--export-keys", type=click.Path(file_okay=False), default=None,
              help="write each dev account's key as an encrypted keystore FOLDER/account-N.json, with the password "
                   "in FOLDER/password (mode 0600), for `xmargin bot run --keystore FOLDER/account-1.json "
                   "--password-file FOLDER/password`; keys are never printed")
@json_option
@handle_errors
def node(host: str, port: int, block_time: float | None, accounts: int, export_keys: str | None) -> None:
    """Run a local chain (eth-tester on py-evm) until Ctrl-C, like anvil: JSON-RPC over HTTP, and over
    WebSocket (with eth_subscribe) on the same port."""
    from devnode import DevNode

    folder = _key_folder(export_keys)   # before anything starts
    dev = DevNode(block_time=block_time, port=port, host=host, accounts=accounts)
    try:
        dev.start()
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port", EXIT_BAD_INPUT)
    keystores = write_dev_keystores(folder, dev.accounts) if folder is not None else []
    balance = int(dev.tester.get_balance(dev.accounts[0][0]))
    if get_ctx().as_json:   # one JSON document (one line, for scripts reading the output), then serve
        click.echo(json.dumps({"chain_id": dev.chain.chain_id, "url": dev.url, "ws_url": dev.ws_url,
                               "block_time": block_time,
                               "accounts": [a for a, _k in dev.accounts], "balance_wei": str(balance),
                               "keystores": keystores, "password_file": str(folder / "password") if folder else None}))
    else:
        click.echo(f"xmargin dev node: chain id {dev.chain.chain_id}")
        click.echo("Available accounts (unlocked on this node):")
        for i, (address, _key) in enumerate(dev.accounts):
            click.echo(f"  ({i}) {address}" + (f"  {balance // ETHER} ETH" if balance else ""))
        if folder is not None:
            click.echo(f"Keystores written to {folder}/account-N.json, password in {folder}/password (mode 0600)")
        click.echo(f"Block time: {f'{block_time} s, fee-priority ordering' if block_time else 'automine'}")
        click.echo(f"listening on {dev.url}", nl=True)
    dev.serve_forever()
