"""``xmargin demo``: the whole story in one command, on an in-process chain.

Deploy, seed traders, let the model predict a price crash, start two keepers, crash the price,
let the keepers liquidate, settle what is left as bad debt, and show who liquidated what and what
happened to the insurance fund and bad debt. No other process is needed.

The command is a sequence of named steps, each a small function: :func:`deploy`, :func:`seed`,
:func:`predict`, :func:`start_keepers`, :func:`crash`, :func:`run_keepers`, :func:`outcome` (what
happened, as the JSON summary) and :func:`report` (the same for people).
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
from rich.console import Console
from rich.table import Table
from web3 import Web3

from bot.config import BotConfig
from bot.liquidator import Liquidator
from devnode.provider import dev_chain_web3
from protocol_model.chain import Sender
from protocol_model.deploy import DeployConfig, Deployment, deploy_protocol
from protocol_model.errors import ConfigError
from protocol_model.health import health
from protocol_model.loader import load_state
from protocol_model.scenarios import price_shock
from protocol_model.seeding import TraderPlan, seed_accounts
from protocol_model.state import ProtocolState
from protocol_model.wad import GWEI, WAD

from . import cli
from .common import get_ctx, handle_errors, json_option, parse_shocks, progress_bar

MAX_ROUNDS = 400   # keeper rounds after the crash; the demo's markets are quiet long before


@dataclass
class Out:
    """Where the story goes: the console, or nowhere with --json (then only the summary is printed)."""

    console: Console
    quiet: bool

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def rule(self, text: str) -> None:
        if not self.quiet:
            self.console.rule(f"[bold]{text}")


@dataclass
class Stage:
    """The chain, its owner and the deployment every step works on."""

    w3: Web3
    owner: Sender
    dep: Deployment


@dataclass
class Keeper:
    name: str
    strategy: str
    bot: Liquidator
    address: str


def _usd(wad: int) -> str:
    return f"{Decimal(wad) / WAD:,.2f}"


def _bad_debt(state: ProtocolState) -> int:
    """Sum of negative equity over all traders (USD WAD), at the latest prices."""
    return sum(max(-health(state, acc).equity, 0) for acc in state.accounts.values())


def _check_assets(shocks: dict[str, int], config: DeployConfig) -> None:
    known = [f.asset for f in config.feeds]
    for asset in shocks:
        if asset not in known:
            raise ConfigError(f"unknown asset {asset!r} in --shock: known price feeds are {', '.join(known)}")


# ------------------------------------------------------------------ the steps


def deploy(out: Out, config: DeployConfig) -> Stage:
    """1. An in-process chain and the protocol on it."""
    out.rule("1. an in-process chain (eth-tester on py-evm) and the protocol")
    w3 = dev_chain_web3()
    owner = Sender.unlocked(w3)
    dep = deploy_protocol(w3, owner, config)
    out.say(f"engine {dep.engine} on chain {dep.chain_id}: markets {', '.join(dep.markets)}; "
            f"collateral {', '.join(dep.collaterals)}; house seeded 10,000,000 USDC, insurance fund 100,000 USDC")
    return Stage(w3, owner, dep)


def seed(out: Out, stage: Stage, n: int, seed_: int) -> tuple[list[TraderPlan], ProtocolState]:
    """2. ``n`` traders with random collateral and leverage; returns their plans and the state after."""
    out.rule(f"2. {n} traders with random collateral and leverage (seed {seed_})")
    if out.quiet:
        plans = seed_accounts(stage.w3, stage.dep, stage.owner, n, seed_)
    else:
        with progress_bar("seeding", out.console) as bar:
            task = bar.add_task("seed", total=3 * n)
            plans = seed_accounts(stage.w3, stage.dep, stage.owner, n, seed_,
                                  progress=lambda d, t: bar.update(task, completed=d))
    state = load_state(stage.w3, stage.dep, [p.address for p in plans])
    out.say(f"{n} traders: {sum(1 for p in plans if p.leverage_pct >= 800)} of them leveraged 8x or more; "
            f"insurance fund {_usd(state.insurance_fund)} USD")
    return plans, state


def predict(out: Out, state: ProtocolState, shocks: dict[str, int], shock_text: str) -> Any:
    """The model's prediction of the crash, before anything happens on chain."""
    prediction = price_shock(state, shocks)
    t = prediction.totals
    out.say(f"the model predicts for {shock_text}: {len(prediction.liquidatable)} accounts liquidatable, "
            f"liquidation volume {_usd(t.volume)} USD, penalties {_usd(t.penalties)} USD, "
            f"projected bad debt {_usd(t.bad_debt)} USD "
            f"({_usd(t.covered)} covered by the insurance fund, {_usd(t.socialised)} socialised)")
    return prediction


KEEPERS = (
    # name, what it does, BotConfig overrides, whether it also liquidates collateral (and closes bankrupt accounts)
    ("keeper-A", "fixed tip 2 gwei, positions only", dict(gas_strategy="fixed", fixed_tip_wei=2 * GWEI), False),
    ("keeper-B", "50% of profit as tip; backstop: also closes bankrupt dust at a loss and settles bad debt",
     dict(gas_strategy="profit_share", profit_share_wad=WAD // 2, backstop=True), True),
)


def start_keepers(out: Out, stage: Stage, db_dir: str) -> list[Keeper]:
    """3. Two keepers, each with a fresh funded key (never printed), its own database and strategy."""
    out.rule("3. two keepers start (each with its own key, database and strategy)")
    w3, owner, dep = stage.w3, stage.owner, stage.dep
    keepers: list[Keeper] = []
    for name, desc, overrides, collateral in KEEPERS:
        acct = Account.create()
        w3.eth.wait_for_transaction_receipt(
            w3.eth.send_transaction({"from": owner.address, "to": acct.address, "value": 10 * WAD}))
        if collateral:  # collateral liquidations are paid in quote tokens
            owner.send(dep.quote_contract.functions.mint(acct.address, 2_000_000 * 10**dep.quote_decimals))
        cfg = BotConfig.from_env(environ={}, db_path=str(Path(db_dir) / f"{name}.sqlite3"), poll_interval_s=0.1,
                                 min_profit_usd_wad=WAD, **overrides)
        # Each keeper has its own connection (its own Web3 and request counters) to the same chain.
        bot = Liquidator(Web3(w3.provider), dep, acct, cfg, collateral_liquidation=collateral)
        bot.start()
        keepers.append(Keeper(name, desc, bot, acct.address))
        out.say(f"{name} {acct.address}: {desc}")
    for k in keepers:   # each keeper has seen the chain before the crash
        k.bot.tick()
    return keepers


def crash(out: Out, stage: Stage, shocks: dict[str, int], shock_text: str) -> int:
    """4. The oracle publishes the crash; every feed publishes (a heartbeat), the shocked ones at their
    new price. Returns the last block before the crash."""
    out.rule(f"4. the oracle publishes the crash: {shock_text}")
    before = stage.w3.eth.block_number
    for asset in stage.dep.feeds:
        feed = stage.dep.feed_contract(asset)
        answer = feed.functions.latestRoundData().call()[1]
        stage.owner.send(feed.functions.set_answer(answer * (WAD + shocks.get(asset, 0)) // WAD))
    return before


def run_keepers(keepers: list[Keeper], max_rounds: int = MAX_ROUNDS) -> None:
    """The keepers take turns until a round sends nothing and nothing is pending, then one more round
    so that the last outcomes are recorded."""
    for _ in range(max_rounds):
        sent = 0
        for k in keepers:
            report = k.bot.tick()
            sent += len([s for s in report.sends if getattr(s, "sent", False)])
        if sent == 0 and all(not k.bot.pending() for k in keepers):
            for k in keepers:
                k.bot.tick()
            return


def outcome(stage: Stage, keepers: list[Keeper], addrs: list[str], state0: ProtocolState, prediction: Any,
            shocks: dict[str, int], crash_block: int) -> dict[str, Any]:
    """5. What happened, read from the chain's events and state: the JSON summary of the demo."""
    w3, dep, eng = stage.w3, stage.dep, stage.dep.engine_contract
    liq = eng.events.Liquidation().get_logs(from_block=crash_block + 1)
    cliq = eng.events.CollateralLiquidation().get_logs(from_block=crash_block + 1)
    by_keeper = {k.address: k.name for k in keepers}
    rows = []
    for k in keepers:
        mine = [e for e in liq if e.args.liquidator == k.address]
        totals = k.bot.store_totals()
        rows.append({
            "keeper": k.name, "address": k.address, "strategy": k.strategy, "liquidations": len(mine),
            "collateral_liquidations": len([e for e in cliq if e.args.liquidator == k.address]),
            "volume_usd_wad": str(sum(abs(e.args.size_delta) * e.args.price // WAD for e in mine)),
            "rewards_usd_wad": str(sum(e.args.keeper_reward for e in mine) * 10 ** (18 - dep.quote_decimals)),
            "won": totals.won if totals else 0, "lost_races": totals.lost if totals else 0,
        })
    state2 = load_state(w3, dep, addrs)
    # Bad debt is settled by the backstop keeper; read its settlements from the chain.
    settled = [
        {"account": e.args.account, "deficit": e.args.deficit, "covered": e.args.covered, "socialised": e.args.socialised}
        for e in eng.events.BadDebtSettled().get_logs(from_block=crash_block + 1)
    ]
    # An account liquidated without being liquidatable at the crash prices would be a bot bug.
    crashed = state0.copy()
    for asset, move in shocks.items():
        f = crashed.feeds[dep.feed(asset)]
        f.answer = f.answer * (WAD + move) // WAD
    liquidated = {e.args.account for e in liq} | {e.args.account for e in cliq}
    scale = 10 ** (18 - dep.quote_decimals)
    subsidised = [e for e in liq if e.args.keeper_reward * scale > e.args.charged]
    healthy_touched = [a for a in liquidated if health(crashed, crashed.account(a)).maint_health >= 0]
    return {
        "prediction": prediction.to_json(),
        "keepers": rows,
        "liquidations": [
            {"account": e.args.account, "market": e.args.market, "size_delta": str(e.args.size_delta),
             "price": str(e.args.price), "penalty": str(e.args.penalty), "charged": str(e.args.charged),
             "keeper_reward": str(e.args.keeper_reward),
             "liquidator": by_keeper.get(e.args.liquidator, e.args.liquidator), "block": e.blockNumber}
            for e in liq
        ],
        "collateral_liquidations": len(cliq),
        # Keepers are paid keeper_share of the full penalty also for a bankrupt account: what the
        # account cannot pay of the reward, the insurance fund (then the house) pays.
        "keeper_pay_for_bankrupt": {
            "liquidations": len(subsidised),
            "rewards_usd_wad": str(sum(e.args.keeper_reward * scale for e in subsidised)),
            "paid_by_fund_usd_wad": str(sum(e.args.keeper_reward * scale - e.args.charged for e in subsidised)),
        },
        "insurance_fund": {"before": str(state0.insurance_fund), "after": str(state2.insurance_fund)},
        "bad_debt": {"before": str(_bad_debt(state0)), "predicted_by_model": str(prediction.totals.bad_debt),
                     "settled": str(sum(s["deficit"] for s in settled)), "left_after": str(_bad_debt(state2))},
        "settlements": [{k: str(v) for k, v in s.items()} for s in settled],
        "socialised": str(sum(s["socialised"] for s in settled)),
        "house_cash": {"before": str(state0.house.cash), "after": str(state2.house.cash)},
        "blocks": {"crash": crash_block + 1, "first_liquidation": min((e.blockNumber for e in liq), default=None),
                   "last": w3.eth.block_number},
        "healthy_accounts_touched": len(healthy_touched),
    }


def report(out: Out, summary: dict[str, Any], stage: Stage, prediction: Any) -> None:
    """5. The summary for people: per keeper, the first liquidations, the fund and the bad debt."""
    out.rule("5. what happened")
    console = out.console
    t = Table("keeper", "strategy", "liquidations", "collateral liq.", "volume closed (USD)", "rewards (USD)")
    for r in summary["keepers"]:
        t.add_row(r["keeper"], r["strategy"], str(r["liquidations"]), str(r["collateral_liquidations"]),
                  _usd(int(r["volume_usd_wad"])), _usd(int(r["rewards_usd_wad"])))
    console.print(t)
    liq = summary["liquidations"]
    names = {m["id"]: name for name, m in stage.dep.markets.items()}
    t = Table("account", "market", "closed", "price", "penalty (USD)", "by",
              title=f"liquidations ({len(liq)}; first 12)", title_justify="left")
    for e in liq[:12]:
        t.add_row(e["account"], names.get(e["market"], str(e["market"])), f"{Decimal(int(e['size_delta'])) / WAD:,.4f}",
                  _usd(int(e["price"])), _usd(int(e["penalty"])), e["liquidator"])
    console.print(t)
    fund, bad, house = summary["insurance_fund"], summary["bad_debt"], summary["house_cash"]
    settled = summary["settlements"]
    covered = sum(int(s["covered"]) for s in settled)
    socialised = int(summary["socialised"])
    p = prediction.totals
    t = Table("", "before the crash", "after", "the model predicted")
    t.add_row("insurance fund (USD)", _usd(int(fund["before"])), _usd(int(fund["after"])), _usd(prediction.insurance_fund_after))
    t.add_row("bad debt settled (USD)", "0.00", _usd(int(bad["settled"])), _usd(p.bad_debt))
    t.add_row("  covered by the insurance fund", "", _usd(covered), _usd(p.covered))
    t.add_row("  socialised to the house", "", _usd(socialised), _usd(p.socialised))
    t.add_row("bad debt left (negative equity)", _usd(int(bad["before"])), _usd(int(bad["left_after"])), "")
    t.add_row("house cash (USD)", _usd(int(house["before"])), _usd(int(house["after"])), "")
    console.print(t)
    pay = summary["keeper_pay_for_bankrupt"]
    out.say(f"keepers paid by the insurance fund for bankrupt accounts: {pay['liquidations']} liquidations earned "
            f"{_usd(int(pay['rewards_usd_wad']))} USD, {_usd(int(pay['paid_by_fund_usd_wad']))} USD of it paid by the "
            "insurance fund (then the house) where the account could not")
    out.say(f"{len(settled)} bankrupt accounts settled: {_usd(covered)} USD from the insurance fund, "
            f"{_usd(socialised)} USD socialised to the house")
    b = summary["blocks"]
    out.say(f"blocks: crash in {b['crash']}, first liquidation in {b['first_liquidation']}; "
            f"done in {summary['seconds']:.0f} s")


# ------------------------------------------------------------------ the command


@cli.command()
@click.option("--accounts", "n", type=click.IntRange(10, 2000), default=300, show_default=True, help="traders to seed")
@click.option("--seed", "seed_", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True,
              help="random seed of the traders")
@click.option("--shock", "shock_text", default="ETH=-25%,BTC=-15%", show_default=True, help="price crash, ASSET=PERCENT,...")
@json_option
@handle_errors
def demo(n: int, seed_: int, shock_text: str) -> None:
    """One command: chain, deployment, traders, keepers, a crash, and what happened."""
    ctx = get_ctx()
    out = Out(ctx.console, ctx.as_json)
    shocks = dict(parse_shocks((shock_text,)))
    config = DeployConfig()
    _check_assets(shocks, config)   # unknown assets fail here, before any work
    t0 = time.monotonic()
    stage = deploy(out, config)
    plans, state0 = seed(out, stage, n, seed_)
    prediction = predict(out, state0, shocks, shock_text)
    with tempfile.TemporaryDirectory(prefix="xmargin-demo-") as db_dir:
        keepers = start_keepers(out, stage, db_dir)
        crash_block = crash(out, stage, shocks, shock_text)
        run_keepers(keepers)
        summary = {"accounts": n, "seed": seed_, "shock": shock_text,
                   **outcome(stage, keepers, [p.address for p in plans], state0, prediction, shocks, crash_block)}
        for k in keepers:
            k.bot.close()
    summary["seconds"] = round(time.monotonic() - t0, 1)
    if out.quiet:
        ctx.emit(summary, lambda c: None)
    else:
        report(out, summary, stage, prediction)
