"""Backstop mode end to end: what still needs the operator once keepers are always paid.

Each node of ``tests/nodes.py`` over HTTP (the dev node and anvil, as in test_bot_e2e.py), one
deployment with 30 traders and two hand-made ones. A deep crash makes many traders bankrupt
(equity < 0). Since keepers are paid ``keeper_share`` of the full penalty also for a bankrupt
account (the insurance fund, then the house, pays what the account cannot; SPEC 6), a plain
profit-seeking bot closes every one of them whose reward covers its gas and minimum profit, and
the engine settles their bad debt in the same call (automatic settlement).

Two things are left for the operator's keeper (``backstop=True``):

* DUST: a bankrupt account whose position is so small that its reward (1 % of about 44 USD) is
  below the plain bot's minimum profit (1 USD): the backstop closes it at a loss, and the
  liquidation settles its bad debt;
* SELF: a bankrupt trader who closed his own position (a reduce-only trade is always allowed):
  nothing is left to liquidate, so no automatic settlement happens; the backstop sends
  ``settle_bad_debt``.

The oracles are the engine's own views and its events (each carries the resulting insurance fund
and house cash, SPEC invariant 6).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from bot.config import BotConfig
from bot.liquidator import Liquidator
from protocol_model.seeding import seed_accounts
from protocol_model.chain import Sender
from protocol_model.deploy import DeployConfig, compile_contracts, deploy_protocol
from protocol_model.loader import load_accounts, load_protocol
from protocol_model.logs import decode_logs, engine_topic

from nodes import start_node


WAD = 10**18
GWEI = 10**9
N_TRADERS, SEED = 30, 7
CRASH_PCT = 55          # ETH and BTC fall 45 %: many liquidatable traders, some bankrupt


@pytest.fixture(scope="module")
def setup(node_kind: str) -> Iterator[dict[str, Any]]:
    compile_contracts()
    node = start_node(node_kind)
    try:
        w3 = Web3(HTTPProvider(node.url))
        with node.automine():
            owner = Sender.unlocked(w3, 0)
            dep = deploy_protocol(w3, owner, DeployConfig())
            for i in (5, 6):
                owner.send(dep.quote_contract.functions.mint(Account.from_key(node.accounts[i][1]).address,
                                                             200_000 * 10**6))
            traders = [p.address for p in seed_accounts(w3, dep, owner, N_TRADERS, SEED)]
            hand_made = {}
            for name, index, usdc, eth_wad in (("dust", 7, 10, 4 * WAD // 100), ("self", 8, 1_000, 4 * WAD)):
                trader = Sender.unlocked(w3, index)
                owner.send(dep.quote_contract.functions.mint(trader.address, usdc * 10**6))
                trader.send(dep.quote_contract.functions.approve(dep.engine, usdc * 10**6))
                trader.send(dep.engine_contract.functions.deposit(dep.quote, usdc * 10**6))
                trader.send(dep.engine_contract.functions.trade(0, eth_wad, 2**256 - 1))
                hand_made[name] = trader
        yield {"node": node, "w3": w3, "dep": dep, "owner": owner.address,
               "traders": traders + [t.address for t in hand_made.values()], "hand_made": hand_made,
               "keys": (node.accounts[5][1], node.accounts[6][1])}
    finally:
        node.stop()


def _set_prices(s: dict[str, Any], pct: int) -> None:
    for asset, base in (("ETH", 2_000), ("BTC", 60_000)):
        s["dep"].feed_contract(asset).functions.set_answer(base * 10**8 * pct // 100).transact(
            {"from": s["owner"], "gas": 300_000, "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": GWEI})


def _mine(s: dict[str, Any]) -> int:
    return int(s["node"].mine())


def _state(s: dict[str, Any], block: int) -> Any:
    state = load_protocol(s["w3"], s["dep"], block)
    load_accounts(s["w3"], s["dep"], state, s["traders"], block_identifier=block)
    return state


def _bot(s: dict[str, Any], tmp_path: Path, name: str, key: str, **overrides: Any) -> Liquidator:
    cfg = BotConfig.from_env(environ={}, db_path=str(tmp_path / f"{name}.sqlite3"), min_profit_usd_wad=WAD,
                             rpc_backoff_s=0.0, rpc_backoff_max_s=0.0, lookback_blocks=4,
                             lost_race_backoff_blocks=5, poll_interval_s=0.05, **overrides)
    return Liquidator(Web3(HTTPProvider(s["node"].url)), s["dep"], Account.from_key(key), cfg)


def _bankrupt_with_positions(state: Any) -> set[str]:
    from protocol_model.health import health
    return {a for a, acc in state.accounts.items() if acc.positions and health(state, acc).equity < 0}


def _bad_debt_left(state: Any) -> set[str]:
    return {a for a, acc in state.accounts.items()
            if acc.cash < 0 and not acc.positions and not any(v > 0 for v in acc.collateral.values())}


def _engine_events(s: dict[str, Any], lo: int, hi: int) -> list[Any]:
    logs = s["w3"].eth.get_logs({"fromBlock": lo, "toBlock": hi, "address": s["dep"].engine,
                                 "topics": [[engine_topic("BadDebtSettled"), engine_topic("Liquidation"),
                                             engine_topic("CollateralLiquidation")]]})
    return sorted(decode_logs(logs, s["dep"].engine), key=lambda e: e.order)


def _assert_events_carry_the_fund_and_the_house(s: dict[str, Any], events: list[Any]) -> None:
    """SPEC invariant 6: the last event of a block that moves the insurance fund or the house's
    cash carries their values at the end of that block."""
    engine = s["dep"].engine_contract
    for block in sorted({e.block for e in events}):
        last = [e for e in events if e.block == block][-1]
        assert int(last.args["insurance_fund"]) == engine.functions.insurance_fund().call(block_identifier=block)
        assert int(last.args["house_cash"]) == engine.functions.cash(engine.address).call(block_identifier=block)


def test_backstop_closes_bankrupt_accounts_and_settles_bad_debt(setup: dict[str, Any], tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    s = setup
    caplog.set_level("INFO", logger="bot.liquidator")
    w3, dep = s["w3"], s["dep"]
    dust, self_closed = s["hand_made"]["dust"].address, s["hand_made"]["self"].address
    normal = _bot(s, tmp_path, "normal", s["keys"][0])
    backstop = _bot(s, tmp_path, "backstop", s["keys"][1], backstop=True)
    try:
        normal.start()
        _set_prices(s, 100)
        _mine(s)
        normal.tick()

        _set_prices(s, CRASH_PCT)
        crash_block = _mine(s)
        bankrupt = _bankrupt_with_positions(_state(s, crash_block))
        assert {dust, self_closed} <= bankrupt and len(bankrupt) > 3, "the crash makes too few accounts bankrupt"
        # SELF closes his own position at a loss: nothing left to liquidate, bad debt not settled.
        with s["node"].automine():
            s["hand_made"]["self"].send(dep.engine_contract.functions.trade(0, -4 * WAD, 0))
        assert self_closed in _bad_debt_left(_state(s, w3.eth.block_number))

        # The plain, profit-seeking bot closes every bankrupt account but DUST, paid by the fund.
        normal_from = w3.eth.block_number + 1
        for _ in range(6):
            normal.tick()
            _mine(s)
        normal.tick()
        normal_to = w3.eth.block_number
        after_normal = _state(s, normal_to)
        assert _bankrupt_with_positions(after_normal) == {dust}
        # ... and says, once, why it leaves DUST (and who can close it).
        told = [r.getMessage() for r in caplog.records if r.name == "bot.liquidator" and dust in r.getMessage()]
        assert told == [f"not liquidating bankrupt {dust}: no candidate reaches the minimum profit; "
                        "a --backstop keeper closes it and settles its bad debt"], told
        assert _bad_debt_left(after_normal) == {self_closed}, "automatic settlement left bad debt"
        events = _engine_events(s, normal_from, normal_to)
        closes = [e for e in events if e.name == "Liquidation" and e.args["account"] in bankrupt]
        assert {e.args["account"] for e in closes} == bankrupt - {dust, self_closed}
        assert all(e.args["liquidator"] == normal.address for e in events if e.name != "BadDebtSettled")
        # Keepers are paid for bankrupt accounts: the account pays what its equity allows (here
        # nothing, for the first close of each), the insurance fund the rest of the reward.
        assert all(int(e.args["keeper_reward"]) > 0 for e in closes)
        assert any(int(e.args["charged"]) == 0 for e in closes)
        settled = {e.args["account"] for e in events if e.name == "BadDebtSettled"}
        assert settled and settled <= bankrupt - {dust, self_closed}   # automatic settlements
        _assert_events_carry_the_fund_and_the_house(s, events)

        # The backstop closes DUST at a loss (settled in the same call) and settles SELF.
        start_block = w3.eth.block_number
        backstop.start()
        sent_kinds: list[str] = []
        for _ in range(6):
            report = backstop.tick()
            sent_kinds += [r.tx.kind for r in report.sent if r.tx is not None]
            _mine(s)
        backstop.tick()
        end_block = w3.eth.block_number
        assert "settle" in sent_kinds and "liquidate_many" in sent_kinds   # one order: a skip, never a revert, if a rival is first

        final = _state(s, end_block)
        assert not _bankrupt_with_positions(final)
        assert not _bad_debt_left(final), "an account is left with nothing but negative cash"
        settles = [r for r in backstop.store.liquidations() if r.kind == "settle"]
        assert [r.account for r in settles] == [self_closed] and settles[0].outcome == "won"
        events = _engine_events(s, start_block + 1, end_block)
        by_name = {(e.name, e.args["account"]): e for e in events}
        assert by_name[("Liquidation", dust)].args["liquidator"] == backstop.address
        assert by_name[("BadDebtSettled", dust)].tx_hash == by_name[("Liquidation", dust)].tx_hash
        assert ("BadDebtSettled", self_closed) in by_name
        for e in events:
            if e.name == "BadDebtSettled":
                assert int(e.args["deficit"]) == int(e.args["covered"]) + int(e.args["socialised"]) > 0
        _assert_events_carry_the_fund_and_the_house(s, events)
    finally:
        normal.close()
        backstop.close()
