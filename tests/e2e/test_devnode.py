"""End-to-end tests of the dev node (devnode) through plain JSON-RPC over HTTP.

The automine and block-time nodes used by web3 clients run in separate processes
(``python -m devnode``); the fee-ordering / mempool tests drive an in-process
``DevNode(block_time=...)`` whose block thread never fires, mining with ``mine_block()`` or
``evm_mine`` so the outcome is deterministic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from vyper.compiler import compile_code
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractLogicError

from devnode import DevNode

REPO_ROOT = Path(__file__).resolve().parents[2]
GWEI = 10**9
ERROR_STRING_SELECTOR = "0x08c379a0"

COUNTER_SOURCE = """
# pragma version 0.4.3

event Bumped:
    who: indexed(address)
    value: uint256

counter: public(uint256)

@external
def bump(x: uint256):
    self.counter += x
    log Bumped(who=msg.sender, value=x)

@external
@view
def now() -> uint256:
    return block.timestamp

@external
def boom():
    raise "boom"
"""


# --------------------------------------------------------------------------- helpers


def rpc_raw(url: str, payload: Any) -> Any:
    """POST a JSON-RPC payload (object or batch array) and return the decoded response."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def rpc(url: str, method: str, params: list[Any] | None = None) -> dict[str, Any]:
    response = rpc_raw(url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    assert response["jsonrpc"] == "2.0" and response["id"] == 1
    return response


def result(url: str, method: str, params: list[Any] | None = None) -> Any:
    response = rpc(url, method, params)
    assert "error" not in response, response
    return response["result"]


def signed_transfer(
    key: str,
    chain_id: int,
    nonce: int,
    tip: int,
    max_fee: int = 50 * GWEI,
    to: str = "0x000000000000000000000000000000000000dEaD",
) -> str:
    tx = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "to": to,
        "value": 1,
        "gas": 21_000,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": tip,
    }
    return "0x" + bytes(Account.sign_transaction(tx, key).raw_transaction).hex()


class SpawnedNode:
    """``python -m devnode`` in a child process."""

    def __init__(self, *args: str) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devnode", "--port", "0", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        killer = threading.Timer(60.0, self.proc.kill)  # never hang the suite on a stuck start
        killer.start()
        try:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
        finally:
            killer.cancel()
        if not line.startswith("listening on http://"):
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"dev node failed to start: {line!r}\n{self.log.read()}")
        self.url = line.split("listening on ", 1)[1].strip()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def counter_artifacts() -> dict[str, Any]:
    return compile_code(COUNTER_SOURCE, output_formats=["abi", "bytecode"])


@pytest.fixture(scope="module")
def automine_node() -> Iterator[SpawnedNode]:
    node = SpawnedNode()
    try:
        yield node
    finally:
        returncode = node.stop()
    assert returncode == 0, "dev node did not exit cleanly on SIGTERM"


# Not named `w3`: tests/conftest.py wraps every test using a `w3` fixture in its own chain snapshot.
@pytest.fixture(scope="module")
def node_w3(automine_node: SpawnedNode) -> Web3:
    client = Web3(HTTPProvider(automine_node.url))
    assert client.is_connected()
    return client


@pytest.fixture
def blocktime_node() -> Iterator[DevNode]:
    # The block thread never fires during a test: blocks come from mine_block() / evm_mine.
    node = DevNode(block_time=3600, port=0)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def deploy_counter(client: Web3, artifacts: dict[str, Any], sender: str) -> Any:
    factory = client.eth.contract(abi=artifacts["abi"], bytecode=artifacts["bytecode"])
    receipt = client.eth.wait_for_transaction_receipt(factory.constructor().transact({"from": sender}))
    assert receipt["status"] == 1
    return client.eth.contract(address=receipt["contractAddress"], abi=artifacts["abi"])


# --------------------------------------------------------------------------- automine, separate process


def test_web3_deploy_transact_logs_and_revert_reason(
    node_w3: Web3, counter_artifacts: dict[str, Any]
) -> None:
    w3 = node_w3
    sender = w3.eth.accounts[0]
    assert len(w3.eth.accounts) == 10
    assert w3.eth.get_balance(sender) > 10**18
    counter = deploy_counter(w3, counter_artifacts, sender)
    assert len(w3.eth.get_code(counter.address)) > 0

    start_block = w3.eth.block_number
    tx_hash = counter.functions.bump(7).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1
    assert receipt["blockNumber"] == start_block + 1  # automine: one block per transaction
    assert counter.functions.counter().call() == 7
    tx = w3.eth.get_transaction(tx_hash)
    assert tx["blockNumber"] == receipt["blockNumber"] and tx["from"] == sender

    events = counter.events.Bumped().get_logs(from_block=receipt["blockNumber"])
    assert [(e["args"]["who"], e["args"]["value"]) for e in events] == [(sender, 7)]
    topic0 = receipt["logs"][0]["topics"][0]
    raw_logs = w3.eth.get_logs({"fromBlock": 0, "address": counter.address, "topics": [topic0]})
    assert [log["transactionHash"] for log in raw_logs] == [tx_hash]
    assert w3.eth.get_logs({"fromBlock": 0, "address": counter.address, "topics": ["0x" + "11" * 32]}) == []

    with pytest.raises(ContractLogicError) as call_error:
        counter.functions.boom().call()
    assert call_error.value.message == "execution reverted: boom"
    assert str(call_error.value.data).startswith(ERROR_STRING_SELECTOR)
    with pytest.raises(ContractLogicError, match="execution reverted: boom"):
        counter.functions.boom().transact({"from": sender})

    # The wire format is geth's: code 3, reason in the message, ABI-encoded Error(string) as data.
    boom_data = counter.functions.boom()._encode_transaction_data()
    response = rpc(w3.provider.endpoint_uri, "eth_call", [{"to": counter.address, "data": boom_data}, "latest"])
    assert response["error"]["code"] == 3
    assert response["error"]["message"] == "execution reverted: boom"
    assert response["error"]["data"] == (
        ERROR_STRING_SELECTOR + "20".rjust(64, "0") + "4".rjust(64, "0") + b"boom".hex().ljust(64, "0")
    )
    estimate = rpc(w3.provider.endpoint_uri, "eth_estimateGas", [{"from": sender, "to": counter.address, "data": boom_data}])
    assert estimate["error"]["code"] == 3 and estimate["error"]["message"] == "execution reverted: boom"


def test_snapshot_revert_and_time(node_w3: Web3, counter_artifacts: dict[str, Any]) -> None:
    w3 = node_w3
    url = w3.provider.endpoint_uri
    sender = w3.eth.accounts[1]
    counter = deploy_counter(w3, counter_artifacts, sender)
    w3.eth.wait_for_transaction_receipt(counter.functions.bump(1).transact({"from": sender}))

    # Block timestamps follow the wall clock.
    latest = w3.eth.get_block("latest")
    assert abs(latest["timestamp"] - time.time()) < 30

    snapshot_id = result(url, "evm_snapshot")
    block_at_snapshot = w3.eth.block_number
    w3.eth.wait_for_transaction_receipt(counter.functions.bump(41).transact({"from": sender}))
    assert counter.functions.counter().call() == 42
    assert result(url, "evm_revert", [snapshot_id]) is True
    assert w3.eth.block_number == block_at_snapshot
    assert counter.functions.counter().call() == 1
    assert result(url, "evm_revert", ["0x7777"]) is False

    # evm_increaseTime moves the next blocks' timestamps forward.
    before = w3.eth.get_block("latest")["timestamp"]
    wall_clock = int(time.time())
    result(url, "evm_increaseTime", [3600])
    result(url, "evm_mine")
    after = w3.eth.get_block("latest")["timestamp"]
    assert wall_clock + 3600 <= after <= max(before, wall_clock) + 3600 + 30
    assert counter.functions.now().call() == after

    # evm_mine with an explicit timestamp mines exactly that timestamp; later blocks continue on.
    target = after + 1000
    result(url, "evm_mine", [target])
    assert w3.eth.get_block("latest")["timestamp"] == target
    w3.eth.wait_for_transaction_receipt(counter.functions.bump(1).transact({"from": sender}))
    assert target < w3.eth.get_block("latest")["timestamp"] <= target + 60


def test_jsonrpc_errors_and_batches(automine_node: SpawnedNode) -> None:
    url = automine_node.url
    assert rpc(url, "eth_doesNotExist")["error"]["code"] == -32601
    assert rpc(url, "eth_getBalance", ["0x1234", "latest"])["error"]["code"] == -32602
    assert rpc(url, "eth_getBlockByNumber", ["yesterday", False])["error"]["code"] == -32602
    assert rpc(url, "eth_sendRawTransaction", [])["error"]["code"] == -32602
    assert rpc(url, "eth_getBlockByNumber", ["0xffffff", False])["result"] is None

    batch = rpc_raw(
        url,
        [
            {"jsonrpc": "2.0", "id": 10, "method": "eth_chainId", "params": []},
            {"jsonrpc": "2.0", "id": 11, "method": "net_version", "params": []},
            {"jsonrpc": "2.0", "id": 12, "method": "nope", "params": []},
            {"jsonrpc": "2.0", "id": 13, "method": "eth_blockNumber"},
        ],
    )
    by_id = {item["id"]: item for item in batch}
    assert sorted(by_id) == [10, 11, 12, 13]
    assert int(by_id[10]["result"], 16) == int(by_id[11]["result"])
    assert by_id[12]["error"]["code"] == -32601
    assert by_id[13]["result"].startswith("0x")

    request = urllib.request.Request(url, data=b"{not json", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["error"]["code"] == -32700


# --------------------------------------------------------------------------- block time, separate process


def test_block_time_process_mines_in_background() -> None:
    node = SpawnedNode("--block-time", "0.5")
    try:
        client = Web3(HTTPProvider(node.url))
        first = client.eth.block_number
        sender, receiver = client.eth.accounts[0], client.eth.accounts[1]
        balance_before = client.eth.get_balance(receiver)
        tx_hash = client.eth.send_transaction({"from": sender, "to": receiver, "value": 12345})
        receipt = client.eth.wait_for_transaction_receipt(tx_hash, timeout=15, poll_latency=0.1)
        assert receipt["status"] == 1
        assert client.eth.get_balance(receiver) == balance_before + 12345
        deadline = time.time() + 10
        while client.eth.block_number < receipt["blockNumber"] + 2 and time.time() < deadline:
            time.sleep(0.1)
        assert client.eth.block_number >= receipt["blockNumber"] + 2  # empty blocks keep coming
        assert client.eth.block_number > first
    finally:
        assert node.stop() == 0


# --------------------------------------------------------------------------- block time, in process


def test_fee_priority_and_nonce_ordering(blocktime_node: DevNode) -> None:
    url = blocktime_node.url
    client = Web3(HTTPProvider(url))
    chain_id = client.eth.chain_id
    keys = [key for _address, key in blocktime_node.accounts]
    addresses = [address for address, _key in blocktime_node.accounts]
    assert addresses == client.eth.accounts
    assert all(Account.from_key(k).address == a for a, k in zip(addresses, keys, strict=True))

    start = client.eth.block_number
    low = client.eth.send_raw_transaction(signed_transfer(keys[1], chain_id, 0, tip=1 * GWEI))
    high = client.eth.send_raw_transaction(signed_transfer(keys[2], chain_id, 0, tip=3 * GWEI))
    mid = client.eth.send_raw_transaction(signed_transfer(keys[3], chain_id, 0, tip=2 * GWEI))
    # Sender 4: nonce 1 pays the most of all but must still come right after its nonce 0.
    first = client.eth.send_raw_transaction(signed_transfer(keys[4], chain_id, 0, tip=int(1.5 * GWEI)))
    second = client.eth.send_raw_transaction(signed_transfer(keys[4], chain_id, 1, tip=5 * GWEI))

    # Nothing is mined until the node builds a block.
    assert client.eth.block_number == start
    assert result(url, "eth_getTransactionReceipt", [second.to_0x_hex()]) is None
    assert client.eth.get_transaction(second)["blockNumber"] is None
    assert client.eth.get_transaction_count(addresses[4], "pending") == 2
    assert client.eth.get_transaction_count(addresses[4], "latest") == 0

    expected = [high, mid, first, second, low]
    pending_block = client.eth.get_block("pending", full_transactions=True)
    assert pending_block["number"] == start + 1
    assert [tx["hash"] for tx in pending_block["transactions"]] == expected

    blocktime_node.mine_block()
    block = client.eth.get_block("latest")
    assert block["number"] == start + 1
    assert list(block["transactions"]) == expected
    base_fee = block["baseFeePerGas"]
    tips = [1 * GWEI, 3 * GWEI, 2 * GWEI, int(1.5 * GWEI), 5 * GWEI]
    for tx_hash, tip in zip([low, high, mid, first, second], tips, strict=True):
        receipt = client.eth.get_transaction_receipt(tx_hash)
        assert receipt["status"] == 1 and receipt["blockNumber"] == start + 1
        assert receipt["effectiveGasPrice"] == base_fee + tip
    assert client.eth.get_transaction_count(addresses[4], "latest") == 2
    assert result(url, "txpool_content") == {"pending": {}, "queued": {}}


def test_replacement_requires_ten_percent_bump(blocktime_node: DevNode) -> None:
    url = blocktime_node.url
    client = Web3(HTTPProvider(url))
    chain_id = client.eth.chain_id
    address, key = blocktime_node.accounts[5]

    original = result(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 0, tip=2 * GWEI, max_fee=40 * GWEI)])
    too_cheap = rpc(
        url,
        "eth_sendRawTransaction",
        [signed_transfer(key, chain_id, 0, tip=int(2.1 * GWEI), max_fee=42 * GWEI)],  # +5%
    )
    assert too_cheap["error"]["code"] == -32000
    assert too_cheap["error"]["message"] == "replacement transaction underpriced"
    assert result(url, "eth_getTransactionByHash", [original])["hash"] == original

    replacement = result(
        url,
        "eth_sendRawTransaction",
        [signed_transfer(key, chain_id, 0, tip=int(2.2 * GWEI), max_fee=44 * GWEI)],  # +10%
    )
    assert replacement != original
    assert result(url, "eth_getTransactionByHash", [original]) is None
    pool = result(url, "txpool_content")
    assert pool["pending"] == {address: {"0": result(url, "eth_getTransactionByHash", [replacement])}}

    assert result(url, "evm_mine") == "0x0"
    block = client.eth.get_block("latest")
    assert [h.to_0x_hex() for h in block["transactions"]] == [replacement]
    assert result(url, "eth_getTransactionReceipt", [original]) is None
    assert int(result(url, "eth_getTransactionReceipt", [replacement])["status"], 16) == 1


def test_pending_views_and_queued_transactions(blocktime_node: DevNode) -> None:
    url = blocktime_node.url
    chain_id = int(result(url, "eth_chainId"), 16)
    address, key = blocktime_node.accounts[6]
    other_address, other_key = blocktime_node.accounts[7]
    pending_filter = result(url, "eth_newPendingTransactionFilter")
    block_filter = result(url, "eth_newBlockFilter")
    assert result(url, "eth_getFilterChanges", [pending_filter]) == []

    a0 = result(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 0, tip=1 * GWEI)])
    a1 = result(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 1, tip=1 * GWEI)])
    gap = result(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 5, tip=9 * GWEI)])
    b0 = result(url, "eth_sendRawTransaction", [signed_transfer(other_key, chain_id, 0, tip=2 * GWEI)])
    next_base_fee = int(result(url, "eth_getBlockByNumber", ["pending", False])["baseFeePerGas"], 16)
    underpaid = result(
        url,
        "eth_sendRawTransaction",
        [signed_transfer(other_key, chain_id, 1, tip=1, max_fee=next_base_fee - 1)],
    )

    assert result(url, "eth_getFilterChanges", [pending_filter]) == [a0, a1, gap, b0, underpaid]
    assert result(url, "eth_getFilterChanges", [pending_filter]) == []
    assert result(url, "eth_getTransactionCount", [address, "pending"]) == "0x2"  # gap not counted
    assert result(url, "eth_getTransactionCount", [other_address, "pending"]) == "0x2"
    assert result(url, "eth_getTransactionCount", [address, "latest"]) == "0x0"

    pending_block = result(url, "eth_getBlockByNumber", ["pending", False])
    assert pending_block["hash"] is None
    assert pending_block["transactions"] == [b0, a0, a1]  # gap is queued, underpaid fee cap waits
    pool = result(url, "txpool_content")
    assert sorted(pool["pending"][address]) == ["0", "1"]
    assert sorted(pool["pending"][other_address]) == ["0", "1"]
    assert pool["queued"] == {address: {"5": result(url, "eth_getTransactionByHash", [gap])}}
    assert result(url, "txpool_status") == {"pending": "0x4", "queued": "0x1"}

    number_before = int(result(url, "eth_blockNumber"), 16)
    result(url, "evm_mine")
    assert int(result(url, "eth_blockNumber"), 16) == number_before + 1
    mined = result(url, "eth_getBlockByNumber", ["latest", False])
    assert mined["transactions"] == [b0, a0, a1]
    assert result(url, "eth_getFilterChanges", [block_filter]) == [mined["hash"]]
    remaining = result(url, "txpool_content")
    assert remaining["pending"] == {other_address: {"1": result(url, "eth_getTransactionByHash", [underpaid])}}
    assert list(remaining["queued"]) == [address]
    assert result(url, "eth_uninstallFilter", [pending_filter]) is True
    assert rpc(url, "eth_getFilterChanges", [pending_filter])["error"]["code"] == -32000


def test_block_wide_log_indices_and_log_filters(
    blocktime_node: DevNode, counter_artifacts: dict[str, Any]
) -> None:
    url = blocktime_node.url
    client = Web3(HTTPProvider(url))
    deployer = client.eth.accounts[0]
    factory = client.eth.contract(abi=counter_artifacts["abi"], bytecode=counter_artifacts["bytecode"])
    deploy_hash = factory.constructor().transact({"from": deployer})
    blocktime_node.mine_block()
    counter = client.eth.contract(
        address=client.eth.get_transaction_receipt(deploy_hash)["contractAddress"], abi=counter_artifacts["abi"]
    )
    log_filter = result(url, "eth_newFilter", [{"address": counter.address}])

    cheap = counter.functions.bump(1).transact(
        {"from": client.eth.accounts[1], "maxPriorityFeePerGas": 1 * GWEI, "maxFeePerGas": 50 * GWEI}
    )
    rich = counter.functions.bump(2).transact(
        {"from": client.eth.accounts[2], "maxPriorityFeePerGas": 4 * GWEI, "maxFeePerGas": 50 * GWEI}
    )
    blocktime_node.mine_block()
    logs = client.eth.get_logs({"fromBlock": "latest", "address": counter.address})
    assert [(log["transactionHash"], log["logIndex"], log["transactionIndex"]) for log in logs] == [
        (rich, 0, 0),
        (cheap, 1, 1),
    ]
    changes = result(url, "eth_getFilterChanges", [log_filter])
    assert [(c["transactionHash"], c["logIndex"]) for c in changes] == [
        (rich.to_0x_hex(), "0x0"),
        (cheap.to_0x_hex(), "0x1"),
    ]
    assert result(url, "eth_getFilterChanges", [log_filter]) == []
    assert len(result(url, "eth_getFilterLogs", [log_filter])) == 2
    assert counter.functions.counter().call() == 3


def test_raw_transaction_validation() -> None:
    with DevNode(port=0) as node:
        url = node.url
        chain_id = int(result(url, "eth_chainId"), 16)
        address, key = node.accounts[0]

        first = result(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 0, tip=GWEI)])
        receipt = result(url, "eth_getTransactionReceipt", [first])
        assert receipt["status"] == "0x1" and receipt["blockNumber"] == "0x1"  # automine

        wrong_chain = rpc(url, "eth_sendRawTransaction", [signed_transfer(key, 1, 1, tip=GWEI)])
        assert wrong_chain["error"]["code"] == -32000 and "chain id" in wrong_chain["error"]["message"]

        replay = rpc(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 0, tip=2 * GWEI)])
        assert replay["error"]["message"].startswith("nonce too low")

        pauper = Account.create()
        broke = rpc(url, "eth_sendRawTransaction", [signed_transfer(pauper.key.hex(), chain_id, 0, tip=GWEI)])
        assert broke["error"]["message"].startswith("insufficient funds")

        garbage = rpc(url, "eth_sendRawTransaction", ["0x02c0ffee"])
        assert garbage["error"]["code"] == -32602

        assert result(url, "eth_getTransactionCount", [address, "pending"]) == "0x1"
        assert result(url, "txpool_content") == {"pending": {}, "queued": {}}


def test_set_automine_switches_between_mempool_and_instant_blocks(blocktime_node: DevNode) -> None:
    url = blocktime_node.url
    chain_id = int(result(url, "eth_chainId"), 16)
    _address, key = blocktime_node.accounts[8]
    start = int(result(url, "eth_blockNumber"), 16)
    waiting = result(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 0, tip=GWEI)])
    assert int(result(url, "eth_blockNumber"), 16) == start  # block time: it waits in the pool

    assert result(url, "evm_setAutomine", [True]) is True
    instant = result(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 1, tip=GWEI)])
    # The new transaction is mined at once, with what was waiting before it (nonce order).
    assert result(url, "eth_getTransactionReceipt", [instant])["status"] == "0x1"
    assert result(url, "eth_getTransactionReceipt", [waiting])["status"] == "0x1"
    assert result(url, "txpool_status") == {"pending": "0x0", "queued": "0x0"}

    assert result(url, "evm_setAutomine", [False]) is True
    parked = result(url, "eth_sendRawTransaction", [signed_transfer(key, chain_id, 2, tip=GWEI)])
    assert result(url, "eth_getTransactionReceipt", [parked]) is None
    result(url, "evm_mine")
    assert result(url, "eth_getTransactionReceipt", [parked])["status"] == "0x1"
    assert rpc(url, "evm_setAutomine", ["yes"])["error"]["code"] == -32602


def test_in_process_provider_answers_like_the_http_node() -> None:
    from devnode.provider import DevChainProvider

    w3 = Web3(DevChainProvider())
    assert w3.is_connected() and w3.client_version.startswith("xmargin-devnode/")
    sender, receiver = w3.eth.accounts[:2]
    before = w3.eth.get_balance(receiver)
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": sender, "to": receiver, "value": 7}))
    assert receipt.status == 1 and receipt.blockNumber == w3.eth.block_number == 1  # automine
    assert w3.eth.get_balance(receiver) == before + 7
    with w3.batch_requests() as batch:
        batch.add(w3.eth.get_balance(receiver))
        batch.add(w3.eth.get_block(1))
        balance, block = batch.execute()
    assert balance == before + 7 and block.transactions == [receipt.transactionHash]
    response = w3.provider.make_request("no_such_method", [])  # type: ignore[arg-type]
    assert response["error"]["code"] == -32601 and "does not exist" in response["error"]["message"]


def test_anvil_reorg_replaces_the_last_blocks_as_anvil_does(node_kind: str) -> None:
    """``anvil_reorg(depth, [])`` on the dev node and on anvil itself: the head keeps its number,
    the last ``depth`` blocks get other hashes and lose their transactions (not put back in the
    pool), a transaction still waiting in the pool stays there; a depth beyond the head is an
    error."""
    from nodes import NodeRpcError, start_node

    with start_node(node_kind) as node:
        w3 = Web3(HTTPProvider(node.url))
        sender, receiver = node.accounts[0][0], node.accounts[1][0]
        node.mine(3)
        kept = w3.eth.send_transaction({"from": sender, "to": receiver, "value": 1})
        fork = node.mine()
        dropped = w3.eth.send_transaction({"from": sender, "to": receiver, "value": 2})
        head = node.mine(2)
        old = {n: w3.eth.get_block(n)["hash"] for n in range(fork, head + 1)}
        waiting = w3.eth.send_transaction({"from": sender, "to": receiver, "value": 3})
        node.reorg(head - fork)
        assert node.block_number() == head
        assert w3.eth.get_block(fork)["hash"] == old[fork]
        assert w3.eth.get_block(fork + 1)["parentHash"] == old[fork]
        for number in range(fork + 1, head + 1):
            block = w3.eth.get_block(number)
            assert block["hash"] != old[number] and block["transactions"] == []
        assert node.request("eth_getTransactionReceipt", "0x" + kept.hex()) is not None
        assert node.request("eth_getTransactionByHash", "0x" + dropped.hex()) is None
        assert w3.eth.get_transaction_count(sender, "latest") == 1
        assert node.request("eth_getTransactionByHash", "0x" + waiting.hex()) is not None
        assert node.pending_count() == 1
        with pytest.raises(NodeRpcError):
            node.request("anvil_reorg", head + 1, [])
