"""Backstop mode end to end: bankrupt accounts are closed at a gas-only loss and their bad debt settled.

Each node of ``tests/nodes.py`` over HTTP (the dev node and anvil, as in test_bot_e2e.py), one
deployment with 30 traders. A deep crash makes
some of them bankrupt (equity < 0): they pay no penalty, so a profit-seeking bot leaves their
positions open. A bot with ``backstop=True`` closes them and then sends ``settle_bad_debt``; the
oracles are the engine's own views and its BadDebtSettled events.
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
        yield {"node": node, "w3": w3, "dep": dep, "owner": owner.address, "traders": traders,
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


def test_backstop_closes_bankrupt_accounts_and_settles_bad_debt(setup: dict[str, Any], tmp_path: Path) -> None:
    s = setup
    w3, engine = s["w3"], s["dep"].engine_contract
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
        assert bankrupt, "the crash makes no account bankrupt"

        # The profit-seeking bot leaves the bankrupt accounts' positions open.
        for _ in range(6):
            normal.tick()
            _mine(s)
        normal.tick()
        after_normal = _state(s, w3.eth.block_number)
        left = _bankrupt_with_positions(after_normal) | _bad_debt_left(after_normal)
        assert left, "the normal bot left nothing for the backstop"
        assert {a for a in bankrupt if after_normal.accounts[a].positions} <= left

        # The backstop bot closes them and settles their bad debt.
        start_block = w3.eth.block_number
        backstop.start()
        sent_kinds: list[str] = []
        for _ in range(12):
            report = backstop.tick()
            sent_kinds += [r.tx.kind for r in report.sent if r.tx is not None]
            _mine(s)
        backstop.tick()
        end_block = w3.eth.block_number
        assert "settle" in sent_kinds and "liquidate" in sent_kinds

        final = _state(s, end_block)
        assert not _bankrupt_with_positions(final)
        assert not _bad_debt_left(final), "an account is left with nothing but negative cash"

        # The store's history has the settlements.
        settles = [r for r in backstop.store.liquidations() if r.kind == "settle"]
        assert settles and all(r.outcome == "won" for r in settles)

        # Every BadDebtSettled: the insurance fund pays `covered`, the house's cash absorbs `socialised`.
        logs = w3.eth.get_logs({"fromBlock": start_block + 1, "toBlock": end_block, "address": s["dep"].engine,
                                "topics": [[engine_topic("BadDebtSettled"), engine_topic("Liquidation"),
                                            engine_topic("CollateralLiquidation")]]})
        events = decode_logs(logs, s["dep"].engine)
        settled = [e for e in events if e.name == "BadDebtSettled"]
        assert {e.args["account"] for e in settled} == {r.account for r in settles}
        checked = 0
        for block in sorted({e.block for e in settled}):
            in_block = [e for e in events if e.block == block]
            if any(e.name != "BadDebtSettled" for e in in_block):
                continue   # a liquidation in the same block moves the fund and the house too
            covered = sum(int(e.args["covered"]) for e in in_block)
            socialised = sum(int(e.args["socialised"]) for e in in_block)
            for e in in_block:
                assert int(e.args["deficit"]) == int(e.args["covered"]) + int(e.args["socialised"])
            fund_before = engine.functions.insurance_fund().call(block_identifier=block - 1)
            fund_after = engine.functions.insurance_fund().call(block_identifier=block)
            house_before = engine.functions.cash(engine.address).call(block_identifier=block - 1)
            house_after = engine.functions.cash(engine.address).call(block_identifier=block)
            assert fund_after == fund_before - covered
            assert house_after == house_before - socialised
            checked += 1
        assert checked, "no block with settlements alone to check"
        # And over the whole run: the fund's change is the liquidations' insurance minus what it covered.
        fund_start = engine.functions.insurance_fund().call(block_identifier=start_block)
        fund_end = engine.functions.insurance_fund().call(block_identifier=end_block)
        inflow = sum(int(e.args["insurance"]) for e in events if e.name == "Liquidation")
        assert fund_end == fund_start + inflow - sum(int(e.args["covered"]) for e in settled)
    finally:
        normal.close()
        backstop.close()
