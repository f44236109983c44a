"""``xmargin demo``: the whole story in one command, on an in-process chain.

Deploy, seed traders, let the model predict a price crash, start two keepers, crash the price,
let the keepers liquidate, settle what is left as bad debt, and show who liquidated what and what
happened to the insurance fund and bad debt. No other process is needed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from eth_account import Account
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from web3 import Web3

from bot.config import BotConfig
from bot.liquidator import Liquidator
from protocol_model.seeding import seed_accounts
from devnode.provider import dev_chain_web3
from protocol_model.chain import Sender
from protocol_model.deploy import DeployConfig, deploy_protocol
from protocol_model.errors import ConfigError
from protocol_model.loader import load_state
from protocol_model.scenarios import price_shock
from protocol_model.wad import GWEI, WAD

from . import cli
from .common import get_ctx, handle_errors, json_option, parse_percent



@dataclass
class Keeper:
    name: str
    strategy: str
    bot: Liquidator
    address: str


def parse_shocks(text: str) -> dict[str, int]:
    """'ETH=-25%,BTC-PERP=-15%' -> {"ETH": -25e16, "BTC": -15e16} (WAD fractions, by feed asset)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        asset, sep, move = part.partition("=")
        if not sep or not asset.strip():
            raise ConfigError(f"invalid shock {part!r}: write ASSET=PERCENT, e.g. ETH=-20%")
        out[asset.strip().upper().removesuffix("-PERP")] = parse_percent(move)
    if not out:
        raise ConfigError("no shock given: write e.g. --shock ETH=-20%")
    return out


def _usd(wad: int) -> str:
    return f"{Decimal(wad) / WAD:,.2f}"


def _bad_debt(state: Any) -> int:
    """Sum of negative equity over all traders (USD WAD), at the latest prices."""
    from protocol_model.health import health

    return sum(max(-health(state, acc).equity, 0) for acc in state.accounts.values())


@cli.command()
@click.option("--accounts", "n", type=click.IntRange(10, 2000), default=300, show_default=True, help="traders to seed")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True, help="random seed of the traders")
@click.option("--shock", "shock_text", default="ETH=-25%,BTC=-15%", show_default=True, help="price crash, ASSET=PERCENT,...")
@json_option
@handle_errors
def demo(n: int, seed: int, shock_text: str) -> None:
    """One command: chain, deployment, traders, keepers, a crash, and what happened."""
    ctx = get_ctx()
    console = ctx.console
    quiet = ctx.as_json
    shocks = parse_shocks(shock_text)
    config = DeployConfig()
    known = [f.asset for f in config.feeds]
    for asset in shocks:  # unknown assets fail here, before any work
        if asset not in known:
            raise ConfigError(f"unknown asset {asset!r} in --shock: known price feeds are {', '.join(known)}")
    t0 = time.monotonic()

    def say(text: str) -> None:
        if not quiet:
            console.print(text)

    def rule(text: str) -> None:
        if not quiet:
            console.rule(f"[bold]{text}")

    # 1. chain and deployment ------------------------------------------------
    rule("1. an in-process chain (eth-tester on py-evm) and the protocol")
    w3 = dev_chain_web3()
    owner = Sender.unlocked(w3)
    dep = deploy_protocol(w3, owner, config)
    eng = dep.engine_contract
    say(f"engine {dep.engine} on chain {dep.chain_id}: markets {', '.join(dep.markets)}; "
        f"collateral {', '.join(dep.collaterals)}; house seeded 10,000,000 USDC, insurance fund 100,000 USDC")

    # 2. traders ------------------------------------------------------------------
    rule(f"2. {n} traders with random collateral and leverage (seed {seed})")
    if quiet:
        plans = seed_accounts(w3, dep, owner, n, seed)
    else:
        with Progress(TextColumn("seeding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("seed", total=3 * n)
            plans = seed_accounts(w3, dep, owner, n, seed, progress=lambda d, t: bar.update(task, completed=d))
    addrs = [p.address for p in plans]
    state0 = load_state(w3, dep, addrs)
    say(f"{n} traders: {sum(1 for p in plans if p.leverage_pct >= 800)} of them leveraged 8x or more; "
        f"insurance fund {_usd(state0.insurance_fund)} USD")

    # The model's prediction of the crash, before anything happens on chain.
    prediction = price_shock(state0, shocks)
    pj = prediction.to_json()
    say(f"the model predicts for {shock_text}: {len(prediction.liquidatable)} accounts liquidatable, "
        f"liquidation volume {_usd(prediction.totals.volume)} USD, penalties {_usd(prediction.totals.penalties)} USD, "
        f"projected bad debt {_usd(prediction.totals.bad_debt)} USD "
        f"({_usd(prediction.totals.covered)} covered by the insurance fund, {_usd(prediction.totals.socialised)} socialised)")

    # 3. keepers ------------------------------------------------------------------
    rule("3. two keepers start (each with its own key, database and strategy)")
    tmp = tempfile.TemporaryDirectory(prefix="xmargin-demo-")
    keepers: list[Keeper] = []
    specs = [
        ("keeper-A", "fixed tip 2 gwei, positions only", dict(gas_strategy="fixed", fixed_tip_wei=2 * GWEI), False),
        ("keeper-B", "50% of profit as tip; backstop: also closes bankrupt accounts and settles bad debt",
         dict(gas_strategy="profit_share", profit_share_wad=WAD // 2, backstop=True), True),
    ]
    for name, desc, overrides, collateral in specs:
        acct = Account.create()  # a fresh key; never printed
        w3.eth.wait_for_transaction_receipt(
            w3.eth.send_transaction({"from": owner.address, "to": acct.address, "value": 10 * WAD}))
        if collateral:  # collateral liquidations are paid in quote tokens
            owner.send(dep.quote_contract.functions.mint(acct.address, 2_000_000 * 10**dep.quote_decimals))
        cfg = BotConfig.from_env(environ={}, db_path=str(Path(tmp.name) / f"{name}.sqlite3"), poll_interval_s=0.1,
                                 min_profit_usd_wad=WAD, **overrides)
        # Each keeper has its own connection (its own Web3 and request counters) to the same chain.
        bot = Liquidator(Web3(w3.provider), dep, acct, cfg, collateral_liquidation=collateral)
        bot.start()
        keepers.append(Keeper(name, desc, bot, acct.address))
        say(f"{name} {acct.address}: {desc}")

    for k in keepers:
        k.bot.tick()
    crash_block = w3.eth.block_number

    # 4. the crash ----------------------------------------------------------------
    rule(f"4. the oracle publishes the crash: {shock_text}")
    for asset in dep.feeds:  # every feed publishes (a heartbeat), the shocked ones at their new price
        feed = dep.feed_contract(asset)
        answer = feed.functions.latestRoundData().call()[1]
        move = shocks.get(asset, 0)
        owner.send(feed.functions.set_answer(answer * (WAD + move) // WAD))
    first_liq_block = None
    rounds = 0
    while rounds < 400:
        rounds += 1
        sent = 0
        for k in keepers:
            report = k.bot.tick()
            sent += len([s for s in report.sends if getattr(s, "sent", False)])
        if sent == 0 and all(not k.bot.pending() for k in keepers):
            # Quiet round: one more so that outcomes settle, then stop.
            for k in keepers:
                k.bot.tick()
            break

    # 5. results ------------------------------------------------------------------
    liq = eng.events.Liquidation().get_logs(from_block=crash_block + 1)
    cliq = eng.events.CollateralLiquidation().get_logs(from_block=crash_block + 1)
    by_keeper = {k.address: k for k in keepers}
    rows = []
    for k in keepers:
        mine = [e for e in liq if e.args.liquidator == k.address]
        cmine = [e for e in cliq if e.args.liquidator == k.address]
        volume = sum(abs(e.args.size_delta) * e.args.price // WAD for e in mine)
        reward = sum(e.args.keeper_reward for e in mine) * 10 ** (18 - dep.quote_decimals)
        totals = k.bot.store_totals()
        rows.append({
            "keeper": k.name, "address": k.address, "strategy": k.strategy, "liquidations": len(mine),
            "collateral_liquidations": len(cmine), "volume_usd_wad": str(volume), "rewards_usd_wad": str(reward),
            "won": totals.won if totals else 0, "lost_races": totals.lost if totals else 0,
        })
    if liq:
        first_liq_block = min(e.blockNumber for e in liq)

    state2 = load_state(w3, dep, addrs)

    # Bad debt is settled by the backstop keeper; read its settlements from the chain.
    settled = [
        {"account": e.args.account, "deficit": e.args.deficit, "covered": e.args.covered, "socialised": e.args.socialised}
        for e in eng.events.BadDebtSettled().get_logs(from_block=crash_block + 1)
    ]
    liquidated_accounts = {e.args.account for e in liq} | {e.args.account for e in cliq}
    # An account liquidated without being liquidatable at the crash prices would be a bot bug.
    crashed = state0.copy()
    for asset, move in shocks.items():
        f = crashed.feeds[dep.feed(asset)]
        f.answer = f.answer * (WAD + move) // WAD
    from protocol_model.health import health as _health

    healthy_touched = [a for a in liquidated_accounts if _health(crashed, crashed.account(a)).maint_health >= 0]
    elapsed = time.monotonic() - t0

    summary = {
        "accounts": n, "seed": seed, "shock": shock_text,
        "prediction": pj,
        "keepers": rows,
        "liquidations": [
            {"account": e.args.account, "market": e.args.market, "size_delta": str(e.args.size_delta),
             "price": str(e.args.price), "penalty": str(e.args.penalty), "keeper_reward": str(e.args.keeper_reward),
             "liquidator": by_keeper[e.args.liquidator].name if e.args.liquidator in by_keeper else e.args.liquidator,
             "block": e.blockNumber}
            for e in liq
        ],
        "collateral_liquidations": len(cliq),
        "insurance_fund": {"before": str(state0.insurance_fund), "after": str(state2.insurance_fund)},
        "bad_debt": {"before": str(_bad_debt(state0)), "predicted_by_model": str(prediction.totals.bad_debt),
                     "settled": str(sum(s["deficit"] for s in settled)), "left_after": str(_bad_debt(state2))},
        "settlements": [{k: str(v) for k, v in s.items()} for s in settled],
        "socialised": str(sum(s["socialised"] for s in settled)),
        "house_cash": {"before": str(state0.house.cash), "after": str(state2.house.cash)},
        "blocks": {"crash": crash_block + 1, "first_liquidation": first_liq_block, "last": w3.eth.block_number},
        "seconds": round(elapsed, 1),
        "healthy_accounts_touched": len(healthy_touched),
    }
    if quiet:
        ctx.emit(summary, lambda c: None)
        return

    rule("5. what happened")
    t = Table("keeper", "strategy", "liquidations", "collateral liq.", "volume closed (USD)", "rewards (USD)")
    for r in rows:
        t.add_row(r["keeper"], r["strategy"], str(r["liquidations"]), str(r["collateral_liquidations"]),
                  _usd(int(r["volume_usd_wad"])), _usd(int(r["rewards_usd_wad"])))
    console.print(t)
    t = Table("account", "market", "closed", "price", "penalty (USD)", "by", title=f"liquidations ({len(liq)}; first 12)", title_justify="left")
    names = {m["id"]: name for name, m in dep.markets.items()}
    for e in liq[:12]:
        t.add_row(e.args.account, names.get(e.args.market, str(e.args.market)), f"{Decimal(e.args.size_delta) / WAD:,.4f}",
                  _usd(e.args.price), _usd(e.args.penalty), by_keeper[e.args.liquidator].name if e.args.liquidator in by_keeper else e.args.liquidator)
    console.print(t)
    t = Table("", "before the crash", "after", "the model predicted")
    t.add_row("insurance fund (USD)", _usd(state0.insurance_fund), _usd(state2.insurance_fund), _usd(prediction.insurance_fund_after))
    t.add_row("bad debt settled (USD)", "0.00", _usd(sum(s["deficit"] for s in settled)), _usd(prediction.totals.bad_debt))
    t.add_row("  covered by the insurance fund", "", _usd(sum(s["covered"] for s in settled)), _usd(prediction.totals.covered))
    t.add_row("  socialised to the house", "", _usd(sum(s["socialised"] for s in settled)), _usd(prediction.totals.socialised))
    t.add_row("bad debt left (negative equity)", _usd(_bad_debt(state0)), _usd(_bad_debt(state2)), "")
    t.add_row("house cash (USD)", _usd(state0.house.cash), _usd(state2.house.cash), "")
    console.print(t)
    soc = sum(s["socialised"] for s in settled)
    say(f"{len(settled)} bankrupt accounts settled: {_usd(sum(s['covered'] for s in settled))} USD from the insurance fund, "
        f"{_usd(soc)} USD socialised to the house")
    say(f"blocks: crash in {crash_block + 1}, first liquidation in {first_liq_block}; "
        f"done in {elapsed:.0f} s")
    tmp.cleanup()
