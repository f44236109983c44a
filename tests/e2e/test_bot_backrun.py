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

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from bot.config import BotConfig
from bot.pending import SET_ANSWER, DecoderRegistry, FilterPendingSource, PriceUpdate, normalize_tx
from protocol_model.calls import encode_call, selector
from protocol_model.chain import Sender
from protocol_model.deploy import Deployment, DeployConfig, compile_contracts, deploy_protocol
from protocol_model.seeding import seed_accounts

from nodes import LocalNode, start_node

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
    compile_contracts()
    node = start_node(node_kind)
    try:
        w3 = Web3(HTTPProvider(node.url))
        liquidator_key = node.accounts[5][1]
        with node.automine():
            owner = Sender.unlocked(w3, 0)
            dep = deploy_protocol(w3, owner, DeployConfig())
            owner.send(dep.quote_contract.functions.mint(Account.from_key(liquidator_key).address, BOT_FUNDS * 10**6))
            traders = [p.address for p in seed_accounts(w3, dep, owner, N, SEED)]
        yield Chain(node, w3, dep, owner.address, traders, liquidator_key)
    finally:
        node.stop()


@pytest.fixture
def chain(module_chain: Chain) -> Iterator[Chain]:
    node = module_chain.node
    node.clear_mempool()
    snap = node.snapshot()
    try:
        yield module_chain
    finally:
        node.revert(snap)
        node.clear_mempool()


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
