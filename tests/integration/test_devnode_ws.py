"""The dev node's WebSocket (devnode/ws.py): JSON-RPC on the HTTP port, ``eth_subscribe`` for
``newHeads``, ``logs`` (with ``removed`` on a reorg) and ``newPendingTransactions``, bad frames and
bad JSON, clients that vanish, and a clean close when the node stops. A real dev node on a free
port; the client is the ``websockets`` library (and a raw socket for frames it would never send)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from eth_account import Account
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from devnode import DevNode
from devnode.ws import OP_CLOSE, OP_TEXT, encode_frame, read_frame

TOPIC = "0x" + "ab" * 32
OTHER_TOPIC = "0x" + "cd" * 32
# Runtime code: LOG1(memory[0:32] = 42, topic TOPIC); STOP. Each call logs once.
RUNTIME = bytes.fromhex("602a600052" + "7f" + TOPIC[2:] + "60206000a100")
INIT = bytes.fromhex(f"60{len(RUNTIME):02x}600c60003960{len(RUNTIME):02x}6000f3") + RUNTIME


@pytest.fixture()
def node() -> Iterator[DevNode]:
    dev = DevNode(port=0)                      # automine
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


@pytest.fixture()
def pooled_node() -> Iterator[DevNode]:
    dev = DevNode(block_time=3600, port=0)     # transactions wait in the pool
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


def http(node: DevNode, method: str, *params: Any) -> Any:
    answer = requests.post(node.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
                           timeout=10).json()
    assert "error" not in answer, answer
    return answer["result"]


def ws_call(ws: ClientConnection, method: str, *params: Any, request_id: int = 1) -> dict[str, Any]:
    ws.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}))
    return json.loads(ws.recv(timeout=10))


def subscribe(ws: ClientConnection, *params: Any) -> str:
    reply = ws_call(ws, "eth_subscribe", *params)
    assert isinstance(reply.get("result"), str), reply
    return reply["result"]


def notification(ws: ClientConnection, timeout: float = 10) -> tuple[str, Any]:
    message = json.loads(ws.recv(timeout=timeout))
    assert message["method"] == "eth_subscription", message
    return message["params"]["subscription"], message["params"]["result"]


def nothing_more(ws: ClientConnection, wait_s: float = 0.3) -> bool:
    try:
        ws.recv(timeout=wait_s)
    except TimeoutError:
        return True
    return False


def send_tx(node: DevNode, sender: int = 0, to: str | None = None, data: str = "0x", tip: int = 10**9) -> str:
    address, key = node.accounts[sender]
    nonce = int(http(node, "eth_getTransactionCount", address, "pending"), 16)
    tx = {"chainId": node.chain.chain_id, "nonce": nonce, "gas": 200_000, "maxFeePerGas": 10 * 10**9,
          "maxPriorityFeePerGas": tip, "value": 0, "data": data, "type": 2}
    if to is not None:
        tx["to"] = to
    raw = Account.sign_transaction(tx, key).raw_transaction
    return http(node, "eth_sendRawTransaction", "0x" + bytes(raw).hex())


def deploy_logger(node: DevNode) -> str:
    tx_hash = send_tx(node, data="0x" + INIT.hex())
    return http(node, "eth_getTransactionReceipt", tx_hash)["contractAddress"]


def test_json_rpc_calls_answer_as_over_http(node: DevNode) -> None:
    with connect(node.ws_url) as ws:
        assert ws_call(ws, "eth_chainId")["result"] == http(node, "eth_chainId")
        ws.send(json.dumps([{"jsonrpc": "2.0", "id": 7, "method": "eth_blockNumber"},
                            {"jsonrpc": "2.0", "method": "eth_chainId"},          # a notification: no answer
                            {"jsonrpc": "2.0", "id": 8, "method": "eth_nope"}]))
        batch = json.loads(ws.recv(timeout=10))
        assert [r["id"] for r in batch] == [7, 8]
        assert batch[0]["result"] == http(node, "eth_blockNumber")
        assert batch[1]["error"]["code"] == -32601
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 9, "method": "eth_chainId"}).encode())   # a binary frame
        assert json.loads(ws.recv(timeout=10))["result"] == http(node, "eth_chainId")
    # eth_subscribe is the WebSocket's: over HTTP it does not exist.
    answer = requests.post(node.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                           "params": ["newHeads"]}, timeout=10).json()
    assert answer["error"]["code"] == -32601


def test_new_heads_follow_every_block_until_unsubscribed(node: DevNode) -> None:
    with connect(node.ws_url) as ws:
        sub = subscribe(ws, "newHeads")
        http(node, "evm_mine")
        send_tx(node)                                        # automine: a block with one transaction
        heads = [notification(ws) for _ in range(2)]
        assert {s for s, _ in heads} == {sub}
        for _sub, header in heads:
            block = http(node, "eth_getBlockByNumber", header["number"], False)
            assert header["hash"] == block["hash"] and header["parentHash"] == block["parentHash"]
            assert header["logsBloom"] == block["logsBloom"] and "transactions" not in header
        assert [int(h["number"], 16) for _s, h in heads] == [1, 2]
        assert ws_call(ws, "eth_unsubscribe", sub)["result"] is True
        http(node, "evm_mine")
        assert nothing_more(ws)
        assert ws_call(ws, "eth_unsubscribe", sub)["result"] is False


def test_logs_match_the_filter_and_come_back_removed_after_a_reorg(node: DevNode) -> None:
    contract = deploy_logger(node)
    with connect(node.ws_url) as ws:
        ours = subscribe(ws, "logs", {"address": contract, "topics": [TOPIC]})
        other = subscribe(ws, "logs", {"address": contract, "topics": [OTHER_TOPIC]})
        heads = subscribe(ws, "newHeads")
        tx_hash = send_tx(node, to=contract)
        got = dict([notification(ws), notification(ws)])
        assert other not in got
        entry = got[ours]
        assert entry["transactionHash"] == tx_hash and entry["topics"] == [TOPIC] and entry["removed"] is False
        assert entry == http(node, "eth_getLogs", {"blockHash": entry["blockHash"]})[0]
        assert got[heads]["hash"] == entry["blockHash"]
        # The block is replaced: its log is sent again, removed, then the new (empty) block's header.
        http(node, "anvil_reorg", 1, [])
        sub, removed = notification(ws)
        assert sub == ours and removed == {**entry, "removed": True}
        sub, header = notification(ws)
        assert sub == heads and header["number"] == entry["blockNumber"] and header["hash"] != entry["blockHash"]
        assert nothing_more(ws)


def test_pending_transactions_are_pushed_when_the_pool_accepts_them(pooled_node: DevNode) -> None:
    node = pooled_node
    with connect(node.ws_url) as hashes_ws, connect(node.ws_url) as full_ws:
        by_hash = subscribe(hashes_ws, "newPendingTransactions")
        full = subscribe(full_ws, "newPendingTransactions", True)
        t0 = time.perf_counter()
        tx_hash = send_tx(node, sender=1, to=node.accounts[2][0], tip=7 * 10**9)
        assert notification(hashes_ws) == (by_hash, tx_hash)
        sub, tx = notification(full_ws)
        assert time.perf_counter() - t0 < 2.0
        assert http(node, "eth_blockNumber") == "0x0"          # still in the pool
        assert sub == full and tx["hash"] == tx_hash and tx["blockHash"] is None
        assert tx["from"] == node.accounts[1][0] and tx["to"] == node.accounts[2][0]
        assert int(tx["maxPriorityFeePerGas"], 16) == 7 * 10**9 and tx["type"] == "0x2"
        assert {"input", "nonce", "gas", "maxFeePerGas", "gasPrice"} <= set(tx)
        assert tx == http(node, "eth_getTransactionByHash", tx_hash)
        node.mine_block()
        assert nothing_more(hashes_ws) and nothing_more(full_ws)   # mining is not a new pending transaction


def test_bad_json_and_bad_requests_get_json_rpc_errors(node: DevNode) -> None:
    with connect(node.ws_url) as ws:
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == -32700
        ws.send(b"\xff\xfe")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == -32700
        ws.send("[]")
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == -32600
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 3}))
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == -32600
        for params in (["syncing"], ["nope"], ["logs", "not a filter"], ["logs", {"blockHash": "0x" + "00" * 32}], []):
            reply = ws_call(ws, "eth_subscribe", *params)
            assert reply["error"]["code"] == -32602, (params, reply)
        # The connection still works after all of that.
        assert ws_call(ws, "eth_chainId")["result"] == http(node, "eth_chainId")


def raw_ws(node: DevNode) -> tuple[socket.socket, Any]:
    """A WebSocket handshake by hand, for frames a library would refuse to send."""
    sock = socket.create_connection((node.host, node.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: {node.host}:{node.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    rfile = sock.makefile("rb")
    status = rfile.readline()
    assert b" 101 " in status, status
    while rfile.readline() not in (b"\r\n", b""):
        pass
    return sock, rfile


def test_a_frame_that_breaks_the_protocol_closes_that_connection_only(node: DevNode) -> None:
    with connect(node.ws_url) as bystander:
        subscribe(bystander, "newHeads")
        sock, rfile = raw_ws(node)
        try:
            # A masked request, then an unmasked frame (clients must mask): close 1002.
            sock.sendall(encode_frame(OP_TEXT, b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}', os.urandom(4)))
            fin, opcode, payload = read_frame(rfile, require_mask=False)
            assert opcode == OP_TEXT and json.loads(payload)["id"] == 1
            sock.sendall(encode_frame(OP_TEXT, b'{"id":2}'))
            fin, opcode, payload = read_frame(rfile, require_mask=False)
            assert opcode == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 1002
            assert rfile.read(1) == b""                       # and the node hangs up
        finally:
            sock.close()
        http(node, "evm_mine")
        assert int(notification(bystander)[1]["number"], 16) == 1


def test_a_client_vanishing_mid_stream_is_forgotten(node: DevNode) -> None:
    sock, rfile = raw_ws(node)
    sock.sendall(encode_frame(OP_TEXT, b'{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}',
                              os.urandom(4)))
    time.sleep(0.2)
    rfile.close()
    sock.close()                                           # no close frame: the TCP connection just ends
    for _ in range(5):
        http(node, "evm_mine")
    deadline = time.monotonic() + 5
    while node.ws_hub.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.ws_hub.connections == 0
    with connect(node.ws_url) as ws:
        assert ws_call(ws, "eth_blockNumber")["result"] == "0x5"


def test_handshake_errors_and_plain_get() -> None:
    dev = DevNode(port=0)
    dev.start()
    try:
        assert requests.get(dev.url, timeout=10).status_code == 405
        bad_key = requests.get(dev.url, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                 "Sec-WebSocket-Key": "short", "Sec-WebSocket-Version": "13"},
                               timeout=10)
        assert bad_key.status_code == 400
        old = requests.get(dev.url, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                             "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                                             "Sec-WebSocket-Version": "8"}, timeout=10)
        assert old.status_code == 426 and old.headers["Sec-WebSocket-Version"] == "13"
    finally:
        dev.stop()


def test_stopping_the_node_closes_its_websockets_cleanly() -> None:
    dev = DevNode(port=0)
    dev.start()
    ws = connect(dev.ws_url).__enter__()
    subscribe(ws, "newHeads")
    t0 = time.perf_counter()
    dev.stop()
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    ws.close()
