"""Acceptance: rebuild-from-logs equals load-from-lens on the same chain.

The chain: traders deposit (quote and collateral), trade, close a position, withdraw; the owner
changes parameters and pauses; a price crash makes accounts liquidatable; they are liquidated
(whole, partially, bankrupt with a capped penalty), collateral-liquidated and their bad debt
settled, once covered by the insurance fund and once larger than the fund (socialised to the
house). The state rebuilt from logs alone must equal the Lens snapshot field by field, the house
and the insurance fund included, for every decimals case.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from conftest import WAD

from protocol_model.chain import Sender
from protocol_model.loader import discover_accounts, load_state
from protocol_model.logs import (
    Event,
    apply_event,
    apply_logs,
    decode_log,
    empty_state,
    fetch_events,
    rebuild_from_logs,
)
from protocol_model.scenarios import price_shock
from protocol_model.state import Market, ProtocolState
from protocol_model.wad import mul_up

MAX_UINT = 2**256 - 1


@dataclass
class Crash:
    blocks: dict[str, int]          # milestone -> block number after it
    bankrupt: str                   # liquidated whole with its penalty capped at 0, debt covered
    collateralised: str             # liquidated, then collateral-liquidated, then settled
    partial: str                    # partially liquidated (short BTC)
    whale: str                      # bad debt larger than the insurance fund: socialised
    closer: str                     # opened and closed a position, withdrew
    keeper: str


def run_crash(p: Any, actors: Any, w3: Any) -> Crash:
    extra = [Sender.unlocked(w3, i) for i in range(6, 9)]
    bankrupt, collateralised, partial = actors.trader, actors.trader2, actors.rival
    closer, whale = extra[0], extra[1]
    keeper = actors.liquidator
    e = p.engine.functions
    blocks: dict[str, int] = {}

    # traders open positions --------------------------------------------
    p.deposit(bankrupt, "USDC", p.units("USDC", 1_000))
    p.trade(bankrupt, "ETH-PERP", 45 * WAD // 10)                # 4.5 ETH on 1,000 USD
    p.deposit(collateralised, "WETH", p.units("WETH", 2))
    p.trade(collateralised, "ETH-PERP", 10 * WAD)                # 10 ETH on 2 WETH
    p.deposit(partial, "USDC", p.units("USDC", 10_000))
    p.trade(partial, "BTC-PERP", -15 * WAD // 10)                # short 1.5 BTC
    p.deposit(whale, "USDC", p.units("USDC", 400_000))
    p.trade(whale, "ETH-PERP", 1_800 * WAD)                      # 3.6M USD notional
    p.deposit(closer, "USDC", p.units("USDC", 5_000))
    p.deposit(closer, "WBTC", p.units("WBTC", "0.1"))
    p.trade(closer, "ETH-PERP", WAD)
    p.set_price("ETH", "2010.5")
    p.trade(closer, "ETH-PERP", -WAD)                            # closed at a profit
    closer.send(e.withdraw(p.quote.address, p.units("USDC", 1_000)))
    blocks["opened"] = w3.eth.block_number

    # the owner changes things --------------------------------------------
    p.owner.send(e.set_params(4 * 10**17, 3_600, 5 * WAD))
    p.owner.send(e.set_market_params(1, WAD // 10, WAD // 20, WAD // 50, 10**15, 0))
    p.owner.send(e.pause())
    p.deposit(closer, "USDC", p.units("USDC", 1))                # deposits go on while paused
    p.owner.send(e.unpause())

    # the crash -------------------------------------------------------------
    p.set_price("ETH", 1_700)
    p.set_price("BTC", 64_000)
    blocks["crashed"] = w3.eth.block_number
    for who in (bankrupt, collateralised, partial, whale):
        assert p.health(who.address)[2] < 0
    p.fund(keeper, "USDC", p.units("USDC", 100_000))

    keeper.send(e.liquidate(bankrupt.address, 0, MAX_UINT))
    assert p.cash(bankrupt.address) == 0                          # its bad debt settled by the liquidation
    keeper.send(e.liquidate(collateralised.address, 0, MAX_UINT))
    weth = p.dep.collateral("WETH")["token"]
    keeper.send(e.liquidate_collateral(collateralised.address, weth, MAX_UINT))
    assert p.cash(collateralised.address) >= 0                   # settled by the collateral liquidation, if any
    keeper.send(e.liquidate(partial.address, 1, MAX_UINT))
    keeper.send(e.liquidate(whale.address, 0, MAX_UINT))
    assert p.cash(whale.address) == 0
    blocks["liquidated"] = w3.eth.block_number

    # life goes on ----------------------------------------------------------
    p.set_price("ETH", 1_750)
    p.deposit(collateralised, "USDC", p.units("USDC", 3_000))
    p.trade(collateralised, "ETH-PERP", -2 * WAD)
    blocks["end"] = w3.eth.block_number

    return Crash(blocks, bankrupt.address, collateralised.address, partial.address, whale.address,
                 closer.address, keeper.address)


def diff_states(a: ProtocolState, b: ProtocolState) -> list[str]:
    """Human-readable differences, field by field (accounts and the house included)."""
    out: list[str] = []
    for f in fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name == "accounts":
            for addr in sorted(set(va) | set(vb)):
                if va.get(addr) != vb.get(addr):
                    out.append(f"account {addr}: {va.get(addr)} != {vb.get(addr)}")
        elif va != vb:
            out.append(f"{f.name}: {va} != {vb}")
    return out


def test_rebuild_from_logs_equals_load_from_lens(any_protocol, actors, w3):
    p = any_protocol
    crash = run_crash(p, actors, w3)

    events = fetch_events(w3, p.dep.engine, [], p.dep.block, w3.eth.block_number)
    names = [ev.name for ev in events]
    assert names.count("Liquidation") == 4
    assert names.count("CollateralLiquidation") == 1
    assert names.count("BadDebtSettled") == len({ev.args["account"] for ev in events if ev.name == "BadDebtSettled"}) >= 2
    settled = {ev.args["account"]: ev.args for ev in events if ev.name == "BadDebtSettled"}
    assert settled[crash.bankrupt]["socialised"] == 0 and settled[crash.bankrupt]["covered"] > 0
    assert settled[crash.whale]["socialised"] > 0            # more than the fund held
    liqs = {ev.args["account"]: ev.args for ev in events if ev.name == "Liquidation"}
    assert liqs[crash.bankrupt]["charged"] == 0 < liqs[crash.bankrupt]["keeper_reward"]   # the fund pays its keeper
    assert liqs[crash.partial]["size"] != 0                   # partial close

    rebuilt = rebuild_from_logs(w3, p.dep)
    loaded = load_state(w3, p.dep, discover_accounts(w3, p.dep))

    assert diff_states(rebuilt, loaded) == []
    assert rebuilt == loaded
    # The interesting parts are really there, not equal because empty.
    assert set(loaded.accounts) == {crash.bankrupt, crash.collateralised, crash.partial, crash.whale, crash.closer}
    assert loaded.house is not None and loaded.house.positions and loaded.house.cash != 0
    assert loaded.insurance_fund == p.engine.functions.insurance_fund().call()
    assert loaded.insurance_fund == 0                          # the whale drained it
    assert loaded.accounts[crash.partial].positions[1].size < 0
    assert loaded.accounts[crash.bankrupt].is_empty()
    assert loaded.params.keeper_share == 4 * 10**17 and not loaded.params.paused
    assert loaded.markets[1].taker_fee == 10**15


def test_apply_logs_brings_a_loaded_snapshot_forward(protocol, actors, w3):
    """The incremental mirror: a Lens snapshot at a past block plus the logs since equals a fresh
    snapshot; applying the same range again changes nothing."""
    p = protocol
    crash = run_crash(p, actors, w3)
    accounts = discover_accounts(w3, p.dep)
    for milestone in ("opened", "crashed", "liquidated"):
        state = load_state(w3, p.dep, accounts, block_identifier=crash.blocks[milestone])
        applied = apply_logs(w3, p.dep, state)
        assert applied.events > 0
        assert state == load_state(w3, p.dep, accounts), milestone
        again = apply_logs(w3, p.dep, state)
        assert again.events == 0
        assert state == load_state(w3, p.dep, accounts)

    state = load_state(w3, p.dep, accounts, block_identifier=crash.blocks["crashed"])
    applied = apply_logs(w3, p.dep, state, to_block=crash.blocks["liquidated"])
    assert state == load_state(w3, p.dep, accounts, block_identifier=crash.blocks["liquidated"])
    assert {crash.bankrupt, crash.collateralised, crash.partial, crash.whale} <= applied.accounts


def test_rebuild_at_a_past_block(protocol, actors, w3):
    p = protocol
    crash = run_crash(p, actors, w3)
    accounts = discover_accounts(w3, p.dep, to_block=crash.blocks["crashed"])
    at = crash.blocks["crashed"]
    assert rebuild_from_logs(w3, p.dep, to_block=at) == load_state(w3, p.dep, accounts, block_identifier=at)


def test_decoded_events_match_web3(protocol, actors, w3):
    p = protocol
    p.deposit(actors.trader, "USDC", p.units("USDC", 1_000))
    receipt = p.trade(actors.trader, "ETH-PERP", -WAD // 3)
    ours = [ev for ev in (decode_log(entry, "MarginEngine") for entry in receipt["logs"]
                          if entry["address"] == p.dep.engine) if ev is not None]
    theirs = p.events(receipt, "Trade")
    assert len(ours) == len(theirs) == 1
    assert ours[0].name == "Trade"
    assert ours[0].args == dict(theirs[0]["args"])
    assert ours[0].block == receipt["blockNumber"]

    receipt = p.set_price("ETH", 1_999)
    feed_logs = [decode_log(entry, "PriceFeed") for entry in receipt["logs"]]
    updates = [ev for ev in feed_logs if ev is not None and ev.name == "AnswerUpdated"]
    assert len(updates) == 1 and updates[0].args["current"] == 1_999 * 10**8


def test_house_booking_follows_write_position():
    """A closed house position moves its quote into the house cash; the fee goes to the house."""
    engine = "0x" + "ee" * 20
    state = empty_state(engine)
    state.params.quote_token = "0x" + "11" * 20
    state.markets.append(Market(0, "0x" + "22" * 20, 10**10, WAD // 10, WAD // 20, WAD // 50, 0))
    trader = "0x" + "33" * 20

    def trade(size_delta: int, quote_delta: int, fee: int, size: int, quote: int, cash: int, i: int) -> Event:
        house = state.house.positions.get(0)
        house_size = (house.size if house else 0) - size_delta
        house_quote = (house.quote if house else 0) - quote_delta
        house_cash = state.house.cash + fee + (house_quote if house_size == 0 else 0)
        args = dict(account=trader, market=0, size_delta=size_delta, price=0, quote_delta=quote_delta,
                    fee=fee, size=size, quote=quote, cash=cash, house_size=house_size,
                    house_quote=0 if house_size == 0 else house_quote, house_cash=house_cash)
        return Event("Trade", "MarginEngine", state.engine, 1, i, 0, "0x", args)

    apply_event(state, trade(2 * WAD, -4_000 * WAD, 2 * WAD, 2 * WAD, -4_000 * WAD, 98 * WAD, 0))
    assert state.house.positions[0].size == -2 * WAD
    assert state.house.positions[0].quote == 4_000 * WAD
    assert state.house.cash == 2 * WAD
    apply_event(state, trade(-2 * WAD, 4_100 * WAD, 3 * WAD, 0, 0, 195 * WAD, 1))
    assert 0 not in state.house.positions
    assert state.house.cash == 2 * WAD + 3 * WAD + (4_000 - 4_100) * WAD
    assert state.accounts[trader].cash == 195 * WAD and not state.accounts[trader].positions


def test_price_shock_on_a_loaded_state_predicts_the_keepers(protocol, actors, w3):
    """A zero shock on the snapshot just after the crash simulates the liquidations the keeper then
    sent: per account the same closed notional, penalty, reward, seizure and bad debt."""
    p = protocol
    crash = run_crash(p, actors, w3)
    at = crash.blocks["crashed"]
    state = load_state(w3, p.dep, discover_accounts(w3, p.dep, to_block=at), block_identifier=at)
    report = price_shock(state, {})
    assert set(report.liquidatable) == {crash.bankrupt, crash.collateralised, crash.partial, crash.whale}

    events = fetch_events(w3, p.dep.engine, [], at + 1, crash.blocks["liquidated"])
    for o in report.accounts:
        mine = [ev.args for ev in events if ev.args.get("account") == o.address]
        liqs = [a for a in mine if "penalty" in a]
        assert o.volume == sum(mul_up(abs(a["size_delta"]), a["price"]) for a in liqs), o.address
        assert o.penalty == sum(a["penalty"] for a in liqs)
        assert o.keeper_reward_native == sum(a["keeper_reward"] for a in liqs)
        assert sum(o.collateral_seized.values()) == sum(a["seized"] for a in mine if "seized" in a)
        assert o.bad_debt == sum(a["deficit"] for a in mine if "deficit" in a)
    assert report.totals.bad_debt > 0 and report.totals.socialised > 0
