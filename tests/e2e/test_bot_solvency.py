"""Issue 11's acceptance stories: solvency by incentives, with nothing but a plain keeper.

Each node of ``tests/nodes.py`` over HTTP (the dev node; anvil with ``-m slow``), the acceptance's commands run
through the CLI as an operator would: ``xmargin deploy``, ``xmargin seed --accounts 60 --seed 3``,
then a plain profit-seeking bot (:class:`bot.liquidator.Liquidator` with the defaults of
``xmargin bot run``: no ``--backstop``) ticks once per block while ``xmargin price shock ETH -30%``
crashes the market. The blocks are mined by the test, one per tick: the acceptance's 20 seconds on
a chain with 1-second blocks are 20 blocks here (the anvil run by hand, with ``--block-time 1`` and
the real ``xmargin bot run``, is in the README).

* A bot holding no quote tokens: within 20 blocks no liquidatable account holds an open position,
  bankrupt accounts included (the insurance fund pays their keepers), and every liquidation is
  the bot's;
* a bot holding 1,000,000 USDC (for the collateral orders): within 20 blocks no account is
  liquidatable and no bad debt is left unsettled.

The oracles are the engine's own state read through the Lens and its events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import HTTPProvider, Web3

from bot.config import BotConfig
from bot.liquidator import Liquidator
from cli import cli
from protocol_model.deploy import Deployment, compile_contracts
from protocol_model.health import health
from protocol_model.loader import load_accounts, load_protocol
from protocol_model.logs import decode_logs, engine_topic

from nodes import LocalNode, require_anvil, start_node

WAD = 10**18
ACCOUNTS, SEED = 60, 3
BLOCKS = 20                        # the acceptance's 20 seconds at one block per second
QUOTE_FUNDS = 1_000_000            # whole USDC of the second story's bot


@dataclass
class Setup:
    node: LocalNode
    w3: Web3
    dep: Deployment
    env: dict[str, str]
    traders: list[str]


def _xmargin(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module", params=["devnode", pytest.param("anvil", marks=pytest.mark.slow)])
def node_kind(request: pytest.FixtureRequest) -> str:
    """The dev node in the default run; anvil with ``-m slow`` (CI runs both)."""
    if request.param == "anvil":
        require_anvil()
    return str(request.param)


@pytest.fixture(scope="module")
def setup(node_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    compile_contracts()
    node = start_node(node_kind)
    try:
        path = tmp_path_factory.mktemp("solvency") / "deployment.json"
        env = {"XMARGIN_RPC_URL": node.url, "XMARGIN_DEPLOYMENT_PATH": str(path)}
        with node.automine():
            _xmargin(env, "deploy", "--out", str(path))
            _xmargin(env, "seed", "--accounts", str(ACCOUNTS), "--seed", str(SEED))
        w3 = Web3(HTTPProvider(node.url))
        dep = Deployment.load(path, w3)
        out = json.loads(_xmargin(env, "accounts", "--json"))
        traders = [row["address"] for row in out["accounts"]]
        assert len(traders) == ACCOUNTS
        yield Setup(node, w3, dep, env, traders)
    finally:
        node.stop()


@pytest.fixture
def chain(setup: Setup) -> Iterator[Setup]:
    with setup.node.restored():
        yield setup


def _state(s: Setup, block: int) -> Any:
    state = load_protocol(s.w3, s.dep, block)
    load_accounts(s.w3, s.dep, state, s.traders, block_identifier=block)
    return state


def _healths(state: Any) -> dict[str, Any]:
    return {a: health(state, acc) for a, acc in state.accounts.items() if a != state.engine}


def _bot(s: Setup, tmp_path: Path, key: str) -> Liquidator:
    """``xmargin bot run``'s defaults (no --backstop), polling fast, retrying at once."""
    cfg = BotConfig.from_env(environ={}, db_path=str(tmp_path / "bot.sqlite3"), rpc_url=s.node.url,
                             rpc_backoff_s=0.0, rpc_backoff_max_s=0.0, poll_interval_s=0.05)
    return Liquidator(Web3(HTTPProvider(s.node.url)), s.dep, Account.from_key(key), cfg)


def _crash(s: Setup, bot: Liquidator) -> int:
    """Refresh the feeds (block timestamps follow the clock), start the bot, then ETH -30 %."""
    with s.node.automine():
        _xmargin(s.env, "price", "set", "ETH", "2000")
        _xmargin(s.env, "price", "set", "BTC", "60000")
    bot.start()
    bot.tick()
    s.node.mine()      # the bot's approve of the quote token
    bot.tick()
    with s.node.automine():
        _xmargin(s.env, "price", "shock", "ETH", "-30%")
    return s.w3.eth.block_number


def _run(s: Setup, bot: Liquidator, done: Any) -> tuple[int, Any]:
    """Tick and mine, one block at a time, until ``done(state)``; the blocks it took and the state."""
    start = s.w3.eth.block_number
    for _ in range(BLOCKS):
        bot.tick()
        block = s.node.mine()
        state = _state(s, block)
        if done(state):
            return block - start, state
    return BLOCKS + 1, _state(s, s.w3.eth.block_number)


def _events(s: Setup, lo: int, hi: int) -> list[Any]:
    topics = [[engine_topic(n) for n in ("Liquidation", "CollateralLiquidation", "BadDebtSettled")]]
    logs = s.w3.eth.get_logs({"fromBlock": lo, "toBlock": hi, "address": s.dep.engine, "topics": topics})
    return decode_logs(logs, s.dep.engine)


def test_a_plain_bot_without_quote_closes_every_liquidatable_position(chain: Setup, tmp_path: Path) -> None:
    s = chain
    key = s.node.accounts[5][1]
    assert s.dep.quote_contract.functions.balanceOf(Account.from_key(key).address).call() == 0
    bot = _bot(s, tmp_path, key)
    try:
        crash_block = _crash(s, bot)
        at_crash = _state(s, crash_block)
        hs = _healths(at_crash)
        open_liquidatable = {a for a, h in hs.items() if h.maint_health < 0 and at_crash.accounts[a].positions}
        bankrupt = {a for a in open_liquidatable if hs[a].equity < 0}
        assert len(open_liquidatable) >= 10 and bankrupt, "the crash is too mild for this story"

        def no_open_liquidatable(state: Any) -> bool:
            return not any(h.maint_health < 0 and state.accounts[a].positions for a, h in _healths(state).items())

        blocks, final = _run(s, bot, no_open_liquidatable)
        assert blocks <= BLOCKS, "a liquidatable account still holds an open position after 20 blocks"
        events = _events(s, crash_block + 1, s.w3.eth.block_number)
        closes = [e for e in events if e.name == "Liquidation"]
        assert {e.args["account"] for e in closes} >= open_liquidatable
        assert all(e.args["liquidator"] == bot.address for e in events if e.name != "BadDebtSettled")
        # Bankrupt accounts were closed, their keeper paid in full by the insurance fund.
        paid = [e for e in closes if e.args["account"] in bankrupt]
        assert paid and all(int(e.args["keeper_reward"]) > 0 for e in paid)
        assert any(int(e.args["charged"]) < int(e.args["penalty"]) for e in paid)
        # One transaction carried many orders: a tick's orders go out through liquidate_many.
        assert len({e.tx_hash for e in closes}) < len(closes)
        bot.tick()         # the outcomes of the last block's transactions
        assert bot.store.totals().won == len(closes) and bot.store.totals().lost == 0
    finally:
        bot.close()


def test_a_bot_with_a_million_usdc_leaves_nothing_liquidatable_and_no_bad_debt(chain: Setup,
                                                                                tmp_path: Path) -> None:
    s = chain
    key = s.node.accounts[6][1]
    address = Account.from_key(key).address
    with s.node.automine():
        s.dep.quote_contract.functions.mint(address, QUOTE_FUNDS * 10**6).transact({"from": s.node.accounts[0][0]})
    bot = _bot(s, tmp_path, key)
    try:
        crash_block = _crash(s, bot)
        at_crash = _state(s, crash_block)
        assert sum(h.maint_health < 0 for h in _healths(at_crash).values()) >= 10

        def unsettled(state: Any) -> set[str]:
            return {a for a, acc in state.accounts.items()
                    if a != state.engine and acc.cash < 0 and not acc.positions
                    and not any(v > 0 for v in acc.collateral.values())}

        def solvent(state: Any) -> bool:
            return not any(h.maint_health < 0 for h in _healths(state).values()) and not unsettled(state)

        blocks, final = _run(s, bot, solvent)
        assert blocks <= BLOCKS, (
            f"after 20 blocks: liquidatable {[a for a, h in _healths(final).items() if h.maint_health < 0]}, "
            f"unsettled {unsettled(final)}")
        events = _events(s, crash_block + 1, s.w3.eth.block_number)
        assert any(e.name == "CollateralLiquidation" for e in events)
        assert any(e.name == "BadDebtSettled" for e in events)
        assert all(e.args["liquidator"] == bot.address for e in events if e.name != "BadDebtSettled")
    finally:
        bot.close()
