"""A fault-injecting JSON-RPC proxy for tests: it sits between a client and a node and breaks a
share of the requests the way real networks and providers do.

    with FaultProxy(node.url, rate=0.2, seed=7) as proxy:
        w3 = Web3(HTTPProvider(proxy.url, request_kwargs={"timeout": 1.0}))
        ...
        proxy.stats.faults        # Counter of the faults injected, by kind

Fault kinds (:data:`FAULT_KINDS`), each chosen with equal odds among those that fit the request:

* ``"http_502"``: a ``502 Bad Gateway`` answer, the request never reaches the node;
* ``"reset"``: the connection is reset (TCP RST) without an answer, nothing reaches the node;
* ``"stall"``: the request reaches the node, its answer is held for ``stall_s`` seconds (longer
  than the client's timeout) and then dropped: a lost reply, the node did the work;
* ``"truncated"``: the request reaches the node, its answer arrives cut in half (a well-formed
  HTTP response whose JSON body is truncated);
* ``"rate_limit"``: only for a single ``eth_getLogs`` request: the JSON-RPC error ``-32005``
  (``rate_message``), the shape several providers use for "slow down", which is hard to tell
  from a range limit.

``get_logs_rate`` (optional) answers that share of the single ``eth_getLogs`` requests with the
rate limit, on top of the draw above (else a rate limit is one kind in five of the ``rate``).
``only`` limits the kinds; ``methods`` limits which requests may fail (a batch counts when any of
its members' methods is listed); ``schedule`` replaces the random draw with a fixed list of kinds
(``None`` for "let it through"), consumed one per eligible request, for exact tests.

Safety: the proxy binds 127.0.0.1 only; it serves at most ``max_requests`` requests and lives
at most ``max_seconds`` seconds, then stops by itself (a forgotten proxy never outlives a test
run); :meth:`close` (or leaving the ``with`` block) stops it at once, cutting stalls short.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

FAULT_KINDS = ("http_502", "reset", "stall", "truncated", "rate_limit")
RATE_LIMIT_CODE = -32005


@dataclass
class ProxyStats:
    requests: int = 0                                       # HTTP requests received
    forwarded: int = 0                                      # of those, sent on to the node
    faults: Counter[str] = field(default_factory=Counter)   # injected faults by kind
    methods: Counter[str] = field(default_factory=Counter)  # JSON-RPC methods seen (batch members too)

    @property
    def fault_total(self) -> int:
        return sum(self.faults.values())


class FaultProxy:
    """A JSON-RPC proxy on 127.0.0.1 that injects faults (see the module docstring)."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.2,
        seed: int = 0,
        only: Iterable[str] | None = None,
        methods: Iterable[str] | None = None,
        schedule: Iterable[str | None] | None = None,
        stall_s: float = 2.0,
        rate_message: str = "limit exceeded",
        get_logs_rate: float | None = None,
        max_requests: int = 100_000,
        max_seconds: float = 900.0,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        kinds = tuple(only) if only is not None else FAULT_KINDS
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}")
        self.upstream = upstream
        self.rate = rate
        self.kinds = kinds
        self.methods = frozenset(methods) if methods is not None else None
        self._schedule = list(schedule) if schedule is not None else None
        self.stall_s = stall_s
        self.rate_message = rate_message
        self.get_logs_rate = get_logs_rate
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.stats = ProxyStats()
        self.enabled = True                   # False: a clean pass-through
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._local = threading.local()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        self._deadline = threading.Timer(max_seconds, self.close)
        self._deadline.daemon = True
        self._deadline.start()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving (idempotent); stalled answers are cut short."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._deadline.cancel()
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, *kinds: str | None) -> None:
        """Replace the draw with ``kinds``, one per next eligible request (``None``: let it through)."""
        unknown = {k for k in kinds if k is not None} - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}")
        with self._lock:
            self._schedule = list(kinds)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # deciding ---------------------------------------------------------------------
    def _choose(self, body: Any) -> str | None:
        """The fault for a request body (a dict or a batch list), or None to let it through."""
        members = body if isinstance(body, list) else [body]
        names = [str(m.get("method", "")) for m in members if isinstance(m, dict)]
        with self._lock:
            self.stats.requests += 1
            self.stats.methods.update(names)
            if self.stats.requests > self.max_requests:
                threading.Thread(target=self.close, daemon=True).start()
                return "http_502"
            if not self.enabled or (self.methods is not None and not self.methods.intersection(names)):
                return None
            fits = [k for k in self.kinds
                    if k != "rate_limit" or (not isinstance(body, list) and names == ["eth_getLogs"])]
            if self._schedule is not None:
                if not self._schedule:
                    return None
                kind = self._schedule.pop(0)
                return kind if kind in fits else None
            if (self.get_logs_rate is not None and "rate_limit" in fits
                    and self._rng.random() < self.get_logs_rate):
                return "rate_limit"
            if not fits or self._rng.random() >= self.rate:
                return None
            return self._rng.choice(fits)

    # the HTTP side ----------------------------------------------------------------
    def _forward(self, raw: bytes) -> tuple[int, bytes]:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        with self._lock:
            self.stats.forwarded += 1
        answer = session.post(self.upstream, data=raw, headers={"Content-Type": "application/json"}, timeout=120)
        return answer.status_code, answer.content

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                kind = proxy._choose(body)
                if kind is not None:
                    with proxy._lock:
                        proxy.stats.faults[kind] += 1
                if kind == "http_502":
                    self._reply(502, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                elif kind == "reset":
                    self._reset()
                elif kind == "rate_limit":
                    error = {"jsonrpc": "2.0", "id": body.get("id") if isinstance(body, dict) else None,
                             "error": {"code": RATE_LIMIT_CODE, "message": proxy.rate_message}}
                    self._reply(200, json.dumps(error).encode())
                else:
                    try:
                        status, content = proxy._forward(raw)
                    except requests.RequestException:
                        self._reply(502, b"upstream unreachable", "text/plain")
                        return
                    if kind == "stall":
                        proxy._closed.wait(proxy.stall_s)
                        self._reset()
                    elif kind == "truncated":
                        self._reply(status, content[: max(1, len(content) // 2)])
                    else:
                        self._reply(status, content)

            def _reply(self, status: int, content: bytes, ctype: str = "application/json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except OSError:
                    self.close_connection = True

            def _reset(self) -> None:
                """Close with a TCP RST (SO_LINGER 0): the client sees 'connection reset'."""
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass

        return Handler


__all__ = ["FAULT_KINDS", "FaultProxy", "ProxyStats", "RATE_LIMIT_CODE"]
