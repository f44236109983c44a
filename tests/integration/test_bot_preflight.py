"""The exact model as the bot's preflight (``bot/preflight.py``) against the node's ``eth_call``.

The same transaction units (lists of the planner's candidates, sent as ``liquidate_many`` or as a
single call) are preflighted twice: by :func:`bot.preflight.simulate_units`, once for the whole
sequence on the state loaded before the first, and by the node, one ``eth_call`` per unit, each
on the chain after the previous units were really mined. They must agree unit for unit: ok or
the revert reason, the count ``liquidate_many`` returns, and each order's skip reason (the
``LiquidationSkipped`` events of the mined batch). The sequence covers executed and skipped
orders, an order made redundant by an earlier unit, a collateral order paid with the keeper's
quote, a bankrupt account whose liquidation settles its bad debt automatically (the insurance
fund, then the house), a settlement that then has nothing to settle, and a batch that reverts
because the keeper lacks the quote its collateral orders need.

Then the liquidator's choice (setting ``preflight``), on the embedded dev node over HTTP: ``auto``
preflights a crash with the model, without one ``eth_call`` per transaction, and every order it
sends executes; after a configuration event in the crash block (the mirror re-reads the head
through the Lens instead of applying logs) ``auto`` falls back to the node's ``eth_call``, as
``node`` always does; ``model`` keeps the model. A bad value is a one-line error.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account as EthAccount
from eth_tester.exceptions import TransactionFailed
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError

from bot.config import BotConfig
from bot.errors import BotConfigError
from bot.liquidator import Liquidator, TickReport, batch_request
from bot.preflight import needs_quote, simulate_units, unit_call
from bot.strategy import LIQUIDATE, LIQUIDATE_COLLATERAL, SETTLE, Candidate
from bot.txs import LIQUIDATE_MANY, Preflight, batch_orders, classify_revert
from engine_helpers import ETH, MAX_UINT, WAD
from protocol_model import calls
from protocol_model.actions import SKIP_REASONS
from protocol_model.calls import encode_call
from protocol_model.chain import revert_reason
from protocol_model.loader import load_state
from protocol_model.logs import ENGINE, decode_log
from test_engine_collateral_liquidation import realise_eth_loss
from nodes import seeded_node
from test_engine_liquidate_many import pending_timestamp


def cand(account: str, kind: str, target: Any, amount: int = MAX_UINT) -> Candidate:
    return Candidate(account, kind, target, str(target), amount, 0, 0, 0, None, 0)


def calldata(unit: list[Candidate], batch: bool) -> str:
    call = unit_call(unit, batch)
    if call.kind == LIQUIDATE_MANY:
        return str(batch_request("0x" + "00" * 20, unit, 500_000).data)
    c = unit[0]
    if c.kind == LIQUIDATE:
        data = encode_call(calls.LIQUIDATE, c.account, int(c.target), c.amount)
    elif c.kind == LIQUIDATE_COLLATERAL:
        data = encode_call(calls.LIQUIDATE_COLLATERAL, c.account, str(c.target), c.amount)
    else:
        data = encode_call(calls.SETTLE_BAD_DEBT, c.account)
    return "0x" + data.hex()


def node_preflight(p: Any, caller: str, data: str) -> Preflight:
    """What the bot's node preflight (``TxSender.preflight``) answers: ``eth_call`` from the keeper."""
    try:
        result = p.w3.eth.call({"from": caller, "to": p.engine.address, "data": data})
    except (ContractLogicError, TransactionFailed) as exc:
        reason = revert_reason(exc) or ""
        return Preflight(False, reason, classify_revert(reason))
    return Preflight(True, result="0x" + bytes(result).hex())


def mined_skips(p: Any, receipt: Any, size: int) -> tuple[str | None, ...]:
    skips: list[str | None] = [None] * size
    for entry in receipt["logs"]:
        if entry["address"] != p.engine.address:
            continue
        ev = decode_log(entry, ENGINE)
        if ev is not None and ev.name == "LiquidationSkipped":
            skips[int(ev.args["index"])] = SKIP_REASONS[int(ev.args["reason"])]
    return tuple(skips)


def agree(p: Any, caller: Any, units: list[list[Candidate]], accounts: list[str], *, batch: bool = True,
          quote_balance: int | None = None) -> list[Preflight]:
    """The model's flights of ``units`` (one sequence), checked against the node's, unit by unit,
    each unit mined after its check when the node says it passes."""
    state = load_state(p.w3, p.dep, accounts)
    state.timestamp = pending_timestamp(p)
    balance = p.quote.functions.balanceOf(caller.address).call() if quote_balance is None else quote_balance
    allowance = p.quote.functions.allowance(caller.address, p.engine.address).call()
    before = (state.insurance_fund, state.house.cash, dict(state.accounts))
    model = simulate_units(state, units, caller.address, balance, batch=batch, allowance=allowance)
    assert (state.insurance_fund, state.house.cash, dict(state.accounts)) == before   # never written
    for unit, flight in zip(units, model):
        data = calldata(unit, batch)
        node = node_preflight(p, caller.address, data)
        assert (flight.ok, flight.reason, flight.classification) == (node.ok, node.reason, node.classification), unit
        if not node.ok:
            continue
        if unit_call(unit, batch).kind == LIQUIDATE_MANY:
            assert flight.result == node.result
            receipt = _send(p, caller, data)
            assert receipt["status"] == 1
            assert flight.skips == mined_skips(p, receipt, len(unit))
        else:
            assert _send(p, caller, data)["status"] == 1
    return model


def _send(p: Any, caller: Any, data: str) -> Any:
    tx = p.w3.eth.send_transaction({"from": caller.address, "to": p.engine.address, "data": data, "gas": 8_000_000})
    return p.w3.eth.wait_for_transaction_receipt(tx)


@pytest.fixture
def book(protocol: Any, actors: Any) -> tuple[Any, list[str]]:
    """trader: 1,000 USDC, 4 ETH long; trader2: 10 WETH, a realised loss (cash < 0), 40 ETH long;
    outsider: 205 USDC, 1 ETH long opened at 2,000 (bankrupt below about 1,800); rival: healthy.
    Then ETH 1,750: trader, trader2 and outsider are liquidatable, outsider bankrupt."""
    p, t, t2, r, o = protocol, actors.trader, actors.trader2, actors.rival, actors.outsider
    p.deposit(t, "USDC", p.units("USDC", 1_000))
    p.trade(t, "ETH-PERP", 4 * WAD)
    p.deposit(t2, "WETH", p.units("WETH", 10))
    realise_eth_loss(p, t2, 50 * WAD, "1900")
    p.set_price("ETH", 2000)
    p.trade(t2, "ETH-PERP", 40 * WAD)
    p.deposit(o, "USDC", p.units("USDC", 205))
    p.trade(o, "ETH-PERP", WAD)
    p.deposit(r, "USDC", p.units("USDC", 50_000))
    p.trade(r, "ETH-PERP", WAD)
    p.set_price("ETH", 1750)
    for a in (t, t2, o):
        assert p.engine.functions.liquidation_health(a.address).call()[2] < 0
    assert p.health(o.address)[0] < 0 and p.health(r.address)[2] > 0
    return p, [t.address, t2.address, o.address, r.address]


def test_model_preflight_agrees_with_the_node_over_a_sequence_of_batches(book: Any, actors: Any) -> None:
    p, (t, t2, o, r) = book
    liq = actors.liquidator
    p.fund(liq, "USDC", p.units("USDC", 100_000))
    weth = p.token("WETH").address
    units = [
        [cand(t, LIQUIDATE, ETH), cand(t, LIQUIDATE, ETH), cand(r, LIQUIDATE, ETH)],   # executed, then skipped twice
        [cand(t2, LIQUIDATE_COLLATERAL, weth), cand(t2, LIQUIDATE, ETH)],              # pays the keeper's quote
        [cand(o, LIQUIDATE, ETH)],                                                      # bad debt settled on the spot
        [cand(o, SETTLE, o)],                                                           # nothing left to settle
        [cand(t, LIQUIDATE, ETH), cand(r, LIQUIDATE, ETH)],                             # nothing executes
    ]
    assert needs_quote(units)
    flights = agree(p, liq, units, [t, t2, o, r])
    first, collateral, bankrupt, settle, nothing = flights
    assert first.ok and first.skips is not None and first.skips[0] is None and first.skips[1:] == (
        first.skips[1], "healthy") and first.skips[1] in ("healthy", "no position")
    assert collateral.ok and collateral.skips is not None and collateral.skips[0] is None
    assert bankrupt.ok and bankrupt.skips == (None,)
    assert p.engine.functions.cash(o).call() == 0   # the liquidation settled its bad debt
    assert not settle.ok and settle.reason == "no bad debt" and settle.lost_race
    assert nothing.ok and int(nothing.result, 16) == 0 and all(nothing.skips)


def test_a_batch_reverts_when_the_keeper_lacks_the_quote_its_collateral_orders_need(book: Any, actors: Any) -> None:
    p, (t, t2, o, r) = book
    liq = actors.liquidator
    p.fund(liq, "USDC", 1)   # approved, but one unit of quote
    weth = p.token("WETH").address
    units = [[cand(t, LIQUIDATE, ETH), cand(t2, LIQUIDATE_COLLATERAL, weth)], [cand(t, LIQUIDATE, ETH)]]
    flights = agree(p, liq, units, [t, t2, o, r])
    assert not flights[0].ok and flights[0].reason == "insufficient balance"
    assert flights[1].ok and flights[1].skips == (None,)   # the reverted batch changed nothing


def test_single_calls_in_sequence_agree_with_the_node(book: Any, actors: Any) -> None:
    """``max_batch_orders`` 1: each candidate its own liquidate / liquidate_collateral /
    settle_bad_debt; a repeated liquidation of a restored account reverts (a lost race)."""
    p, (t, t2, o, r) = book
    liq = actors.liquidator
    p.fund(liq, "USDC", p.units("USDC", 100_000))
    weth = p.token("WETH").address
    units = [[cand(t, LIQUIDATE, ETH)], [cand(t, LIQUIDATE, ETH)], [cand(t2, LIQUIDATE_COLLATERAL, weth)],
             [cand(t2, LIQUIDATE, ETH)], [cand(r, LIQUIDATE, ETH)], [cand(o, LIQUIDATE, ETH)], [cand(o, SETTLE, o)]]
    flights = agree(p, liq, units, [t, t2, o, r], batch=False)
    assert flights[0].ok and flights[2].ok and flights[5].ok
    assert not flights[4].ok and flights[4].reason == "healthy" and flights[4].lost_race
    assert not flights[6].ok and flights[6].reason == "no bad debt"


# ---------------------------------------------------------------- the liquidator's choice (setting ``preflight``)

CRASH_PCT = 88          # ETH and BTC both fall 12 %: several traders liquidatable (tests/e2e/test_bot_e2e.py)
GWEI = 10**9


@dataclass
class Devnode:
    node: Any
    w3: Any
    dep: Any
    owner: str
    key: str

    def owner_tx(self, fn: Any) -> None:
        fn.transact({"from": self.owner, "gas": 300_000, "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": GWEI})

    def set_prices(self, pct: int) -> None:
        for asset, base in (("ETH", 2_000), ("BTC", 60_000)):
            self.owner_tx(self.dep.feed_contract(asset).functions.set_answer(base * 10**8 * pct // 100))


@pytest.fixture(scope="module")
def devnode() -> Iterator[Devnode]:
    """The embedded dev node over HTTP, the protocol deployed, 40 seeded traders, a funded keeper."""
    with seeded_node("devnode", 40, 11, keeper_usdc=200_000) as c:
        yield Devnode(c.node, c.w3, c.dep, c.owner, c.keeper_key)


@pytest.fixture
def chain(devnode: Devnode) -> Iterator[Devnode]:
    with devnode.node.restored():
        yield devnode


def make_bot(chain: Devnode, tmp_path: Path, preflight: str) -> Liquidator:
    cfg = BotConfig.from_env(environ={}, db_path=str(tmp_path / f"{preflight}.sqlite3"), rpc_url=chain.node.url,
                             preflight=preflight, rpc_backoff_s=0.0, rpc_backoff_max_s=0.0, lookback_blocks=4)
    return Liquidator(Web3(HTTPProvider(chain.node.url)), chain.dep, EthAccount.from_key(chain.key), cfg)


def crash_tick(chain: Devnode, bot: Liquidator, *, config_event: bool = False) -> TickReport:
    """Fresh prices, the bot started and caught up; then the crash (with, if asked, a configuration
    event in the same block, which the mirror re-reads through the Lens instead of applying)."""
    bot.start()
    chain.set_prices(100)
    chain.node.mine()
    assert bot.tick().preflight is None   # nothing to send
    chain.set_prices(CRASH_PCT)
    if config_event:
        chain.owner_tx(chain.dep.engine_contract.functions.set_market_price_age(0, 3600))
    chain.node.mine()
    return bot.tick()


def landed(chain: Devnode, report: TickReport) -> tuple[int, int]:
    """(Liquidation events, LiquidationSkipped events) of the tick's sent transactions, once mined."""
    chain.node.mine()
    done = skipped = 0
    for s in report.sent:
        receipt = chain.w3.eth.get_transaction_receipt(s.tx.hash)
        assert receipt["status"] == 1
        for entry in receipt["logs"]:
            ev = decode_log(entry, ENGINE) if entry["address"] == chain.dep.engine else None
            done += ev is not None and ev.name in ("Liquidation", "CollateralLiquidation")
            skipped += ev is not None and ev.name == "LiquidationSkipped"
    return done, skipped


def test_auto_preflights_with_the_model_at_the_head_without_an_eth_call(chain: Devnode, tmp_path: Path) -> None:
    bot = make_bot(chain, tmp_path, "auto")
    try:
        report = crash_tick(chain, bot)
        assert report.preflight == "model" and len(report.sent) >= 1
        orders = sum(len(batch_orders(s.tx.data)) for s in report.sent)
        # No eth_call per transaction: at most the keeper's quote balance, read once.
        assert report.rpc_calls.get("eth_call", 0) <= 1
        assert landed(chain, report) == (orders, 0)   # every order executed: the model was right
    finally:
        bot.stop()


@pytest.mark.parametrize("preflight", ["auto", "node"])
def test_the_node_preflights_when_the_mirror_re_read_the_head_or_when_asked(chain: Devnode, tmp_path: Path,
                                                                          preflight: str) -> None:
    bot = make_bot(chain, tmp_path, preflight)
    try:
        report = crash_tick(chain, bot, config_event=preflight == "auto")
        assert report.preflight == "node" and len(report.sent) >= 1
        assert report.rpc_calls.get("eth_call", 0) >= len(report.sent)   # one eth_call per transaction at least
        orders = sum(len(batch_orders(s.tx.data)) for s in report.sent)
        assert landed(chain, report) == (orders, 0)
    finally:
        bot.stop()


def test_model_setting_uses_the_model_even_after_a_re_read(chain: Devnode, tmp_path: Path) -> None:
    bot = make_bot(chain, tmp_path, "model")
    try:
        report = crash_tick(chain, bot, config_event=True)
        assert report.preflight == "model" and len(report.sent) >= 1
        orders = sum(len(batch_orders(s.tx.data)) for s in report.sent)
        assert landed(chain, report) == (orders, 0)
    finally:
        bot.stop()


def test_a_bad_preflight_setting_is_one_line() -> None:
    with pytest.raises(BotConfigError, match=r"^XMARGIN_PREFLIGHT='fast': must be one of auto, model, node$"):
        BotConfig.from_env(environ={"XMARGIN_PREFLIGHT": "fast"})


def test_cli_bad_preflight_is_one_line() -> None:
    from click.testing import CliRunner

    from cli import cli

    for args, env in ((["bot", "run", "--preflight", "fast"], {}), (["bot", "run", "--dry-run"], {"XMARGIN_PREFLIGHT": "fast"})):
        result = CliRunner().invoke(cli, args, env={"XMARGIN_RPC_URL": "http://127.0.0.1:1", **env})
        assert result.exit_code == 2 and "Traceback" not in result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "preflight" in lines[0].lower() and "fast" in lines[0], result.output
