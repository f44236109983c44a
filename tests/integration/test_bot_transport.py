"""The bot's RPC layer against broken transports: a real node (the dev node over HTTP) behind
``tests/faultproxy.py``, one fault kind at a time, on every request path (single request, batch,
``eth_getLogs``). Each fault must be retried to the right answer, never surface as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from bot.errors import CircuitOpen, RpcError
from bot.rpc import CountingRpc
from bot.store import SentTx, Store
from bot.txs import FixedTip, TxRequest, TxSender
from protocol_model.logscan import LogScanner

from faultproxy import FAULT_KINDS, FaultProxy
from nodes import LocalNode, start_node

CLIENT_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with start_node("devnode") as n:
        n.mine(3)
        yield n


def client(proxy: FaultProxy, **kwargs: object) -> tuple[Web3, CountingRpc]:
    w3 = Web3(HTTPProvider(proxy.url, request_kwargs={"timeout": CLIENT_TIMEOUT_S}))
    settings = {"retries": 3, "backoff_s": 0.0, "backoff_max_s": 0.0, "breaker_threshold": 50}
    settings.update(kwargs)
    return w3, CountingRpc(w3, **settings)  # type: ignore[arg-type]


TRANSPORT_KINDS = [k for k in FAULT_KINDS if k != "rate_limit"]


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_a_single_request_survives_each_fault(node: LocalNode, kind: str) -> None:
    with FaultProxy(node.url, schedule=[kind, kind], stall_s=CLIENT_TIMEOUT_S + 0.5) as proxy:
        w3, rpc = client(proxy)
        block = w3.eth.get_block("latest")
        assert int(block["number"]) == node.block_number()
        assert proxy.stats.faults[kind] == 2
        stats = rpc.stats()
        assert stats.retries == 2 and stats.failures_by_method == {"eth_getBlockByNumber": 2}


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_a_batch_survives_each_fault(node: LocalNode, kind: str) -> None:
    with FaultProxy(node.url, schedule=[], stall_s=CLIENT_TIMEOUT_S + 0.5) as proxy:
        w3, rpc = client(proxy)
        proxy.fail_next(kind)
        with w3.batch_requests() as batch:
            batch.add(w3.eth.get_block(1))
            batch.add(w3.eth.get_block(2))
            blocks = batch.execute()
        assert [int(b["number"]) for b in blocks] == [1, 2]
        assert proxy.stats.faults[kind] == 1
        assert rpc.stats().retries == 1


def test_faults_beyond_the_retries_are_one_rpc_error_and_open_the_breaker(node: LocalNode) -> None:
    with FaultProxy(node.url, rate=1.0, only=["truncated", "http_502", "reset"], seed=3) as proxy:
        w3, rpc = client(proxy, retries=2, breaker_threshold=3)
        with pytest.raises(CircuitOpen) as info:
            w3.eth.get_block("latest")
        assert "\n" not in str(info.value) and isinstance(info.value, RpcError)
        assert rpc.breaker.state == "open"


def test_a_rate_limit_on_get_logs_is_retried_not_fatal(node: LocalNode) -> None:
    """-32005 "limit exceeded" on every other eth_getLogs: the scanner shrinks its range, and at one
    block backs off and retries; every block's logs come back."""
    head = node.block_number()
    with FaultProxy(node.url, schedule=["rate_limit", None] * 20, methods=["eth_getLogs"]) as proxy:
        w3, _rpc = client(proxy)
        scanner = LogScanner(w3, "0x" + "00" * 20, None, start_block=0, chunk=4, backoff_s=0.0)
        assert scanner.scan(head) == []
        assert scanner.next_block == head + 1
        assert proxy.stats.faults["rate_limit"] >= 2


def test_the_proxy_is_bounded_in_requests(node: LocalNode) -> None:
    with FaultProxy(node.url, rate=0.0, max_requests=2) as proxy:
        w3, _rpc = client(proxy, retries=0)
        w3.eth.get_block("latest")
        w3.eth.get_block("latest")
        with pytest.raises(RpcError):
            w3.eth.get_block("latest")
        assert proxy.stats.requests == 3


# ---------------------------------------------------------------------- sends whose reply is lost


@pytest.mark.parametrize("batched", [True, False])
def test_a_send_whose_reply_is_lost_after_the_node_mined_it_is_ours_not_a_lost_race(
        node: LocalNode, tmp_path: Path, batched: bool) -> None:
    """The node mines the transaction (automine), the answer stalls past the timeout, the retry is
    told "nonce too low": the sender asks the node for its hash and keeps it as sent, and the
    outcome is a mined transaction of ours, recorded once."""
    address, key = node.accounts[3]
    with FaultProxy(node.url, schedule=[], methods=["eth_sendRawTransaction"],
                    stall_s=CLIENT_TIMEOUT_S + 0.5) as proxy:
        w3, _rpc = client(proxy)
        chain_id = int(w3.eth.chain_id)
        store = Store(tmp_path / "bot.sqlite3", chain_id, address, 0)
        sender = TxSender(w3, Account.from_key(key), FixedTip(10**9), store=store, chain_id=chain_id)
        base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
        requests_ = [TxRequest(address, "0x", "liquidate", address, i, 21_000) for i in range(2 if batched else 1)]
        flights = sender.preflight_many([(r.to, r.data, 0) for r in requests_])
        head = node.block_number()
        with node.automine():
            proxy.fail_next("stall")   # the (batch of) eth_sendRawTransaction: mined, reply lost
            results = sender.send_many(list(zip(requests_, flights)), base_fee_wei=base_fee, head_block=head)
        assert proxy.stats.faults["stall"] == 1
        assert [r.status for r in results] == ["sent"] * len(requests_), [r.error for r in results]
        assert len(store.txs()) == len(requests_)
        outcomes = sender.check_pending(node.block_number())
        assert sorted(o.status for o in outcomes) == ["mined"] * len(requests_)
        assert {o.tx.hash for o in outcomes} == {r.tx.hash for r in results if r.tx is not None}
        assert [t.status for t in store.txs()] == ["mined"] * len(requests_)
        store.close()


def test_a_kill_between_the_record_and_the_broadcast_frees_the_nonce_on_restart(node: LocalNode,
                                                                             tmp_path: Path) -> None:
    """The record is committed before the broadcast; a process killed in between leaves a pending
    record the node never saw: the restarted sender drops it and resyncs its nonce."""
    address, key = node.accounts[4]
    w3 = Web3(HTTPProvider(node.url))
    chain_id = int(w3.eth.chain_id)
    store = Store(tmp_path / "bot.sqlite3", chain_id, address, 0)
    nonce = w3.eth.get_transaction_count(address, "pending")
    store.record_tx(SentTx(hash="0x" + "ee" * 32, nonce=nonce, sender=address, kind="liquidate", account=address,
                           target="0", to_address=address, data="0x", gas_limit=21_000, max_fee_wei=10**10,
                           tip_wei=10**9, sent_block=node.block_number()))
    sender = TxSender(w3, Account.from_key(key), FixedTip(10**9), store=store, chain_id=chain_id)
    assert sender.restore() == 1
    gone = sender.reconcile()
    assert [t.nonce for t in gone] == [nonce] and sender.in_flight == []
    assert store.pending_txs() == [] and store.tx("0x" + "ee" * 32).status == "dropped"
    assert sender.nonces.next() == nonce
    store.close()


# ---------------------------------------------------------------------- a node that restarts


def test_a_node_that_comes_back_as_another_chain_is_refused_not_rewound(node: LocalNode, tmp_path: Path) -> None:
    """The node is reset under a running bot (here: reverted to before the deployment, and the same
    deployment made again a block later, as a restarted dev node with the same deterministic
    addresses would have it): a deep "reorg" whose deployment block changed. The bot stops with one
    line that says what to do; it does not rewind the old chain's history."""
    from bot.config import BotConfig
    from bot.errors import StoreError
    from bot.liquidator import Liquidator
    from protocol_model.chain import Sender
    from protocol_model.deploy import DeployConfig, compile_contracts, deploy_protocol

    compile_contracts()
    w3 = Web3(HTTPProvider(node.url))
    before = node.snapshot()
    node.mine()                                        # the deployment's block (an empty one)
    with node.automine():
        dep = deploy_protocol(w3, Sender.unlocked(w3, 0), DeployConfig())
    cfg = BotConfig.from_env(environ={}, db_path=str(tmp_path / "bot.sqlite3"), lookback_blocks=2,
                             rpc_backoff_s=0.0, rpc_backoff_max_s=0.0)
    bot = Liquidator(Web3(HTTPProvider(node.url)), dep, Account.from_key(node.accounts[7][1]), cfg,
                     collateral_liquidation=False)
    try:
        bot.start()
        node.mine(3)
        bot.tick()
        last = bot.store.last_block
        node.revert(before)
        with node.automine():                          # another block where the deployment's was
            w3.eth.send_transaction({"from": node.accounts[1][0], "to": node.accounts[2][0], "value": 1})
            again = deploy_protocol(w3, Sender.unlocked(w3, 0), DeployConfig())
        assert again.engine == dep.engine
        assert "0x" + bytes(w3.eth.get_block(dep.block)["hash"]).hex() != bot.store.deployment_block_hash
        with pytest.raises(StoreError) as info:
            bot.tick()
        text = str(info.value)
        assert "another chain" in text and "--fresh-db" in text and "\n" not in text
        assert bot.store.last_block == last            # nothing rewound
    finally:
        bot.stop()
