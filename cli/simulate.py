"""``xmargin simulate``: how liquidation strategies fare against each other before money is at risk."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click

from protocol_model.errors import ConfigError

from . import cli
from .common import get_ctx, handle_errors, json_option, parse_percent

# The bots log every lost race and revert; in a simulation those are the point, not news.
_CHATTY = ("bot.liquidator", "bot.txs", "bot.mirror", "bot.scanner", "bot.lifecycle", "devnode",
           "protocol_model.seeding", "simulator.competition")


@contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Raise the bots' loggers to ERROR for the duration (restored afterwards)."""
    saved = {name: logging.getLogger(name).level for name in _CHATTY}
    if enabled:
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def parse_shocks(values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``("ETH=-20%", "BTC=-10%,WETH=5%")`` -> ``(("ETH", -2e17), ...)`` (signed WAD fractions)."""
    out: list[tuple[str, int]] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            asset, sep, change = item.partition("=")
            if not sep or not asset.strip() or not change.strip():
                raise ConfigError(f"invalid --shock {item!r}: expected ASSET=CHANGE, e.g. ETH=-20%")
            out.append((asset.strip().upper(), parse_percent(change)))
    if not out:
        raise ConfigError("give at least one --shock, e.g. --shock ETH=-20%")
    return tuple(out)


@cli.group()
def simulate() -> None:
    """Simulations: liquidators competing for the liquidations of a price shock."""


@simulate.command("competition", context_settings={"ignore_unknown_options": False})
@click.option("--bots", type=int, default=3, show_default=True, help="number of competing bots (K)")
@click.option("--strategy", default="fixed,profit-share:50%,rebid", show_default=True,
              help="comma list cycled over the bots: fixed[:TIP], profit-share[:SHARE], rebid[:TIP], each with an "
                   "optional latency suffix @BLOCKS, e.g. fixed:2gwei,profit-share:50%,rebid@1")
@click.option("--accounts", type=int, default=30, show_default=True, help="seeded traders (N)")
@click.option("--shock", "shocks", multiple=True, required=True,
              help="price move ASSET=CHANGE, e.g. ETH=-20% (repeat it, or comma separate, for several assets)")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the traders (reproducible runs)")
@click.option("--blocks", type=int, default=10, show_default=True, help="blocks mined after the shock (B)")
@click.option("--mode", type=click.Choice(["onchain", "offchain"]), default="onchain", show_default=True,
              help="onchain: real bots on an in-process dev node; offchain: the same agents on the exact model")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="write a PNG: profit by strategy, and the tip share as the number of competitors grows (1..8)")
@json_option
@handle_errors
def competition(bots: int, strategy: str, accounts: int, shocks: tuple[str, ...], seed: int, blocks: int,
                mode: str, plot_path: str | None) -> None:
    """Run K liquidation bots against each other after a price shock and report who won what.

    Per bot: liquidations won, rewards, gas of successful and of reverted transactions, net profit;
    per run: tips paid to the block producer (and their share of all rewards, tip_share), bad debt,
    blocks until the last liquidation. Latency @L: the bot polls every L+1 blocks, L blocks late
    for the shock. Example:

    \b
      xmargin simulate competition --bots 4 --accounts 30 --seed 7 \\
        --strategy fixed:2gwei,profit-share:50%,rebid@1 \\
        --shock ETH=-15% --shock BTC=-15% --json --plot out.png
    """
    from simulator.competition.agents import Scenario, parse_strategies
    from simulator.competition.offchain import Initial, run_offchain, sweep
    from simulator.competition.report import plot

    ctx = get_ctx()
    click_ctx = click.get_current_context()
    verbose = int(click_ctx.find_root().meta.get("verbose", 0) or 0)
    scenario = Scenario(accounts, seed, parse_shocks(shocks), blocks)
    agents = parse_strategies(strategy, bots)
    gas_table: dict[str, int] = {}
    initial = None
    with _quiet(verbose == 0):
        if mode == "onchain":
            from simulator.competition.onchain import run_onchain

            report = run_onchain(scenario, agents)
            gas_table = report.gas_table
        else:
            initial = Initial.build(scenario.accounts, scenario.seed)
            report = run_offchain(scenario, agents, initial=initial)
        if plot_path:
            # The off-chain sweep prices gas with the table this run measured, when it ran on chain.
            report.sweep = sweep(scenario, strategy, range(1, 9), gas_table=gas_table, initial=initial)
            out = plot(report, plot_path)
            click.echo(f"wrote {out}", err=True)
    ctx.emit(report.to_json(), report.render)
