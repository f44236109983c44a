"""``xmargin deploy``: deploy the whole protocol and write the deployment file."""

from __future__ import annotations

from pathlib import Path

import click

from protocol_model.deploy import DeployConfig, deploy_protocol, with_max_price_age
from protocol_model.errors import ConfigError
from protocol_model.wad import MAX_PRICE_AGE

from . import cli
from .common import DEFAULT_DEPLOYMENT, common_options, get_ctx, handle_errors


@cli.command()
@common_options
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="where to write the deployment file [default: --deployment, or deployment.json]")
@click.option("--keystore", type=click.Path(dir_okay=False), default=None,
              help="encrypted keystore of the deployer (password from --password-file or XMARGIN_KEYSTORE_PASSWORD); "
                   "without it: XMARGIN_PRIVATE_KEY, else the node's first unlocked account")
@click.option("--password-file", type=click.Path(dir_okay=False), default=None, help="file holding the keystore password")
@click.option("--max-price-age", type=click.IntRange(1, MAX_PRICE_AGE), default=None,
              help=f"seconds a price stays usable, for every feed, 1..{MAX_PRICE_AGE} "
                   "[default: each feed's own, see docs/protocol.md]")
@click.option("--force", is_flag=True, default=False,
              help="overwrite an existing deployment file (a bot database of the old deployment is then refused)")
@handle_errors
def deploy(out: str | None, keystore: str | None, password_file: str | None, max_price_age: int | None,
           force: bool) -> None:
    """Deploy tokens, feeds, engine and lens; list ETH-PERP, BTC-PERP, WETH, WBTC; seed the house."""
    ctx = get_ctx()
    path = Path(out or ctx.deployment_path or DEFAULT_DEPLOYMENT)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists (an earlier deployment): give --force to replace it, or another --out")
    _check_writable(path)  # before spending gas on a deployment whose file could not be written
    w3 = ctx.chain()
    sender = ctx.sender(keystore, password_file)
    if int(w3.eth.get_balance(sender.address)) == 0:
        raise ConfigError(f"the deployer {sender.address} has no ETH to pay gas: fund it, or leave "
                          "XMARGIN_PRIVATE_KEY unset to deploy from the node's first account")
    config = DeployConfig() if max_price_age is None else with_max_price_age(DeployConfig(), max_price_age)
    dep = deploy_protocol(w3, sender, config)
    try:
        dep.save(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the deployment file {path}: {exc.strerror or exc}; choose another --out") from None
    ctx.deployment = dep
    data = dep.to_json() | {"file": str(path)}

    def human(console) -> None:  # type: ignore[no-untyped-def]
        console.print(f"[bold]deployed xmargin[/] on chain {dep.chain_id} at block {dep.block} by {dep.owner}")
        console.print(f"  engine  {dep.engine}")
        console.print(f"  lens    {dep.lens}")
        console.print(f"  {dep.quote_symbol:<7} {dep.quote}  ({dep.quote_decimals} decimals)")
        for sym, c in dep.collaterals.items():
            console.print(f"  {sym:<7} {c['token']}  ({c['decimals']} decimals, feed {c['feed']})")
        for name, m in dep.markets.items():
            console.print(f"  {name:<9} market {m['id']}, feed {m['feed']}")
        console.print(f"wrote {path}")

    ctx.emit(data, human)


def _check_writable(path: Path) -> None:
    """The file's folder exists and takes a file (no folders are created)."""
    if path.is_dir():
        raise ConfigError(f"cannot write the deployment file {path}: it is a folder; choose another --out")
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write the deployment file {path}: folder {path.parent} does not exist; "
                          "choose another --out")
    try:
        probe = path.parent / f".{path.name}.probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write the deployment file {path}: {exc.strerror or exc}; choose another --out") from None
