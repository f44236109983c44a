"""WebSocket subscriptions for the bot, with HTTP polling as the fallback.

What is **pushed** when WebSockets are on (setting ``ws_url``: ``auto``, ``off`` or a ws:// URL):

* **new heads**: one ``eth_subscribe("newHeads")``; :class:`~bot.scanner.HeadWatcher` takes the
  newest header from the subscription's queue instead of an ``eth_getBlockByNumber("latest")``
  per poll, and the loop (:class:`~bot.lifecycle.Lifecycle`) is woken the moment a header
  arrives instead of sleeping ``poll_interval_s``;
* **pending transactions** (for the oracle backrun): ``eth_subscribe("newPendingTransactions",
  true)``, full transaction objects, through :class:`WsPendingSource` where the backrun's pending
  source is used.

What is still **polled** over HTTP:

* **logs**: the mirror's one ``eth_getLogs`` per head over ``[last + 1 - lookback, head]``, except
  that, with pushed heads, blocks whose header ``logsBloom`` proves that neither the engine nor any
  feed logged anything are left out of the range, and no ``eth_getLogs`` is sent at all when that
  holds for the whole range (:func:`bloom_may_log`, :meth:`bot.mirror.ChainMirror.sync`). A bloom
  has false positives, never false negatives, and it is part of the header whose hash the reorg
  check follows: a skipped block provably has no log for the bot. A ``logs`` subscription is not
  used: its stream cannot prove that it is complete for a block (a notification lost across a
  reconnect looks like a block without logs), the bloom can. Reorg handling (the lookback window,
  the stored block hashes, :func:`~bot.scanner.find_fork_point`) is unchanged;
* everything else: calls, receipts, sends, the reorg check's block reads;
* a **safety poll**: with pushed heads, when no header arrived for :data:`HTTP_CHECK_S` seconds,
  one ``eth_getBlockByNumber("latest")`` over HTTP (a subscription that silently stopped is caught
  there, and by the stale-head watchdog).

**Fallback**: ``auto`` tries ``ws://`` (``wss://`` for https) on the HTTP URL's host and port once
at start (anvil and the dev node serve both on one port); if that is refused the bot polls over
HTTP for the whole run. When a working connection dies (or an explicit URL cannot be reached),
the bot says so once in the log, polls over HTTP at once, and reconnects in the background with
a growing pause (:data:`RECONNECT_MIN_S` doubling to :data:`RECONNECT_MAX_S`); when it is back
(and subscribed again) it says so once and heads are pushed again.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from eth_bloom import BloomFilter
from eth_utils import to_canonical_address

from .config import redact_url
from .errors import BotConfigError, RpcError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
CALL_TIMEOUT_S = 10.0
HTTP_CHECK_S = 5.0          # with pushed heads, the longest time without a look at the head over HTTP
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class WsError(RpcError):
    """The WebSocket connection failed or a request over it was refused."""


def resolve_ws_url(setting: str, rpc_url: str) -> str | None:
    """The WebSocket URL to use for ``setting`` (``auto``, ``off`` or a ws:// URL), or None for
    polling only. ``auto`` is the HTTP URL's host, port and path with ws:// (wss:// for https)."""
    value = setting.strip()
    if value.lower() == "off":
        return None
    if value.lower() == "auto":
        parts = urlsplit(rpc_url)
        if parts.scheme not in ("http", "https"):
            return None   # an in-process chain ('memory'): nothing to subscribe to
        return urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path, parts.query, ""))
    if value.startswith(("ws://", "wss://")) and urlsplit(value).hostname:
        return value
    raise BotConfigError(f"ws_url={value!r}: must be 'auto', 'off' or a ws:// or wss:// URL")


def provider_url(w3: Any) -> str:
    """The HTTP URL ``w3`` talks to ('' for an in-process provider): what ``auto`` derives from."""
    return str(getattr(w3.provider, "endpoint_uri", None) or "")


def bloom_may_log(bloom: bytes | None, addresses: Iterable[str]) -> bool:
    """False only when the header's ``logsBloom`` proves that none of ``addresses`` logged in the
    block (an unknown bloom may log)."""
    if bloom is None:
        return True
    value = BloomFilter(int.from_bytes(bloom, "big"))
    return any(to_canonical_address(a) in value for a in addresses)


class WsClient:
    """A synchronous JSON-RPC client over one WebSocket: a background thread reads every message;
    responses go to the waiting caller, notifications to their subscription's queue."""

    def __init__(self, url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 on_message: Callable[[], None] | None = None) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._on_message = on_message     # called after each notification is queued (a wake-up)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._subs: dict[str, queue.SimpleQueue[Any]] = {}
        self._new_subs: dict[int, queue.SimpleQueue[Any]] = {}   # request id -> queue of a subscribe in flight
        self._ws: Any = None
        self._ready = threading.Event()
        self._closed = threading.Event()
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._ready.is_set() and not self._closed.is_set()

    def connect(self) -> None:
        """Open the connection (raises :class:`WsError` when it cannot be opened in time)."""
        self._thread = threading.Thread(target=self._run, name="bot-ws-reader", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.connect_timeout_s + 1.0) or self._closed.is_set():
            self.close()
            raise WsError(f"no WebSocket at {redact_url(self.url)}: {self.error or 'timed out'}")

    def _run(self) -> None:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        try:
            with connect(self.url, open_timeout=self.connect_timeout_s, close_timeout=1.0,
                         max_size=MAX_MESSAGE_BYTES, compression=None) as ws:
                self._ws = ws
                self._ready.set()
                for message in ws:
                    self._dispatch(message)
        except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
            # (a message that quotes the URL gets it without its path: it may carry an API key)
            self.error = (str(exc) or type(exc).__name__).replace(self.url, redact_url(self.url))
        finally:
            self._closed.set()
            self._ready.set()
            with self._lock:
                waiting = list(self._waiting.values())
            for event, _box in waiting:
                event.set()
            if self._on_message is not None:
                self._on_message()   # a waiting loop learns of the loss at once

    def _dispatch(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            log.debug("unreadable WebSocket message dropped")
            return
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item, dict):
                continue
            if item.get("method") == "eth_subscription":
                params = item.get("params") or {}
                sub = self._subs.get(str(params.get("subscription")))
                if sub is not None:
                    sub.put(params.get("result"))
                    if self._on_message is not None:
                        self._on_message()
                continue
            request_id = item.get("id")
            with self._lock:
                entry = self._waiting.pop(request_id, None) if isinstance(request_id, int) else None
                pending_sub = self._new_subs.pop(request_id, None) if isinstance(request_id, int) else None
            if pending_sub is not None and "result" in item:
                # Registered here, before the next message is read: no notification can be missed.
                self._subs[str(item["result"])] = pending_sub
            if entry is not None:
                entry[1].append(item)
                entry[0].set()

    def call(self, method: str, params: Sequence[Any] = (), *, timeout_s: float = CALL_TIMEOUT_S,
             _sub: queue.SimpleQueue[Any] | None = None) -> Any:
        """One request; its ``result``, or :class:`WsError`."""
        if not self.alive:
            raise WsError(f"the WebSocket to {redact_url(self.url)} is closed")
        request_id = next(self._ids)
        event, box = threading.Event(), []
        with self._lock:
            self._waiting[request_id] = (event, box)
            if _sub is not None:
                self._new_subs[request_id] = _sub
        try:
            self._ws.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}))
        except Exception as exc:  # noqa: BLE001 - websockets raises several types on a dead socket
            with self._lock:
                self._waiting.pop(request_id, None)
                self._new_subs.pop(request_id, None)
            raise WsError(f"WebSocket send failed: {exc}") from None
        if not event.wait(timeout_s) or not box:
            with self._lock:
                self._waiting.pop(request_id, None)
                self._new_subs.pop(request_id, None)
            raise WsError(f"no answer to {method} over the WebSocket")
        reply = box[0]
        if "error" in reply:
            error = reply["error"] or {}
            raise WsError(f"{method} refused over the WebSocket: {error.get('message', error)}")
        return reply.get("result")

    def subscribe(self, kind: str, *params: Any) -> tuple[str, queue.SimpleQueue[Any]]:
        """``eth_subscribe``; the subscription id and the queue its notifications go to."""
        sub: queue.SimpleQueue[Any] = queue.SimpleQueue()
        sub_id = self.call("eth_subscribe", [kind, *params], _sub=sub)
        return str(sub_id), sub

    def close(self) -> None:
        ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing a dead socket
                pass
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)


def _drain(sub: queue.SimpleQueue[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(sub.get_nowait())
        except queue.Empty:
            return out


class WsSubscription:
    """One subscription kept alive: reconnects with backoff after a loss, says each loss and each
    recovery once in the log. ``wake`` is set whenever a notification arrives (or the connection
    is lost), for a loop that waits on it."""

    def __init__(self, url: str, kind: str, *params: Any, wake: threading.Event | None = None,
                 reconnect: bool = True, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.url = url
        self.kind = kind
        self.params = params
        self.wake = wake if wake is not None else threading.Event()
        self.reconnect = reconnect
        self.connect_timeout_s = connect_timeout_s
        self._client: WsClient | None = None
        self._queue: queue.SimpleQueue[Any] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._reconnector: threading.Thread | None = None
        self.losses = 0

    @property
    def alive(self) -> bool:
        client = self._client
        if client is not None and client.alive:
            return True
        if client is not None and not self._stop.is_set():
            self._lost(client)
        return False

    def start(self) -> bool:
        """Connect and subscribe once; False (and a reconnecting thread, if enabled) on failure."""
        try:
            self._open()
        except WsError as exc:
            # auto (no reconnect) on a node without WebSockets is normal: said once, not a warning
            (log.warning if self.reconnect else log.info)(
                "%s: polling over HTTP%s", exc, ", reconnecting in the background" if self.reconnect else "")
            if self.reconnect:
                self._start_reconnector()
            return False
        log.info("subscribed to %s over %s", self.kind, redact_url(self.url))
        return True

    def _open(self) -> None:
        client = WsClient(self.url, connect_timeout_s=self.connect_timeout_s, on_message=self.wake.set)
        client.connect()
        try:
            _sub_id, sub = client.subscribe(self.kind, *self.params)
        except WsError:
            client.close()
            raise
        with self._lock:
            self._client, self._queue = client, sub

    def _lost(self, client: WsClient) -> None:
        with self._lock:
            if self._client is not client:
                return
            self._client = None
        self.losses += 1
        log.warning("WebSocket to %s lost (%s): %s polled over HTTP%s", redact_url(self.url), client.error or "closed",
                    self.kind, ", reconnecting in the background" if self.reconnect else "")
        client.close()
        if self.reconnect:
            self._start_reconnector()

    def _start_reconnector(self) -> None:
        if self._reconnector is not None and self._reconnector.is_alive():
            return
        self._reconnector = threading.Thread(target=self._reconnect_loop, name="bot-ws-reconnect", daemon=True)
        self._reconnector.start()

    def _reconnect_loop(self) -> None:
        pause = RECONNECT_MIN_S
        while not self._stop.wait(pause):
            try:
                self._open()
            except WsError:
                pause = min(pause * 2, RECONNECT_MAX_S)
                continue
            log.info("WebSocket to %s is back: %s pushed again", redact_url(self.url), self.kind)
            self.wake.set()
            return

    def drain(self) -> list[Any]:
        """Every notification since the last call, oldest first ([] when disconnected)."""
        sub = self._queue
        return _drain(sub) if sub is not None else []

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._reconnector is not None:
            self._reconnector.join(2.0)


class WsHeads(WsSubscription):
    """``newHeads`` for :class:`~bot.scanner.HeadWatcher`: the newest header pushed since the last
    look, as a block dict (quantities as hex strings)."""

    def __init__(self, url: str, *, wake: threading.Event | None = None, reconnect: bool = True) -> None:
        super().__init__(url, "newHeads", wake=wake, reconnect=reconnect)

    def newest(self) -> dict[str, Any] | None:
        headers = [h for h in self.drain() if isinstance(h, dict)]
        return headers[-1] if headers else None


class WsPendingSource:
    """:class:`~bot.pending.PendingSource` over ``eth_subscribe("newPendingTransactions", true)``:
    each transaction the node's pool accepts, pushed as it is accepted (a node that pushes only
    hashes gets each fetched over the WebSocket). While the WebSocket is down, ``fallback`` (the
    HTTP filter source) is drained instead; transactions accepted in the moment between the loss
    and the filter's creation are not seen (as with a filter the node forgot).

    ``skip(hash)`` leaves out transactions the caller knows (its own). ``wake`` is set on each
    notification: give it the loop's wake event to tick as soon as a transaction arrives."""

    def __init__(self, url: str, *, fallback: Any = None, skip: Callable[[str], bool] | None = None,
                 wake: threading.Event | None = None, reconnect: bool = True) -> None:
        self.sub = WsSubscription(url, "newPendingTransactions", True, wake=wake, reconnect=reconnect)
        self.fallback = fallback
        self._skip = skip
        self._on_fallback = False
        self.pushed = 0             # transactions received by subscription

    def __repr__(self) -> str:
        return f"WsPendingSource({redact_url(self.sub.url)}, alive={self.sub.alive})"

    def start(self) -> bool:
        return self.sub.start()

    def drain(self) -> list[dict[str, Any]]:
        from .pending import normalize_tx

        if not self.sub.alive:
            if self.fallback is None:
                return []
            if not self._on_fallback:
                # A fresh filter: one left idle while pushed would return long-gone transactions.
                self._on_fallback = True
                self.fallback.close()
                self.fallback.start()
                return []
            return self.fallback.drain()
        if self._on_fallback:
            self._on_fallback = False
            self.fallback.close()
        out: list[dict[str, Any]] = []
        for item in self.sub.drain():
            if isinstance(item, str):                  # a node that pushes hashes only
                if self._skip is not None and self._skip(item.lower()):
                    continue
                item = self._fetch(item)
            tx = normalize_tx(item) if isinstance(item, dict) else None
            if tx is None or (self._skip is not None and self._skip(tx["hash"])):
                continue
            out.append(tx)
        self.pushed += len(out)
        return out

    def _fetch(self, tx_hash: str) -> Any:
        client = self.sub._client
        if client is None:
            return None
        try:
            return client.call("eth_getTransactionByHash", [tx_hash])
        except WsError:
            return None

    def close(self) -> None:
        self.sub.close()
        if self.fallback is not None:
            self.fallback.close()


def pushed_pending(heads: WsHeads, fallback: Any, skip: Callable[[str], bool] | None = None) -> Any:
    """For a bot whose heads are pushed: ``newPendingTransactions`` on the same WebSocket URL,
    waking the same loop, with ``fallback`` (a started HTTP filter source, released while pushed)
    for when the WebSocket is down; ``fallback`` itself if the subscription is refused."""
    source = WsPendingSource(heads.url, fallback=fallback, skip=skip, wake=heads.wake)
    if not source.start():
        source.sub.close()
        return fallback
    fallback.close()
    return source


def open_pending(setting: str, w3: Any, *, batch: Any = None, skip: Callable[[str], bool] | None = None,
                 wake: threading.Event | None = None) -> Any:
    """The pending-transaction source for the setting: :class:`WsPendingSource` (with the HTTP
    filter as its fallback) when WebSockets are on and answer, else the HTTP
    :class:`~bot.pending.FilterPendingSource` alone. ``auto`` tries once, like :func:`open_heads`."""
    from .pending import FilterPendingSource

    http = FilterPendingSource(w3, batch=batch, skip=skip)
    url = resolve_ws_url(setting, provider_url(w3))
    if url is None:
        return http
    is_auto = setting.strip().lower() == "auto"
    source = WsPendingSource(url, fallback=http, skip=skip, wake=wake, reconnect=not is_auto)
    if source.start():
        source.sub.reconnect = True
        return source
    return http if is_auto else source


def open_heads(setting: str, rpc_url: str, wake: threading.Event | None = None) -> WsHeads | None:
    """The ``newHeads`` subscription the setting asks for, or None (polling only). ``auto`` tries
    once and never retries a refused endpoint; an explicit URL reconnects in the background."""
    url = resolve_ws_url(setting, rpc_url)
    if url is None:
        return None
    is_auto = setting.strip().lower() == "auto"
    heads = WsHeads(url, wake=wake, reconnect=not is_auto)
    if heads.start():
        heads.reconnect = True   # it worked once: worth reconnecting after a loss
        return heads
    if is_auto:
        return None
    return heads


__all__ = ["WsClient", "WsError", "WsHeads", "WsPendingSource", "WsSubscription", "bloom_may_log", "open_heads",
           "open_pending", "provider_url", "pushed_pending", "resolve_ws_url"]
