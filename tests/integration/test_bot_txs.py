"""TxSender against the real engine on the in-process chain: preflight, dry run, nonces, replacement,
lost races, restarts.

eth-tester has two quirks that these tests work around without faking the chain:

* With auto-mining off it validates each new transaction against the *mined* state, so it cannot
  hold nonces n and n+1 of one sender at once. :class:`PendingBlockPool` (a layer right above the
  provider) hands raw transactions to the py-evm chain's pending block instead, as a real node's
  pool would; ``tester.mine_blocks`` then mines them together.
* ``tester.mine_blocks`` always empties its pool. :func:`mine_block_without_pool` mines a block
  straight from the py-evm backend, as another miner that ignores our transaction would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.logs import DISCARD
from web3.middleware import Web3Middleware

from bot.rpc import CountingRpc
from bot.store import Store
from bot.errors import TxError
from bot.txs import GWEI, Fees, FixedTip, NonceManager, TxSender

WAD = 10**18
LIQUIDATOR_KEY = "0x" + "1b" * 32
RIVAL_KEY = "0x" + "2c" * 32


class PendingBlockPool:
    """While auto-mining is off, put raw transactions into the chain's pending block, in order."""

    def __init__(self, w3: Web3, tester: Any) -> None:
        class Layer(Web3Middleware):
            def wrap_make_request(self, make_request):
                def middleware(method, params):
                    if method == "eth_sendRawTransaction" and not tester.auto_mine_transactions:
                        tx_hash = tester.backend.send_raw_transaction(HexBytes(params[0]))
                        return {"jsonrpc": "2.0", "id": 1, "result": "0x" + bytes(tx_hash).hex()}
                    return make_request(method, params)
                return middleware

        w3.middleware_onion.inject(Layer, name="pending_block_pool", layer=0)


def mine_block_without_pool(tester: Any, *raw_txs: bytes) -> None:
    """Mine one block holding ``raw_txs`` and none of the transactions waiting in eth-tester's pool."""
    for raw in raw_txs:
        tester.backend.send_raw_transaction(raw)
    tester.backend.mine_blocks(1)


@pytest.fixture
def bot_w3(w3):
    return Web3(w3.provider)


@pytest.fixture
def rpc(bot_w3) -> Iterator[CountingRpc]:
    r = CountingRpc(bot_w3, retries=1, backoff_s=0.0)
    yield r
    r.uninstall()


@pytest.fixture
def manual_mining(tester) -> Iterator[Any]:
    tester.disable_auto_mine_transactions()
    try:
        yield tester
    finally:
        tester.enable_auto_mine_transactions()


def funded(protocol, actors, key: str) -> Any:
    account = Account.from_key(key)
    protocol.w3.eth.send_transaction({"from": actors.owner.address, "to": account.address, "value": 10 * WAD})
    return account


@pytest.fixture
def liquidator(protocol, actors):
    return funded(protocol, actors, LIQUIDATOR_KEY)


@pytest.fixture
def rival(protocol, actors):
    """Another liquidator's funded account (funded before any test turns auto-mining off)."""
    return funded(protocol, actors, RIVAL_KEY)


@pytest.fixture
def underwater(protocol, actors) -> str:
    """A trader 9x long ETH-PERP on 1000 USDC, after ETH fell from 2000 to 1850."""
    trader = actors.trader
    protocol.deposit(trader, "USDC", protocol.units("USDC", 1000))
    protocol.trade(trader, "ETH-PERP", 45 * WAD // 10)
    protocol.set_price("ETH", 1850)
    assert protocol.health(trader.address)[2] < 0
    return trader.address


@pytest.fixture
def store(protocol, tmp_path) -> Iterator[Store]:
    s = Store(tmp_path / "bot.sqlite3", protocol.dep.chain_id, protocol.engine.address, protocol.dep.block)
    yield s
    s.close()


def engine_on(w3: Web3, protocol) -> Any:
    return w3.eth.contract(address=protocol.engine.address, abi=protocol.engine.abi)


def head(w3: Web3) -> tuple[int, int]:
    block = w3.eth.get_block("latest")
    return int(block["number"]), int(block["baseFeePerGas"])


def liquidate(sender: TxSender, w3: Web3, protocol, account: str, max_size: int = 2**255, **kw) -> Any:
    number, base = head(w3)
    fn = engine_on(w3, protocol).functions.liquidate(account, 0, max_size)
    return sender.send_call(fn, kind="liquidate", account=account, target=0, expected_profit_wei=10**15,
                            head_block=kw.pop("head_block", number), base_fee_wei=kw.pop("base_fee_wei", base), **kw)


def make_sender(w3: Web3, account: Any, **kw) -> TxSender:
    strategy = kw.pop("strategy", FixedTip(GWEI, max_fee_cap_wei=100 * GWEI))
    return TxSender(w3, account, strategy, **kw)


# ---------------------------------------------------------------------- preflight and dry run


def test_preflight_catches_a_healthy_revert_without_signing(protocol, actors, bot_w3, rpc, liquidator, store):
    sender = make_sender(bot_w3, liquidator, store=store)
    result = liquidate(sender, bot_w3, protocol, actors.trader2.address)
    assert result.status == "preflight_failed" and not result.sent
    assert result.preflight.reason == "healthy" and result.preflight.lost_race
    assert rpc.count("eth_sendRawTransaction") == 0 and rpc.count("eth_estimateGas") == 0
    assert sender.nonces.peek() is None  # no nonce was even asked for
    assert store.txs() == [] and sender.stats.preflight_failed == 1


def test_dry_run_decides_but_sends_nothing(protocol, bot_w3, rpc, liquidator, underwater, store, caplog):
    caplog.set_level(logging.INFO, logger="bot.txs")
    sender = make_sender(bot_w3, liquidator, store=store, dry_run=True)
    position = protocol.position(underwater, "ETH-PERP")
    result = liquidate(sender, bot_w3, protocol, underwater)
    assert result.status == "dry_run" and result.preflight.ok and result.fees is not None
    assert sender.stats.dry_run == 1 and sender.stats.sent == 0
    assert rpc.count("eth_sendRawTransaction") == 0
    assert protocol.position(underwater, "ETH-PERP") == position
    assert protocol.w3.eth.get_transaction_count(liquidator.address) == 0
    assert store.txs() == [] and sender.in_flight == []
    assert "dry run: would send liquidate" in caplog.text


def test_fee_cap_below_base_fee_sends_nothing(protocol, bot_w3, rpc, liquidator, underwater):
    sender = make_sender(bot_w3, liquidator, strategy=FixedTip(GWEI, max_fee_cap_wei=5 * GWEI))
    result = liquidate(sender, bot_w3, protocol, underwater, base_fee_wei=10 * GWEI)
    assert result.status == "fee_too_low" and rpc.count("eth_sendRawTransaction") == 0


# ---------------------------------------------------------------------- sending and settling


def test_liquidation_is_sent_tracked_and_settled(protocol, bot_w3, rpc, liquidator, underwater, store):
    sender = make_sender(bot_w3, liquidator, store=store)
    result = liquidate(sender, bot_w3, protocol, underwater)
    assert result.sent and result.tx.nonce == 0
    assert rpc.count("eth_sendRawTransaction") == 1 and rpc.count("eth_call") == 1
    assert sender.pending_for(underwater, 0) and store.pending_for(underwater, 0)  # no second send
    number, base = head(bot_w3)
    outcomes = sender.check_pending(number, base)
    assert [o.status for o in outcomes] == ["mined"]
    receipt = outcomes[0].receipt
    events = protocol.engine.events.Liquidation().process_receipt(receipt, errors=DISCARD)
    assert events[0]["args"]["liquidator"] == liquidator.address and events[0]["args"]["account"] == underwater
    assert protocol.quote.functions.balanceOf(liquidator.address).call() == events[0]["args"]["keeper_reward"] > 0
    saved = store.tx(result.tx.hash)
    assert saved.status == "mined" and saved.gas_cost_wei == receipt["gasUsed"] * receipt["effectiveGasPrice"] > 0
    assert not store.pending_for(underwater, 0) and sender.in_flight == []
    assert sender.check_pending(number + 1) == []  # nothing in flight: no request
    assert sender.stats.gas_spent_wei == saved.gas_cost_wei


def test_three_liquidations_go_out_in_one_block(protocol, bot_w3, rpc, liquidator, underwater, manual_mining):
    PendingBlockPool(bot_w3, manual_mining)
    sender = make_sender(bot_w3, liquidator)
    size_before = protocol.position(underwater, "ETH-PERP")[0]
    results = [liquidate(sender, bot_w3, protocol, underwater, max_size=WAD // 10) for _ in range(3)]
    assert [r.status for r in results] == ["sent"] * 3
    assert [r.tx.nonce for r in results] == [0, 1, 2]
    assert rpc.count("eth_getTransactionCount") == 1  # one sync, then the manager counts itself
    manual_mining.mine_blocks(1)
    number, base = head(bot_w3)
    outcomes = sender.check_pending(number, base)
    assert [o.status for o in outcomes] == ["mined"] * 3
    assert {o.receipt["blockNumber"] for o in outcomes} == {number}
    assert protocol.position(underwater, "ETH-PERP")[0] == size_before - 3 * WAD // 10


def test_a_rival_first_in_the_same_block_is_a_lost_race(protocol, bot_w3, rpc, liquidator, rival, underwater,
                                                        store, manual_mining):
    PendingBlockPool(bot_w3, manual_mining)
    rival_sender = make_sender(bot_w3, rival)
    sender = make_sender(bot_w3, liquidator, store=store)
    assert liquidate(rival_sender, bot_w3, protocol, underwater).sent     # the rival's lands first
    ours = liquidate(sender, bot_w3, protocol, underwater)
    assert ours.sent and ours.preflight.ok                                 # our preflight saw the old state
    manual_mining.mine_blocks(1)
    number, base = head(bot_w3)
    outcome = sender.check_pending(number, base)[0]
    assert outcome.status == "reverted" and outcome.lost_race
    assert outcome.revert_reason in {"healthy", "no position"}
    assert outcome.gas_cost_wei > 0 and store.tx(ours.tx.hash).status == "reverted"
    assert store.tx(ours.tx.hash).revert_reason == outcome.revert_reason


def test_nonce_used_by_another_process_is_resynced(protocol, bot_w3, rpc, liquidator, underwater):
    sender = make_sender(bot_w3, liquidator)
    assert liquidate(sender, bot_w3, protocol, underwater, max_size=WAD // 10).tx.nonce == 0
    # the same key sends nonce 1 from elsewhere (another process, a wallet)
    other = liquidator.sign_transaction({
        "to": liquidator.address, "value": 0, "gas": 21_000, "maxFeePerGas": 10 * GWEI,
        "maxPriorityFeePerGas": GWEI, "nonce": 1, "chainId": protocol.w3.eth.chain_id,
    })
    protocol.w3.eth.send_raw_transaction(other.raw_transaction)
    result = liquidate(sender, bot_w3, protocol, underwater, max_size=WAD // 10)
    assert result.sent and result.tx.nonce == 2
    assert protocol.w3.eth.get_transaction_receipt(result.tx.hash)["status"] == 1


def test_nonce_manager_release_and_resync(protocol, bot_w3, liquidator):
    nonces = NonceManager(bot_w3, liquidator.address)
    assert [nonces.next() for _ in range(3)] == [0, 1, 2]
    nonces.release(1)                 # never accepted: handed out again first
    assert nonces.next() == 1 and nonces.next() == 3
    nonces.release(3)
    assert nonces.peek() == 3
    assert nonces.resync() == 0       # the node knows of none of them
    assert nonces.next() == 0


# ---------------------------------------------------------------------- stuck transactions


def test_stuck_transaction_is_replaced_with_bumped_fees(protocol, bot_w3, rpc, liquidator, underwater, store,
                                                        manual_mining):
    sender = make_sender(bot_w3, liquidator, store=store, stuck_after_blocks=2)
    first = liquidate(sender, bot_w3, protocol, underwater)
    assert first.sent
    old = first.tx
    mine_block_without_pool(manual_mining)
    number, base = head(bot_w3)
    assert sender.check_pending(number, base) == [] and sender.stats.replacements == 0  # not stuck yet
    mine_block_without_pool(manual_mining)
    number, base = head(bot_w3)
    assert sender.check_pending(number, base) == []
    assert sender.stats.replacements == 1 and rpc.count("eth_sendRawTransaction") == 2
    new = sender.in_flight[0]
    assert new.nonce == old.nonce and new.hash != old.hash and new.replaces == old.hash
    assert new.max_fee_wei * 8 >= old.max_fee_wei * 9 and new.tip_wei * 8 >= old.tip_wei * 9  # >= 12.5 %
    assert new.kind == "liquidate" and new.data == old.data
    assert len(store.pending_for(underwater, 0)) == 2   # both in flight until one is mined

    manual_mining.mine_blocks(1)
    number, base = head(bot_w3)
    outcome = sender.check_pending(number, base)[0]
    assert outcome.status == "mined" and outcome.tx.hash == new.hash and outcome.superseded == (old.hash,)
    assert store.tx(old.hash).status == "replaced" and store.tx(old.hash).replaced_by == new.hash
    assert store.tx(new.hash).status == "mined"
    with pytest.raises(TransactionNotFound):
        protocol.w3.eth.get_transaction_receipt(old.hash)


def test_stuck_liquidation_a_rival_made_void_is_cancelled(protocol, bot_w3, liquidator, rival, underwater, store,
                                                          manual_mining):
    sender = make_sender(bot_w3, liquidator, store=store, stuck_after_blocks=1)
    ours = liquidate(sender, bot_w3, protocol, underwater)
    assert ours.sent
    mine_block_without_pool(manual_mining, raw_liquidation(protocol, rival, underwater))  # theirs, not ours
    with pytest.raises(Exception, match="healthy|no position"):
        protocol.engine.functions.liquidate(underwater, 0, 2**255).call({"from": liquidator.address})
    number, base = head(bot_w3)
    sender.check_pending(number, base)
    assert sender.stats.cancels == 1
    cancel = sender.in_flight[0]
    assert cancel.kind == "cancel" and cancel.to_address == liquidator.address and cancel.gas_limit == 21_000
    assert cancel.nonce == ours.tx.nonce and cancel.max_fee_wei * 8 >= ours.tx.max_fee_wei * 9
    assert sender.pending_for(underwater) == [] and store.pending_for(underwater) == []  # a cancel is no liquidation
    manual_mining.mine_blocks(1)
    number, base = head(bot_w3)
    outcome = sender.check_pending(number, base)[0]
    assert outcome.status == "mined" and outcome.tx.kind == "cancel"
    assert outcome.gas_cost_wei == 21_000 * outcome.receipt["effectiveGasPrice"]


def raw_liquidation(protocol, rival: Any, account: str) -> bytes:
    """A rival's signed liquidation of all of ``account``'s ETH-PERP position."""
    fn = protocol.engine.functions.liquidate(account, 0, 2**255)
    tx = fn.build_transaction({
        "from": rival.address, "nonce": 0, "gas": 800_000, "maxFeePerGas": 50 * GWEI,
        "maxPriorityFeePerGas": 2 * GWEI, "chainId": protocol.w3.eth.chain_id,
    })
    return bytes(rival.sign_transaction(tx).raw_transaction)


def test_replacement_above_the_fee_cap_is_not_sent(protocol, bot_w3, rpc, liquidator, underwater, manual_mining,
                                                   caplog):
    number, base = head(bot_w3)
    cap = 2 * base + GWEI   # exactly the first max fee: no room for a 12.5 % bump
    sender = make_sender(bot_w3, liquidator, strategy=FixedTip(GWEI, max_fee_cap_wei=cap), stuck_after_blocks=1)
    assert liquidate(sender, bot_w3, protocol, underwater).sent
    mine_block_without_pool(manual_mining)
    sender.check_pending(*head(bot_w3))
    assert sender.stats.replacements == 0 and rpc.count("eth_sendRawTransaction") == 1
    assert "exceeds the cap" in caplog.text


# ---------------------------------------------------------------------- restart


def test_restart_resumes_in_flight_transactions(protocol, bot_w3, liquidator, underwater, store, manual_mining):
    first = make_sender(bot_w3, liquidator, store=store)
    sent = liquidate(first, bot_w3, protocol, underwater)
    assert sent.sent
    del first  # the process dies here

    again = make_sender(bot_w3, liquidator, store=store)
    assert again.in_flight == []
    assert again.restore() == 1
    assert [t.hash for t in again.pending_for(underwater, 0)] == [sent.tx.hash]
    assert store.pending_for(underwater, 0)       # the main loop sees it is in flight: no double liquidation
    manual_mining.mine_blocks(1)
    outcome = again.check_pending(*head(bot_w3))[0]
    assert outcome.status == "mined" and outcome.tx.hash == sent.tx.hash
    assert store.tx(sent.tx.hash).status == "mined" and not store.pending_for(underwater, 0)


def test_replace_with_given_fees_needs_the_bump_and_is_followed(protocol, bot_w3, rpc, liquidator, underwater, store,
                                                               manual_mining):
    sender = make_sender(bot_w3, liquidator, store=store)
    old = liquidate(sender, bot_w3, protocol, underwater).tx
    too_low = Fees(old.max_fee_wei * 9 // 8, old.tip_wei * 9 // 8 - 1)
    with pytest.raises(TxError, match="underpriced") as info:
        sender.replace(old, too_low)
    assert info.value.kind == "underpriced" and rpc.count("eth_sendRawTransaction") == 1

    fees = Fees(old.max_fee_wei * 2, old.tip_wei * 2)
    new = sender.replace(old, fees, head_block=old.sent_block + 1)
    assert new.nonce == old.nonce and new.replaces == old.hash and new.data == old.data
    assert (new.max_fee_wei, new.tip_wei, new.sent_block) == (fees.max_fee_per_gas, fees.max_priority_fee_per_gas,
                                                              old.sent_block + 1)
    assert sender.stats.replacements == 1 and rpc.count("eth_sendRawTransaction") == 2
    assert store.tx(old.hash).replaced_by == new.hash
    manual_mining.mine_blocks(1)
    number, base = head(bot_w3)
    outcome = sender.check_pending(number, base)[0]
    assert outcome.status == "mined" and outcome.tx.hash == new.hash and outcome.superseded == (old.hash,)


def test_batch_members_refused_as_nonce_too_high_go_again_in_order():
    """A node that runs a batch's members concurrently and mines each at once (Hardhat's automine)
    refuses nonces whose predecessors it has not mined yet ("nonce too high"). The sender sends
    those again one by one, in nonce order, and nothing is lost or sent twice."""
    from devnode.provider import DevChainProvider
    from bot.txs import Preflight, TxRequest

    w3 = Web3(DevChainProvider())
    key = Account.create()
    funder = w3.eth.accounts[0]
    w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": funder, "to": key.address, "value": 10**18}))

    class OutOfOrderBatches(Web3Middleware):
        """Forwards the first member of a batch of raw transactions; answers the rest like a node
        that saw them before the first one was mined."""

        def wrap_make_batch_request(self, make_batch_request):
            def middleware(requests_info):
                if requests_info and all(m == "eth_sendRawTransaction" for m, _ in requests_info):
                    first = make_batch_request(requests_info[:1])
                    refused = [{"jsonrpc": "2.0", "id": i + 1, "error": {
                        "code": -32000, "message": "Nonce too high. Expected nonce to be 1 but got 2."}}
                        for i in range(1, len(requests_info))]
                    return list(first) + refused
                return make_batch_request(requests_info)
            return middleware

    w3.middleware_onion.inject(OutOfOrderBatches, name="out_of_order", layer=0)
    sender = make_sender(w3, key)
    sink = w3.eth.accounts[3]
    before = w3.eth.get_balance(sink)
    items = [(TxRequest(sink, "0x", "transfer", sink, i, 21_000, value=1000 + i), Preflight(True)) for i in range(4)]
    results = sender.send_many(items, base_fee_wei=int(w3.eth.get_block("latest")["baseFeePerGas"]), head_block=1)
    assert [r.status for r in results] == ["sent"] * 4
    assert [r.tx.nonce for r in results] == [0, 1, 2, 3]
    assert w3.eth.get_transaction_count(key.address) == 4
    assert w3.eth.get_balance(sink) == before + sum(1000 + i for i in range(4))
