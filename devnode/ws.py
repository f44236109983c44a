"""JSON-RPC over WebSocket for the dev node, on the HTTP port (like anvil), with subscriptions.

A ``GET`` with ``Upgrade: websocket`` on the node's HTTP port becomes a WebSocket (RFC 6455,
framing written here: text or binary messages, fragmentation, ping/pong, close). Each message is a
JSON-RPC request or batch, answered by the same :class:`~.rpc.RpcDispatcher` as HTTP, plus:

* ``eth_subscribe("newHeads")``: the header of every block mined (the block object without
  ``transactions``), in order, at the moment it is mined;
* ``eth_subscribe("logs", {"address": ..., "topics": [...]})``: the logs of each mined block that
  match; when the head goes back (``evm_revert``, ``anvil_reorg``) the logs of the dropped blocks
  that were sent are sent again with ``"removed": true`` (for the last :data:`REMOVED_WINDOW`
  blocks), before the new branch's;
* ``eth_subscribe("newPendingTransactions")``: the hash of each transaction the pool accepts, at
  the moment ``eth_sendRawTransaction``/``eth_sendTransaction`` accepts it (before it is mined, in
  automine mode too); with a second parameter ``true``, the full transaction object, as geth and
  anvil give it;
* ``eth_unsubscribe(id)`` -> ``true`` / ``false``.

Notifications are ``{"jsonrpc": "2.0", "method": "eth_subscription", "params": {"subscription":
id, "result": ...}}``. A subscription's response is always sent before its first notification.
Bad JSON gets a JSON-RPC parse error, like HTTP; a frame that breaks the protocol (unmasked,
reserved bits, unknown opcode, oversized) closes the connection with status 1002/1009. Each
connection has a writer thread and a bounded queue: a client that stops reading is disconnected,
never slows the chain down. :meth:`WsHub.close_all` (the node's ``stop``) sends every client a
close frame (1001, going away).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import queue
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .encoding import LogQuery, hexdata, param, parse_bool, parse_log_query
from .errors import InvalidParams

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from .engine import DevChain
    from .rpc import RpcDispatcher

logger = logging.getLogger(__name__)

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Messages waiting for a client that does not read; beyond this it is disconnected.
MAX_QUEUED_MESSAGES = 10_000
# Blocks whose sent logs are kept, to send them again as removed when the head goes back.
REMOVED_WINDOW = 128

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG = 1000, 1001, 1002, 1009

SUBSCRIPTION_KINDS = ("newHeads", "logs", "newPendingTransactions")


class ProtocolViolation(Exception):
    """A frame that breaks RFC 6455: the connection is closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def is_upgrade(headers: Any) -> bool:
    """An HTTP request that asks for a WebSocket."""
    return "websocket" in (headers.get("Upgrade") or "").lower()


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame (servers send unmasked frames; clients pass a 4-byte ``mask``)."""
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + _unmask(payload, mask)


def _unmask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def _read_exact(rfile: Any, n: int) -> bytes:
    data = rfile.read(n) if n else b""
    if len(data) < n:
        raise EOFError("connection closed")
    return data


def read_frame(rfile: Any, *, require_mask: bool = True, limit: int = MAX_MESSAGE_BYTES) -> tuple[bool, int, bytes]:
    """``(fin, opcode, payload)`` of the next frame; :class:`ProtocolViolation` for a bad frame,
    :class:`EOFError` when the peer went away."""
    b0, b1 = _read_exact(rfile, 2)
    fin, opcode = bool(b0 & 0x80), b0 & 0x0F
    if b0 & 0x70:
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set")
    if opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
    masked, n = bool(b1 & 0x80), b1 & 0x7F
    if require_mask and not masked:
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
    if n == 126:
        (n,) = struct.unpack("!H", _read_exact(rfile, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", _read_exact(rfile, 8))
    if opcode >= OP_CLOSE and (n > 125 or not fin):
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "bad control frame")
    if n > limit:
        raise ProtocolViolation(CLOSE_TOO_BIG, "message too big")
    mask = _read_exact(rfile, 4) if masked else None
    payload = _read_exact(rfile, n)
    return fin, opcode, _unmask(payload, mask) if mask is not None else payload


def _notification(sub_id: str, result: Any) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "method": "eth_subscription", "params": {"subscription": sub_id, "result": result}},
        separators=(",", ":"),
    ).encode()


def _log_matches(query: LogQuery, entry: dict[str, Any]) -> bool:
    return query.matches(bytes.fromhex(entry["address"][2:]), [int(t, 16) for t in entry["topics"]])


@dataclass
class _Subscription:
    kind: str
    query: LogQuery | None = None   # logs
    full: bool = False              # newPendingTransactions: full objects


class _Connection:
    """One WebSocket client: reads requests on the HTTP handler's thread, writes from its own."""

    def __init__(self, hub: WsHub, sock: socket.socket, rfile: Any, peer: Any) -> None:
        self.hub = hub
        self.sock = sock
        self.rfile = rfile
        self.peer = peer
        self.subs: dict[str, _Subscription] = {}
        self._out: queue.Queue[bytes | None] = queue.Queue(MAX_QUEUED_MESSAGES)
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="devnode-ws-writer", daemon=True)
        self.extra = {"eth_subscribe": self._subscribe, "eth_unsubscribe": self._unsubscribe}

    # ------------------------------------------------------------------ writing

    def send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        """Queue one message; a client that lets the queue fill up is disconnected."""
        if self._closing.is_set():
            return
        try:
            self._out.put_nowait(encode_frame(opcode, payload))
        except queue.Full:
            logger.warning("WebSocket client %s does not read its messages: disconnecting it", self.peer)
            self.close(CLOSE_GOING_AWAY, "too slow")

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame (once) and stop writing."""
        if self._closing.is_set():
            return
        frame = encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
        self._closing.set()
        try:
            self._out.put_nowait(frame)
        except queue.Full:
            pass
        try:
            self._out.put_nowait(None)
        except queue.Full:
            self._shutdown()

    def _write_loop(self) -> None:
        while True:
            frame = self._out.get()
            if frame is None:
                break
            try:
                self.sock.sendall(frame)
            except OSError:
                break
        self._shutdown(write_only=True)

    def _shutdown(self, write_only: bool = False) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR if write_only else socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    # ------------------------------------------------------------------ reading

    def run(self) -> None:
        self._writer.start()
        try:
            self._read_loop()
        finally:
            self.hub._forget(self)
            self.close(CLOSE_NORMAL)
            self._writer.join(5.0)

    def _read_loop(self) -> None:
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                fin, opcode, payload = read_frame(self.rfile)
            except ProtocolViolation as exc:
                logger.debug("WebSocket client %s: %s", self.peer, exc)
                self.close(exc.code, str(exc))
                return
            except (EOFError, OSError, ValueError):
                return  # the client went away (or the node is stopping)
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else CLOSE_NORMAL
                self.close(code if code in (CLOSE_NORMAL, CLOSE_GOING_AWAY) else CLOSE_NORMAL)
                return
            if opcode == OP_PING:
                self.send(payload, OP_PONG)
                continue
            if opcode == OP_PONG:
                continue
            if (opcode == OP_CONTINUATION) != bool(parts):
                self.close(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
                return
            parts.append(payload)
            size += len(payload)
            if size > MAX_MESSAGE_BYTES:
                self.close(CLOSE_TOO_BIG, "message too big")
                return
            if not fin:
                continue
            message, parts, size = b"".join(parts), [], 0
            self._handle(message)

    def _handle(self, message: bytes) -> None:
        # Under the chain lock: a subscription's response is queued before any notification of it.
        with self.hub.chain.lock:
            response = self.hub.dispatcher.handle_body(message, self.extra)
            if response is not None:
                self.send(response)

    # ------------------------------------------------------------------ subscriptions

    def _subscribe(self, params: Sequence[Any]) -> str:
        kind = param(params, 0, "subscription")
        if kind not in SUBSCRIPTION_KINDS:
            raise InvalidParams(f"unsupported subscription {kind!r}: supported are {', '.join(SUBSCRIPTION_KINDS)}")
        sub = _Subscription(kind)
        if kind == "logs":
            sub.query = parse_log_query(param(params, 1, "filter", None))
            if sub.query.block_hash is not None:
                raise InvalidParams("blockHash is not supported for subscriptions")
        elif kind == "newPendingTransactions":
            sub.full = parse_bool(param(params, 1, "fullTransactions", False), "fullTransactions")
        sub_id = "0x" + os.urandom(16).hex()
        self.subs[sub_id] = sub
        return sub_id

    def _unsubscribe(self, params: Sequence[Any]) -> bool:
        sub_id = param(params, 0, "subscriptionId")
        return isinstance(sub_id, str) and self.subs.pop(sub_id.lower(), None) is not None


class WsHub:
    """The dev node's WebSocket clients and their subscriptions, fed by the chain's observers."""

    def __init__(self, chain: DevChain, dispatcher: RpcDispatcher) -> None:
        self.chain = chain
        self.dispatcher = dispatcher
        self._connections: set[_Connection] = set()
        self._sent_logs: dict[int, list[dict[str, Any]]] = {}   # block number -> logs sent to some client
        chain.observers.append(self._on_chain)

    @property
    def connections(self) -> int:
        with self.chain.lock:
            return len(self._connections)

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        """Finish the handshake of an ``Upgrade: websocket`` request and serve the connection on
        the handler's thread until the client or the node closes it."""
        headers = handler.headers
        key = headers.get("Sec-WebSocket-Key", "")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if "upgrade" not in (headers.get("Connection") or "").lower() or not valid_key:
            handler.send_error(400, "bad WebSocket handshake")
            return
        if headers.get("Sec-WebSocket-Version") != "13":
            handler.send_response(426)
            handler.send_header("Sec-WebSocket-Version", "13")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(101)
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept_key(key))
        handler.end_headers()
        handler.wfile.flush()
        handler.close_connection = True
        sock = handler.connection
        sock.settimeout(None)   # a subscriber may stay silent for as long as it likes
        conn = _Connection(self, sock, handler.rfile, handler.client_address)
        with self.chain.lock:
            self._connections.add(conn)
        conn.run()

    def _forget(self, conn: _Connection) -> None:
        with self.chain.lock:
            self._connections.discard(conn)

    def close_all(self) -> None:
        """Say goodbye (close 1001) to every client; the node then closes the sockets."""
        with self.chain.lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close(CLOSE_GOING_AWAY, "node stopping")
        for conn in connections:
            conn._writer.join(1.0)

    # ------------------------------------------------------------------ chain events (under the chain lock)

    def _subs(self, kind: str) -> list[tuple[_Connection, str, _Subscription]]:
        return [(c, sid, s) for c in self._connections for sid, s in list(c.subs.items()) if s.kind == kind]

    def _on_chain(self, kind: str, value: Any) -> None:
        if kind == "pending":
            self._on_pending(value)
        elif kind == "block":
            self._on_block(value)
        elif kind == "rewind":
            self._on_rewind(int(value))

    def _on_pending(self, ptx: Any) -> None:
        subs = self._subs("newPendingTransactions")
        if not subs:
            return
        tx_hash = hexdata(ptx.hash)
        full = self.chain.transaction(ptx.hash) if any(s.full for _c, _i, s in subs) else None
        for conn, sub_id, sub in subs:
            conn.send(_notification(sub_id, full if sub.full and full is not None else tx_hash))

    def _on_block(self, block_hash: bytes) -> None:
        heads, log_subs = self._subs("newHeads"), self._subs("logs")
        if not heads and not log_subs:
            return
        block = self.chain.block_by_hash(block_hash, False)
        if block is None:
            return
        number = int(block["number"], 16)
        self._on_rewind(number - 1)   # a block at a height already sent: the old one is gone
        if heads:
            header = {k: v for k, v in block.items() if k not in ("transactions", "uncles", "withdrawals", "size")}
            for conn, sub_id, _sub in heads:
                conn.send(_notification(sub_id, header))
        if log_subs:
            logs = self.chain.logs(LogQuery(block_hash=block_hash))
            sent: list[dict[str, Any]] = []
            for entry in logs:
                for conn, sub_id, sub in log_subs:
                    if sub.query is not None and _log_matches(sub.query, entry):
                        conn.send(_notification(sub_id, entry))
                        if not sent or sent[-1] is not entry:
                            sent.append(entry)
            if sent:
                self._sent_logs[number] = sent
                for old in [n for n in self._sent_logs if n <= number - REMOVED_WINDOW]:
                    del self._sent_logs[old]

    def _on_rewind(self, head: int) -> None:
        dropped = sorted((n for n in self._sent_logs if n > head), reverse=True)
        if not dropped:
            return
        log_subs = self._subs("logs")
        for number in dropped:
            for entry in reversed(self._sent_logs.pop(number)):
                removed = {**entry, "removed": True}
                for conn, sub_id, sub in log_subs:
                    if sub.query is not None and _log_matches(sub.query, entry):
                        conn.send(_notification(sub_id, removed))


__all__ = ["WsHub", "accept_key", "encode_frame", "is_upgrade", "read_frame"]
