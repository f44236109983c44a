"""The dev node: a JSON-RPC HTTP server and an optional block-time thread around a DevChain."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

from eth_tester import EthereumTester

from .engine import DevChain
from .rpc import RpcDispatcher
from .ws import WsHub, is_upgrade

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
# Idle keep-alive connections are closed after this many seconds.
CONNECTION_TIMEOUT_SECONDS = 30.0
# The longest block time (seconds): a dev chain that mines less than hourly is a mistake.
MAX_BLOCK_TIME = 3600.0


class _RpcHTTPServer(ThreadingHTTPServer):
    """Threading HTTP server that tracks its connection threads so it can close and join them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], dispatcher: RpcDispatcher, ws_hub: WsHub) -> None:
        super().__init__(address, _RpcRequestHandler)
        self.dispatcher = dispatcher
        self.ws_hub = ws_hub
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="devnode-http-conn",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-response is not worth a traceback on stderr.
        logger.debug("error while serving %s", client_address, exc_info=True)

    def close_connections(self, timeout: float) -> None:
        """Shut down open client connections and wait for their threads."""
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _thread in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
        deadline = time.monotonic() + timeout
        for _sock, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))


class _RpcRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xmargin-devnode"
    # Headers and body go out in two writes on a keep-alive connection: without TCP_NODELAY,
    # Nagle's algorithm and the client's delayed ACK stall every response by about 40 ms.
    disable_nagle_algorithm = True
    timeout = CONNECTION_TIMEOUT_SECONDS
    server: _RpcHTTPServer

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server naming
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Content-Type")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if is_upgrade(self.headers):
            self.server.ws_hub.serve(self)   # JSON-RPC over WebSocket on the same port, like anvil
            return
        self._send(405, b"JSON-RPC over POST, or a WebSocket upgrade, only\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._send(411, b"Content-Length required\n", "text/plain")
            return
        try:
            length = int(length_header)
        except ValueError:
            self._send(400, b"bad Content-Length\n", "text/plain")
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self._send(413, b"request too large\n", "text/plain")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        response = self.server.dispatcher.handle_body(body)
        if response is None:
            self._send(204, b"")
        else:
            self._send(200, response)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - %s", self.address_string(), format % args)


class DevNode:
    """A local Ethereum JSON-RPC node on eth-tester (py-evm) with funded dev accounts.

    It serves JSON-RPC over HTTP POST and over WebSocket (``ws_url``, the same port; with
    ``eth_subscribe``: see :mod:`devnode.ws`).
    Without ``block_time`` every transaction is mined immediately in its own block (automine).
    With ``block_time`` (seconds > 0) transactions wait in the node's mempool and a background
    thread mines one block every ``block_time`` seconds, ordered by effective priority fee.
    """

    def __init__(
        self,
        block_time: float | None = None,
        port: int = 8545,
        host: str = "127.0.0.1",
        accounts: int = 10,
    ) -> None:
        if block_time is not None and not 0 < block_time <= MAX_BLOCK_TIME:   # also refuses nan and inf
            raise ValueError(f"block_time must be a number of seconds in (0, {MAX_BLOCK_TIME}] (or None)")
        if not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port}")
        self.block_time = block_time
        self.host = host
        self.port = port
        self.chain = DevChain(automine=block_time is None, accounts=accounts)
        self.dispatcher = RpcDispatcher(self.chain)
        self.ws_hub = WsHub(self.chain, self.dispatcher)
        self._server: _RpcHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._block_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._state_lock = threading.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint: the HTTP port, ``ws://``."""
        return f"ws://{self.host}:{self.port}"

    @property
    def accounts(self) -> list[tuple[str, str]]:
        """Funded dev accounts as ``(checksum address, 0x private key)``."""
        return self.chain.accounts

    @property
    def tester(self) -> EthereumTester:
        return self.chain.tester

    @property
    def running(self) -> bool:
        return self._server is not None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind, then serve and (with a block time) mine in background threads; returns at once."""
        with self._state_lock:
            if self._server is not None:
                raise RuntimeError("dev node already started")
            self._stopping.clear()
            server = _RpcHTTPServer((self.host, self.port), self.dispatcher, self.ws_hub)
            self.port = int(server.server_address[1])
            self._server = server
            self._server_thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="devnode-http",
                daemon=True,
            )
            self._server_thread.start()
            if self.block_time is not None:
                self._block_thread = threading.Thread(
                    target=self._block_loop, args=(self.block_time,), name="devnode-blocks", daemon=True
                )
                self._block_thread.start()
        logger.info(
            "dev node listening on %s and %s (chain id %d, %s)",
            self.url,
            self.ws_url,
            self.chain.chain_id,
            "automine" if self.block_time is None else f"block time {self.block_time}s",
        )

    def _block_loop(self, block_time: float) -> None:
        next_at = time.monotonic() + block_time
        while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
            next_at += block_time
            now = time.monotonic()
            if next_at < now:  # fell behind (slow block): do not burst to catch up
                next_at = now + block_time
            try:
                self.chain.mine()
            except Exception:
                logger.exception("block production failed")

    def mine_block(self) -> str:
        """Build and mine one block from the mempool now; returns its hash (0x hex)."""
        return "0x" + self.chain.mine().hex()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and mining, close client connections and join the threads. Idempotent."""
        with self._state_lock:
            server, self._server = self._server, None
            server_thread, self._server_thread = self._server_thread, None
            block_thread, self._block_thread = self._block_thread, None
            self._stopping.set()
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self.ws_hub.close_all()
        server.close_connections(timeout)
        if server_thread is not None:
            server_thread.join(timeout)
        if block_thread is not None:
            block_thread.join(timeout)
        logger.info("dev node stopped")

    def serve_forever(self) -> None:
        """Run until KeyboardInterrupt or SIGTERM, then stop cleanly (starts the node if needed)."""
        if not self.running:
            self.start()
        done = threading.Event()
        previous_handler: Any = None
        in_main_thread = threading.current_thread() is threading.main_thread()

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            done.set()

        if in_main_thread:
            previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous_handler)
            self.stop()

    def __enter__(self) -> DevNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def mining_in_background(node: DevNode, every_s: float, *, empty_blocks: bool = False) -> Iterator[None]:
    """Mine a block every ``every_s`` seconds while the ``with`` block runs: only when transactions
    wait in the pool (setup that waits for receipts), or always with ``empty_blocks`` (a chain that
    moves on by itself)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            if empty_blocks or len(node.chain.pool):
                node.mine_block()

    thread = threading.Thread(target=loop, name="devnode-background-miner", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
