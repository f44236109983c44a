"""``xmargin simulate``: how liquidation strategies fare against each other before money is at risk."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import click
from rich.console import Console

from protocol_model.errors import ConfigError

from . import cli
from .common import (check_output_folder, check_writable_file, deployment_option, get_ctx, handle_errors, json_option,
                     parse_percent, parse_shocks, progress_bar, rpc_option)

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


@cli.group()
def simulate() -> None:
    """Simulations: liquidators competing for a shock's liquidations; Monte Carlo stress of crashes."""


# Bounds of the competition's inputs (documented in --help): beyond them a run takes hours or
# gigabytes, not a different answer.
MAX_BOTS = 64
MAX_BLOCKS = 1000
MAX_ACCOUNTS = 2000
DEFAULT_SHOCK = "ETH=-20%"


@simulate.command("competition", context_settings={"ignore_unknown_options": False})
@click.option("--bots", type=click.IntRange(1, MAX_BOTS), default=3, show_default=True, help="number of competing bots (K)")
@click.option("--strategy", default="fixed,profit-share:50%,rebid", show_default=True,
              help="comma list cycled over the bots: fixed[:TIP], profit-share[:SHARE], rebid[:TIP], each with an "
                   "optional latency suffix @BLOCKS, e.g. fixed:2gwei,profit-share:50%,rebid@1; and backrun[:TIP]: "
                   "liquidates in the price update's own block with the update's tip (backrun:TIP: with TIP, "
                   "off-chain only), then tips TIP (default 1gwei)")
@click.option("--accounts", type=click.IntRange(1, MAX_ACCOUNTS), default=30, show_default=True, help="seeded traders (N)")
@click.option("--shock", "shocks", multiple=True, default=(DEFAULT_SHOCK,), show_default=True,
              help="price move ASSET=CHANGE, e.g. ETH=-20% (repeat it, or comma separate, for several assets)")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True,
              help="seed of the traders (reproducible runs)")
@click.option("--blocks", type=click.IntRange(1, MAX_BLOCKS), default=10, show_default=True,
              help="blocks mined after the price update's block (B)")
@click.option("--oracle-tip", default="1gwei", show_default=True,
              help="priority fee of the shock's price updates (pending in the pool, competing in the block ordering)")
@click.option("--mode", type=click.Choice(["offchain", "onchain"]), default="offchain", show_default=True,
              help="offchain: the bots' agents on the exact model (about a second); onchain: real bots on an "
                   "in-process dev node (tens of seconds, progress on the terminal)")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="write a PNG: profit by strategy, and the tip share as the number of competitors grows (1..8); "
                   "its folder must exist")
@json_option
@handle_errors
def competition(bots: int, strategy: str, accounts: int, shocks: tuple[str, ...], seed: int, blocks: int,
                oracle_tip: str, mode: str, plot_path: str | None) -> None:
    """Run K liquidation bots against each other after a price shock and report who won what.

    Per bot: liquidations won, rewards, gas of successful and of reverted transactions, net profit;
    per run: tips paid to the block producer (and their share of all rewards, tip_share), bad debt,
    blocks until the last liquidation, the share of liquidations in the same block as the price
    update (only backrunners get there) and the backruns that landed before the update, with their
    gas. Latency @L: the bot polls every L+1 blocks, L blocks late for the shock. Example:

    \b
      xmargin simulate competition --bots 4 --accounts 30 --seed 7 \\
        --strategy fixed:2gwei,profit-share:50%,rebid@1 \\
        --shock ETH=-15% --shock BTC=-15% --json --plot out.png
    """
    from simulator.competition.agents import Scenario, parse_strategies, parse_wei
    from simulator.competition.offchain import Initial, run_offchain, sweep
    from simulator.competition.report import plot

    ctx = get_ctx()
    click_ctx = click.get_current_context()
    verbose = int(click_ctx.find_root().meta.get("verbose", 0) or 0)
    scenario = Scenario(accounts, seed, parse_shocks(shocks), blocks, parse_wei(oracle_tip, "--oracle-tip"))
    agents = parse_strategies(strategy, bots)
    if plot_path:
        check_writable_file(plot_path, "--plot")   # before the run, not after it
    gas_table: dict[str, int] = {}
    initial = None
    with _quiet(verbose == 0):
        if mode == "onchain":
            from simulator.competition.onchain import run_onchain

            # Progress of the tens of seconds on chain: a transient status line on a terminal only.
            with Console(stderr=True).status("on-chain competition: starting") as status:
                report = run_onchain(scenario, agents, progress=lambda text: status.update(f"on-chain competition: {text}"))
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


def _per_feed(value: str, what: str) -> tuple[tuple[str, str], ...] | str:
    """``80%`` (every feed) or ``ETH=80%,BTC=60%``."""
    if "=" not in value:
        return value
    out = []
    for item in value.split(","):
        name, _, v = item.partition("=")
        if not name.strip() or not v.strip():
            raise ConfigError(f"invalid {what} {item!r}: expected ASSET=VALUE, e.g. ETH=80%")
        out.append((name.strip(), v.strip()))
    return tuple(out)


def _fraction(text: str, what: str) -> float:
    """'80%' or '0.8' -> 0.8 (a float: price paths are drawn in floating point)."""
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r}: expected a number such as 0.8 or 80%") from None


@simulate.command("stress")
@click.option("--accounts", type=int, default=1000, show_default=True, help="seeded traders (ignored with --rpc or --deployment)")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of the traders and of the price paths")
@click.option("--paths", "n_paths", type=int, default=200, show_default=True, help="price paths (Monte Carlo samples)")
@click.option("--steps", type=int, default=28, show_default=True, help="steps per path")
@click.option("--horizon", type=float, default=7.0, show_default=True, help="days a path covers (a path file's too)")
@click.option("--vol", default="100%", show_default=True, help="annualised volatility: one for every feed, or ETH=80%,BTC=60%")
@click.option("--corr", default="0.8", show_default=True, help="pairwise correlation of the feeds' moves")
@click.option("--jump-rate", type=float, default=10.0, show_default=True, help="market-wide crash events per year")
@click.option("--jump-mean", default="-15%", show_default=True, help="mean log move of a feed in a crash event")
@click.option("--jump-std", default="5%", show_default=True, help="standard deviation of that move")
@click.option("--shock", "shocks", multiple=True, help="a deterministic move ASSET=CHANGE at --shock-step, e.g. ETH=-25%")
@click.option("--shock-step", type=int, default=1, show_default=True, help="the step the shocks happen at")
@click.option("--path-file", type=click.Path(dir_okay=False),
              help="CSV of prices per step instead of generated paths (header e.g. step,ETH,BTC; optional path column)")
@click.option("--keeper", type=click.Choice(["bot", "reference"]), default="bot", show_default=True,
              help="bot: the live bot's planner (gas, minimum profit, backstop); reference: the model's cascade keeper")
@click.option("--latency", type=int, default=0, show_default=True, help="steps an account stays liquidatable before keepers act")
@click.option("--gas-gwei", type=float, default=30.0, show_default=True, help="base fee (gwei)")
@click.option("--tip-gwei", type=float, default=1.0, show_default=True, help="the keepers' priority fee (gwei)")
@click.option("--min-profit", type=float, default=1.0, show_default=True, help="the keepers' minimum profit per liquidation (USD)")
@click.option("--backstop/--no-backstop", default=True, show_default=True,
              help="the operator's keeper also closes bankrupt accounts whose reward does not pay the gas (at a "
                   "loss) and settles bad debt no liquidation settled")
@click.option("--impact", default="1%", show_default=True, help="price impact per 1,000,000 USD of net notional liquidated")
@click.option("--max-rounds", type=int, default=20, show_default=True, help="cascade rounds per step")
@click.option("--sweep", "sweeps", multiple=True,
              help="NAME=LO:HI:STEP, repeatable (the grid of all): imf, mmf, liquidation_fee, keeper_share, maint_weight, "
                   "liquidation_discount, insurance (USD), latency (steps)")
@click.option("--target", default="var99<1%", show_default=True,
              help="what a sweep's recommendation must meet: METRIC<LIMIT, METRIC var95|var99|cvar95|cvar99|mean "
                   "(as % of open interest) or p_depleted")
@click.option("--workers", type=int, help="Ray workers (tasks in flight) [default: the machine's cores]")
@click.option("--ray-address", help="a Ray cluster's address (default: Ray in this machine, on 127.0.0.1; "
                                     "its ports listen on every interface while it runs: docs/protocol.md)")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="write PNG figures into this directory")
@rpc_option
@deployment_option
@json_option
@handle_errors
def stress(accounts: int, seed: int, n_paths: int, steps: int, horizon: float, vol: str, corr: str, jump_rate: float,
           jump_mean: str, jump_std: str, shocks: tuple[str, ...], shock_step: int, path_file: str | None, keeper: str,
           latency: int, gas_gwei: float, tip_gwei: float, min_profit: float, backstop: bool, impact: str,
           max_rounds: int, sweeps: tuple[str, ...], target: str, workers: int | None, ray_address: str | None,
           plot_dir: str | None) -> None:
    """Monte Carlo of crashes over the exact model, on Ray: bad debt VaR/CVaR, insurance fund depletion,
    socialised loss, liquidations, keepers; optionally a parameter sweep with a recommendation.

    The population is seeded (--accounts N --seed S) or, with --rpc/--deployment on the command line,
    loaded from a chain (XMARGIN_RPC_URL alone does not switch it: it names the node for the other commands).
    Example:

    \b
      xmargin simulate stress --accounts 1000 --paths 200 --seed 1
      xmargin simulate stress --paths 100 --sweep imf=0.08:0.14:0.02 --sweep liquidation_fee=0.01:0.03:0.01 --plot out/
    """
    from protocol_model.wad import GWEI, WAD
    from simulator.stress.engine import KeeperSettings
    from simulator.stress.paths import PathModel, load_path_file
    from simulator.stress.runner import (check_reachable, default_workers, ensure_ray, grid, import_ray, parse_sweep,
                                         parse_target)
    from simulator.stress.study import chain_state, feed_map, gas_feed, run_study, seeded_state

    ctx = get_ctx()
    # Every input is checked before anything slow starts.
    for name, value, low in (("--paths", n_paths, 1), ("--steps", steps, 1), ("--accounts", accounts, 1),
                             ("--max-rounds", max_rounds, 1), ("--latency", latency, 0)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if not horizon > 0:
        raise ConfigError(f"--horizon must be > 0 days, got {horizon}")
    if min(gas_gwei, tip_gwei, min_profit) < 0:
        raise ConfigError("--gas-gwei, --tip-gwei and --min-profit must be >= 0")
    if plot_dir:
        check_output_folder(plot_dir, "--plot")
    sweep_list = [parse_sweep(s) for s in sweeps]
    goal = parse_target(target)
    shock_list = parse_shocks(shocks) if shocks else ()
    impact_wad = parse_percent(impact)
    if impact_wad < 0:
        raise ConfigError(f"--impact must be >= 0, got {impact}")
    vols = _per_feed(vol, "--vol")
    corr_f = _fraction(corr, "--corr")
    jm, js = _fraction(jump_mean, "--jump-mean"), _fraction(jump_std, "--jump-std")
    import_ray()   # exit 2 with the install hint before any work
    if ray_address:
        check_reachable(ray_address)   # exit 3 at once: Ray itself retries for minutes

    if ctx.on_command_line & {"rpc", "deployment_path"} or ctx.w3 is not None or ctx.deployment is not None:
        state = chain_state(ctx.chain(), ctx.dep())
        population = f"loaded from the chain at block {state.block}"
    else:
        state = seeded_state(accounts, seed)
        population = f"seeded, seed {seed}"
    feeds = tuple(state.feeds)
    if path_file:
        paths: Any = load_path_file(path_file, state)
        if shocks:
            raise ConfigError("--shock applies to generated paths; put the moves in the path file instead")
        n_paths = len(paths.paths)
    else:
        if isinstance(vols, str):
            per_feed = {f: _fraction(vols, "--vol") for f in feeds}
        else:
            per_feed = {f: 0.0 for f in feeds}
            given = feed_map(state, vols, "--vol")
            missing = [f for f in feeds if f not in given]
            if missing:
                raise ConfigError(f"--vol names some feeds only: give every asset, or one value for all")
            per_feed.update({f: _fraction(v, "--vol") for f, v in given.items()})
        paths = PathModel(feeds, tuple(state.feeds[f].answer for f in feeds), tuple(per_feed[f] for f in feeds),
                          steps=steps, horizon_days=horizon, corr=corr_f, jump_rate=jump_rate, jump_mean=jm,
                          jump_std=js, shocks=tuple(feed_map(state, shock_list, "--shock").items()), shock_step=shock_step)
    step_seconds = max(1, int(horizon * 86400 / len(paths.answers(seed, 0))))
    keepers = KeeperSettings(
        policy=keeper, latency=latency, base_fee_wei=int(gas_gwei * GWEI), tip_wei=int(tip_gwei * GWEI),
        min_profit_usd_wad=int(Decimal(str(min_profit)) * WAD), backstop=backstop, impact_per_notional=impact_wad,
        max_rounds=max_rounds, step_seconds=step_seconds, gas_feed=gas_feed(state),
    )
    n_workers = workers or default_workers()
    ensure_ray(n_workers, ray_address)
    total = n_paths * (len(grid(sweep_list)) if sweep_list else 1)
    with progress_bar("stress", Console(stderr=True)) as bar:
        task = bar.add_task("paths", total=total)
        report = run_study(state, population, paths, n_paths, seed, keepers, sweep_list, goal, n_workers, ray_address,
                           progress=lambda k: bar.advance(task, k))
    if plot_dir:
        for written in report.plot(plot_dir):
            click.echo(f"wrote {written}", err=True)
    ctx.emit(report.to_json(), report.render)

