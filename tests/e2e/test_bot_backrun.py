"""Backrunning the oracle: the bot reads a pending price update from the mempool and sends its
liquidations before the block, so that a fee-ordered block holds the update then the liquidations.

Every test runs on both nodes of ``tests/nodes.py`` (the ``node_kind`` fixture): the dev node
(eth-tester on py-evm, fee-ordered pool, ties by arrival) and anvil (``--order fees``). Both mine
only when a test calls ``mine()``, so a test sees the pending update, lets the bot act, and only
then mines the block that holds both.

Oracles are independent of the bot: the chain's blocks (which transactions, in which order), the
engine's ``Liquidation`` / ``LiquidationSkipped`` events, and the engine's own ``health`` view.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import HTTPProvider, Web3

from cli import cli
from bot.config import BotConfig
from bot.errors import BotConfigError
from bot.liquidator import Liquidator
from bot.pending import SET_ANSWER, DecoderRegistry, FilterPendingSource, PriceUpdate, normalize_tx
from bot.txs import batch_orders
from protocol_model.calls import decode_call, encode_call, selector
from protocol_model.deploy import Deployment
from protocol_model.health import health
from protocol_model.loader import load_accounts, load_protocol
from protocol_model.logs import decode_logs, engine_topic

from nodes import LocalNode, seeded_node

WAD = 10**18
GWEI = 10**9
SEED, N = 11, 30
BOT_FUNDS = 200_000
ORACLE_TIP = 3 * GWEI            # the price update's priority fee: the backrun copies it


@dataclass
class Chain:
    node: LocalNode
    w3: Web3
    dep: Deployment
    owner: str
    traders: list[str]
    liquidator_key: str

    def mine(self) -> int:
        return self.node.mine()

    def set_price(self, asset: str, pct: int, tip: int = ORACLE_TIP) -> str:
        """Send the owner's (the feeds' updater's) ``set_answer`` at ``pct`` % of the seeded price,
        without mining it; its hash."""
        base = {"ETH": 2_000, "BTC": 60_000}[asset]
        fn = self.dep.feed_contract(asset).functions.set_answer(base * 10**8 * pct // 100)
        tx = fn.transact({"from": self.owner, "gas": 300_000, "maxFeePerGas": 100 * GWEI,
                          "maxPriorityFeePerGas": tip})
        return "0x" + bytes(tx).hex()


@pytest.fixture(scope="module")
def module_chain(node_kind: str) -> Iterator[Chain]:
    with seeded_node(node_kind, N, SEED, keeper_usdc=BOT_FUNDS) as c:
        yield Chain(c.node, c.w3, c.dep, c.owner, c.traders, c.keeper_key)


@pytest.fixture
def chain(module_chain: Chain) -> Iterator[Chain]:
    with module_chain.node.restored():
        yield module_chain


def bot_config(tmp_path: Path, **overrides: Any) -> BotConfig:
    settings: dict[str, Any] = {
        "db_path": str(tmp_path / "bot.sqlite3"),
        "min_profit_usd_wad": WAD,
        "rpc_backoff_s": 0.0,
        "rpc_backoff_max_s": 0.0,
        "lookback_blocks": 4,
        "lost_race_backoff_blocks": 5,
        "poll_interval_s": 0.05,
    }
    settings.update(overrides)
    return BotConfig.from_env(environ={}, **settings)


# ---------------------------------------------------------------------- the pending source


def test_filter_source_returns_each_pending_transaction_once_and_survives_a_forgotten_filter(chain: Chain) -> None:
    w3 = Web3(HTTPProvider(chain.node.url))
    source = FilterPendingSource(w3)
    try:
        assert source.drain() == []            # the first drain creates the filter
        h = chain.set_price("ETH", 90)
        other = chain.w3.eth.send_transaction({"from": chain.owner, "to": chain.traders[0], "value": 1,
                                               "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": GWEI})
        txs = source.drain()
        assert [t["hash"] for t in txs] == [h, "0x" + bytes(other).hex()]
        update = txs[0]
        assert update["from"] == chain.owner and update["to"] == chain.dep.feeds["ETH"]
        assert update["type"] == 2 and update["maxPriorityFeePerGas"] == ORACLE_TIP
        assert update["maxFeePerGas"] == 100 * GWEI and update["gas"] == 300_000
        assert update["input"] == "0x" + encode_call(SET_ANSWER, 1_800 * 10**8).hex()
        assert isinstance(update["nonce"], int) and isinstance(update["gasPrice"], int)
        assert source.drain() == []            # each transaction once

        # The node forgets the filter: the next drain creates a new one; later transactions are seen.
        w3.eth.uninstall_filter(source.filter_id)
        assert source.drain() == [] and source.recreated == 1
        h2 = chain.set_price("BTC", 90)
        assert [t["hash"] for t in source.drain()] == [h2]
        # Mined before the drain fetched it: not pending any more.
        chain.set_price("BTC", 91)
        chain.mine()
        assert source.drain() == [] and source.seen == 4
    finally:
        source.close()
    assert source.filter_id is None


def test_filter_source_batches_and_skips_known_hashes(chain: Chain) -> None:
    from bot.txs import FixedTip, TxSender

    w3 = Web3(HTTPProvider(chain.node.url))
    sender = TxSender(w3, Account.from_key(chain.liquidator_key), FixedTip(GWEI))
    mine: set[str] = set()
    source = FilterPendingSource(w3, batch=sender._batch, skip=mine.__contains__)
    source.start()
    hashes = [chain.set_price("ETH", 90 + i) for i in range(3)]
    mine.add(hashes[1])
    assert [t["hash"] for t in source.drain()] == [hashes[0], hashes[2]]
    assert source.seen == 3 and source.fetched == 2
    source.close()


# ---------------------------------------------------------------------- decoders


def _tx(to: str | None, data: bytes, sender: str) -> dict[str, Any]:
    return normalize_tx({"hash": "0x" + "11" * 32, "from": sender, "to": to, "input": "0x" + data.hex(),
                         "nonce": "0x1", "gas": "0x5208", "type": "0x2", "gasPrice": "0x1",
                         "maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1"})


def test_decoder_registry_reads_set_answer_of_the_engines_feeds_only(chain: Chain) -> None:
    feeds = {chain.dep.feeds["ETH"]: chain.owner, chain.dep.feeds["BTC"]: None}
    registry = DecoderRegistry.for_feeds(feeds)
    eth, btc = chain.dep.feeds["ETH"], chain.dep.feeds["BTC"]
    data = encode_call(SET_ANSWER, 1_234 * 10**8)
    update = registry.decode(_tx(eth, data, chain.owner))
    assert update is not None and (update.feed, update.answer) == (eth, 1_234 * 10**8)
    assert registry.decode(_tx(eth, data, chain.traders[0])) is None          # not the updater
    assert registry.decode(_tx(btc, data, chain.traders[0])) is not None      # updater unknown: any sender
    assert registry.decode(_tx(chain.dep.engine, data, chain.owner)) is None  # not a feed
    other = encode_call("set_updater(address)", chain.owner)
    assert registry.decode(_tx(eth, other, chain.owner)) is None              # another function of the feed
    assert registry.decode(_tx(eth, data[:20], chain.owner)) is None          # truncated call
    assert registry.decode(_tx(None, data, chain.owner)) is None              # a contract creation
    assert registry.decode(_tx(eth, b"", chain.owner)) is None

    # Another update format plugs in by (contract, selector), e.g. an aggregator's transmit.
    aggregator = chain.traders[1]
    sel = selector("transmit(uint256)")
    registry.register(aggregator, sel, lambda tx: PriceUpdate(btc, int(tx["input"][10:], 16), tx))
    update = registry.decode(_tx(aggregator, encode_call("transmit(uint256)", 77), chain.owner))
    assert update is not None and (update.feed, update.answer) == (btc, 77)
    assert (Web3.to_checksum_address(aggregator), sel) in registry and len(registry) == 3
    assert [u.answer for u in registry.updates([_tx(eth, data, chain.owner), _tx(eth, other, chain.owner)])] \
        == [1_234 * 10**8]


# ---------------------------------------------------------------------- the backrun


def make_bot(chain: Chain, tmp_path: Path, **overrides: Any) -> Liquidator:
    w3 = Web3(HTTPProvider(chain.node.url))
    return Liquidator(w3, chain.dep, Account.from_key(chain.liquidator_key), bot_config(tmp_path, **overrides))


def warm_up(chain: Chain, bot: Liquidator) -> None:
    """Fresh prices, the bot caught up at the head, its pending filter in place."""
    bot.start()
    for asset in ("ETH", "BTC"):
        chain.set_price(asset, 100)
    chain.mine()
    bot.tick()
    assert bot.poll_pending() is None


def block_txs(chain: Chain, number: int) -> list[str]:
    return ["0x" + bytes(h).hex() for h in chain.w3.eth.get_block(number)["transactions"]]


def engine_events(chain: Chain, block: int, name: str) -> list[Any]:
    logs = chain.w3.eth.get_logs({"fromBlock": block, "toBlock": block, "address": chain.dep.engine,
                                  "topics": [engine_topic(name)]})
    return decode_logs(logs, chain.dep.engine)


def test_pending_crash_is_liquidated_in_its_own_block_right_after_it(chain: Chain, tmp_path: Path) -> None:
    bot = make_bot(chain, tmp_path)
    try:
        warm_up(chain, bot)
        before = chain.w3.eth.block_number
        assert not [a for a, h in chain_healths(chain, before).items() if h[2] < 0]
        updates = [chain.set_price("ETH", 88), chain.set_price("BTC", 88)]

        report = bot.poll_pending()          # the updates are still pending: nothing is mined
        assert report is not None and chain.w3.eth.block_number == before
        assert {u.tx["hash"] for u in report.updates} == set(updates)
        assert report.fees is not None and report.fees.max_priority_fee_per_gas == ORACLE_TIP
        assert len(report.liquidatable) >= 3, "the crash is too mild for this test"
        sent = [s.tx.hash for s in report.sent]
        assert sent and all(s.tx.kind == "liquidate_many" for s in report.sent)
        assert report.latency_s is not None and report.latency_s > 0
        ordered = {o.account for s in report.sent for o in batch_orders(s.tx.data)}

        block = chain.mine()
        assert block == before + 1
        txs = block_txs(chain, block)
        # One block: the price updates first, then our liquidations.
        assert set(updates) | set(sent) <= set(txs)
        assert max(txs.index(h) for h in updates) < min(txs.index(h) for h in sent)
        events = engine_events(chain, block, "Liquidation")
        liquidated = {ev.args["account"] for ev in events}
        assert not engine_events(chain, block, "LiquidationSkipped")
        assert liquidated == ordered
        # Those are exactly the accounts the engine finds liquidatable at the crashed prices (before
        # our liquidations: the block's state without them is the parent's with the new prices).
        assert ordered <= set(report.liquidatable) == engine_liquidatable_after(chain, before, updates)

        # The next head's tick settles them as won and sends nothing again for those accounts.
        tick = bot.tick()
        assert {o.tx.hash for o in tick.outcomes} == set(sent)
        again = {o.account for s in tick.sent if s.tx.kind == "liquidate_many" for o in batch_orders(s.tx.data)}
        assert not again & ordered
        won = events + engine_events(chain, block, "CollateralLiquidation")
        assert bot.store.totals().won == len({(ev.tx_hash, ev.args["account"], ev.args.get("market", ev.args.get("token")))
                                              for ev in won})
        assert bot.store.totals().lost == 0
        assert bot.backrun is not None and bot.backrun.stats.skipped_orders == 0
    finally:
        bot.stop()


def test_backrun_that_lands_without_its_update_costs_a_skipped_batch_only(chain: Chain, tmp_path: Path) -> None:
    bot = make_bot(chain, tmp_path)
    try:
        warm_up(chain, bot)
        update = chain.set_price("ETH", 85)
        report = bot.poll_pending()
        assert report is not None and report.sent
        orders = sum(len(batch_orders(s.tx.data)) for s in report.sent)

        # The oracle replaces its update with a transfer to itself (same nonce, higher fees).
        nonce = chain.w3.eth.get_transaction(update)["nonce"]
        chain.w3.eth.send_transaction({"from": chain.owner, "to": chain.owner, "value": 0, "nonce": nonce, "gas": 21_000,
                                       "maxFeePerGas": 200 * GWEI, "maxPriorityFeePerGas": 2 * ORACLE_TIP})
        block = chain.mine()
        txs = block_txs(chain, block)
        assert update not in txs and all(s.tx.hash in txs for s in report.sent)
        assert not engine_events(chain, block, "Liquidation")
        skipped = engine_events(chain, block, "LiquidationSkipped")
        assert len(skipped) == orders
        receipts = [chain.w3.eth.get_transaction_receipt(s.tx.hash) for s in report.sent]
        assert all(r["status"] == 1 for r in receipts)      # skipped, never reverted
        gas = sum(r["gasUsed"] * r["effectiveGasPrice"] for r in receipts)

        bot.tick()
        assert bot.backrun is not None
        assert bot.backrun.stats.skipped_orders == orders and bot.backrun.stats.skipped_gas_wei == gas
        # Not a lost race: nothing is backed off, nothing recorded as lost; the real crash later is
        # liquidated at once.
        assert bot.store.backoffs(block) == {}
        assert bot.store.totals().lost == 0 and bot.store.totals().won == 0
        chain.set_price("ETH", 85)
        crash = chain.mine()
        tick = bot.tick()
        assert tick.sent, "the bot backed off after the skipped backrun"
        assert bot.backrun.owns(tick.sent[0].tx.hash) is False
        chain.mine()
        assert engine_events(chain, crash + 1, "Liquidation")
    finally:
        bot.stop()


def test_pending_transactions_that_publish_no_price_are_ignored(chain: Chain, tmp_path: Path) -> None:
    bot = make_bot(chain, tmp_path)
    try:
        warm_up(chain, bot)
        gas = {"gas": 300_000, "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": ORACLE_TIP}
        feed = chain.dep.feed_contract("ETH")
        feed.functions.set_updater(chain.owner).transact({"from": chain.owner, **gas})   # the feed, another function
        chain.w3.eth.send_transaction({"from": chain.owner, "to": chain.traders[0], "value": 1, **gas})
        data = "0x" + encode_call(SET_ANSWER, 100 * 10**8).hex()                           # set_answer, not a feed
        chain.w3.eth.send_transaction({"from": chain.owner, "to": chain.dep.quote, "data": data, **gas})
        # set_answer of a feed, from someone who is not its updater: it would revert.
        trader = chain.node.accounts[7][0]
        feed.functions.set_answer(100 * 10**8).transact({"from": trader, **gas})
        assert bot.poll_pending() is None
        assert bot.backrun is not None and bot.backrun.stats.updates == 0
        assert not bot.pending()
        assert bot.backrun.source.seen == 4        # type: ignore[attr-defined]
    finally:
        bot.stop()


def test_backrun_settings_are_checked_in_one_line() -> None:
    assert BotConfig.from_env(environ={}).backrun is True
    assert BotConfig.from_env(environ={"XMARGIN_BACKRUN": "off"}).backrun is False
    for env, problem in (({"XMARGIN_PENDING_POLL_INTERVAL_S": "0"}, "must be > 0 seconds"),
                         ({"XMARGIN_BACKRUN": "sometimes"}, "is not a boolean")):
        with pytest.raises(BotConfigError) as info:
            BotConfig.from_env(environ=env)
        text = str(info.value)
        assert problem in text and next(iter(env)) in text and "\n" not in text


@pytest.mark.parametrize("setting", [{"backrun": False}, {"preflight": "node"}], ids=["off", "node-preflight"])
def test_backrun_off_reads_no_pending_transactions(chain: Chain, tmp_path: Path, setting: dict[str, Any]) -> None:
    bot = make_bot(chain, tmp_path, **setting)
    try:
        bot.start()
        chain.set_price("ETH", 80)
        assert bot.poll_pending() is None and bot.backrun is None
        assert bot.rpc.count("eth_newPendingTransactionFilter") == 0
    finally:
        bot.stop()


def chain_healths(chain: Chain, block: int) -> dict[str, tuple[int, int, int]]:
    state = load_protocol(chain.w3, chain.dep, block)
    out = load_accounts(chain.w3, chain.dep, state, chain.traders, block_identifier=block)
    return {a: tuple(h) for a, h in out.items() if a != chain.dep.engine}


def engine_liquidatable_after(chain: Chain, parent: int, updates: list[str]) -> set[str]:
    """The traders the engine's own health view finds liquidatable at block ``parent`` with the
    ``updates`` applied (the model of the feeds only: each update's answer replaces the feed's)."""
    state = load_protocol(chain.w3, chain.dep, parent)
    load_accounts(chain.w3, chain.dep, state, chain.traders, block_identifier=parent)
    for h in updates:
        tx = chain.w3.eth.get_transaction(h)
        (answer,) = decode_call(SET_ANSWER, bytes(tx["input"]))
        state.feeds[Web3.to_checksum_address(tx["to"])].answer = answer
    return {a for a, acc in state.accounts.items() if health(state, acc).maint_health < 0}


def test_running_bot_backruns_between_heads_on_a_chain_with_a_block_time(chain: Chain, tmp_path: Path) -> None:
    """The live loop (``Liquidator.run``): heads polled every ``poll_interval_s``, the pending
    transactions read in between; the chain mines a block every 2 s by itself."""
    bot = make_bot(chain, tmp_path, poll_interval_s=0.5, pending_poll_interval_s=0.05)
    for asset in ("ETH", "BTC"):
        chain.set_price(asset, 100)
    chain.mine()
    thread = threading.Thread(target=bot.run, kwargs={"install_signals": False}, daemon=True)
    with chain.node.ticking(2.0):
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while bot.backrun is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert bot.backrun is not None, "the loop never read the pending transactions"
            start = chain.w3.eth.block_number
            while chain.w3.eth.block_number == start and time.monotonic() < deadline:
                time.sleep(0.02)   # right after a block: the update waits about 2 s for the next
            update = chain.set_price("ETH", 85)
            while chain.w3.eth.get_transaction(update)["blockNumber"] is None and time.monotonic() < deadline:
                time.sleep(0.05)
            block = chain.w3.eth.get_transaction(update)["blockNumber"]
            assert block is not None
        finally:
            bot.stop()
            thread.join(30)
    assert not thread.is_alive()
    events = engine_events(chain, block, "Liquidation")
    assert events and {ev.args["liquidator"] for ev in events} == {bot.address}
    txs = block_txs(chain, block)
    assert all(txs.index(ev.tx_hash) > txs.index(update) for ev in events)
    assert bot.backrun.stats.transactions >= 1


def test_no_backrun_while_the_mirror_is_not_exactly_at_its_head(chain: Chain, tmp_path: Path) -> None:
    """After a reorg the mirror re-reads what the dropped blocks touched through the Lens: the
    model cannot vouch for a pending price then, so the next head's tick acts instead."""
    bot = make_bot(chain, tmp_path)
    try:
        warm_up(chain, bot)
        chain.mine()
        bot.tick()
        chain.node.reorg(1)
        tick = bot.tick()
        assert tick.reorg_at is not None
        chain.set_price("ETH", 85)
        report = bot.poll_pending()
        assert report is not None and report.updates and not report.sends
        chain.mine()
        assert bot.tick().sent                 # the head's tick liquidates, one block later
    finally:
        bot.stop()


def test_cli_bot_run_backruns_and_reports_it(chain: Chain, tmp_path: Path) -> None:
    deployment = tmp_path / "deployment.json"
    chain.dep.save(deployment)
    keeper = Account.from_key(chain.liquidator_key).address
    for asset in ("ETH", "BTC"):
        chain.set_price(asset, 100)
    chain.mine()
    sent: list[str] = []
    listening = threading.Event()

    class Ready(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("backrun on"):
                listening.set()

    def oracle() -> None:   # once the bot reads the pending pool, a crash to backrun
        if listening.wait(60):
            time.sleep(0.3)
            sent.append(chain.set_price("ETH", 85))

    thread = threading.Thread(target=oracle, daemon=True)
    ready = Ready()
    logging.getLogger("bot.backrun").addHandler(ready)
    with chain.node.ticking(every_s=1.0):
        thread.start()
        try:
            result = CliRunner(env={"XMARGIN_POLL_INTERVAL_S": "0.1", "XMARGIN_PRIVATE_KEY": chain.liquidator_key}).invoke(
                cli, ["bot", "run", "--rpc", chain.node.url, "--deployment", str(deployment), "--db",
                      str(tmp_path / "bot.sqlite3"), "--max-blocks", "8", "--backrun", "--json"])
        finally:
            logging.getLogger("bot.backrun").removeHandler(ready)
        thread.join(60)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert sent and out["backrun"]["updates"] == 1 and out["backrun"]["orders"] >= 1, result.output
    assert out["backrun"]["skipped_orders"] == 0
    block = chain.w3.eth.get_transaction(sent[0])["blockNumber"]
    events = engine_events(chain, block, "Liquidation")
    assert events and {ev.args["liquidator"] for ev in events} == {keeper}
