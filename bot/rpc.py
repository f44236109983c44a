"""Counting, retrying and circuit-breaking every JSON-RPC request the bot makes.

:class:`CountingRpc` installs a web3 v8 middleware at the innermost layer of a :class:`web3.Web3`
(right above the provider, below web3's own formatting and validation layers), so it sees exactly
the requests that reach the node, whatever the provider: ``HTTPProvider`` for a real node,
``EthereumTesterProvider`` for the in-process chain. For each request it

* counts it, in total and per method (what the metrics and the benchmarks read);
* retries a *transient* failure with exponential backoff: connection errors and resets, timeouts,
  HTTP 408, 425, 429 and 5xx, a body that is not JSON (cut short by a proxy or a dropped
  connection), an answer with neither ``result`` nor ``error``, and JSON-RPC error responses that mean "rate limited" or "try again"
  (``-32005`` and friends). Execution reverts, bad parameters, nonce errors and ``eth_getLogs``
  range limits are answers, not failures: they are passed through untouched (the log scanner
  handles range limits by shrinking its block range);
* feeds a :class:`CircuitBreaker`: after ``threshold`` consecutive failed attempts it opens and
  every request raises :class:`~bot.errors.CircuitOpen` at once, without touching the node, until
  ``cooldown_s`` has passed; then one trial request is let through (half-open), which closes it on
  success or reopens it on failure;
* answers ``eth_chainId`` from a cache after the first answer (web3 asks for it before every
  ``eth_call``; a node never changes its chain id), so counted calls are real work.

HTTPProvider's own retry loop is switched off while installed: one layer retries, and it counts.

:meth:`CountingRpc.inject_faults` makes the next ``k`` requests (of some methods) fail with a
connection error before they reach the node: the fault-injection hook of the resilience tests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests
from web3 import Web3
from web3.exceptions import ProviderConnectionError, TooManyRequests, Web3RPCError
from web3.middleware import Web3Middleware

from protocol_model.logscan import error_fields, is_log_range_error, is_rate_limited, is_revert

from .errors import CircuitOpen, RpcError

if TYPE_CHECKING:
    from web3.types import MakeBatchRequestFn, MakeRequestFn, RPCEndpoint, RPCResponse

    from .config import BotConfig

log = logging.getLogger(__name__)

MIDDLEWARE_NAME = "xmargin_rpc"
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Transport exceptions worth a retry; anything else a provider raises propagates untouched.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,           # builtin; also what inject_faults raises
    TimeoutError,
    requests.RequestException,  # ConnectionError, Timeout, HTTPError, ChunkedEncodingError, ...
    ProviderConnectionError,
    TooManyRequests,
    json.JSONDecodeError,       # a body cut short by a proxy or a dropped connection
    UnicodeDecodeError,         # the same, cut inside a multi-byte character
)
_RETRY_WORDS = ("try again", "temporarily unavailable", "header not found", "timed out", "timeout", "busy")


# ---------------------------------------------------------------------- error classification
# (error_fields, is_log_range_error, is_rate_limited, is_revert: protocol_model.logscan)


def transient_error_response(method: str, error: Mapping[str, Any]) -> str | None:
    """Why a JSON-RPC error response is worth retrying, or ``None`` when it is a final answer."""
    code, message = error_fields(error)
    if is_revert(code, message):
        return None
    if method == "eth_getLogs" and is_log_range_error(error):
        return None  # the scanner shrinks its range instead
    if is_rate_limited(code, message):
        return f"rate limited ({code})"
    if code == -32005:
        return "limit exceeded (-32005)"
    if any(word in message for word in _RETRY_WORDS):
        return f"node busy ({code}: {message[:60]})"
    return None


def transient_exception(exc: BaseException) -> str | None:
    """Why a transport exception is worth retrying, or ``None`` when it is not a transient failure."""
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in TRANSIENT_HTTP_STATUS:
            return f"HTTP {status}"
        return None
    if isinstance(exc, (requests.Timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, TooManyRequests):
        return "rate limited"
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return "malformed answer (truncated body)"
    if isinstance(exc, _TRANSPORT_ERRORS):
        return f"connection error ({type(exc).__name__})"
    return None


# ---------------------------------------------------------------------- circuit breaker


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures -> half-open after ``cooldown_s``.

    Half-open lets one trial request through at a time: its success closes the breaker, its
    failure reopens it for another cool-down. Thread-safe. ``clock`` is injectable for tests.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0
        self._listeners: list[Callable[[str], None]] = []

    def add_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(new_state)`` on every state change (metrics, logs)."""
        self._listeners.append(fn)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def _state(self) -> str:
        if self._opened_at is None:
            return self.CLOSED
        if self._clock() - self._opened_at >= self.cooldown_s:
            return self.HALF_OPEN
        return self.OPEN

    def retry_in_s(self) -> float:
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def before_request(self, method: str = "") -> None:
        """Raise :class:`CircuitOpen` unless a request may go out now."""
        with self._lock:
            state = self._state()
            if state == self.CLOSED:
                return
            if state == self.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                log.info("RPC circuit half-open: sending a trial %s", method or "request")
                return
            wait = max(0.0, self.cooldown_s - (self._clock() - (self._opened_at or 0.0)))
        raise CircuitOpen(
            f"RPC circuit breaker open after {self.threshold} consecutive failures: "
            f"next trial in {wait:.1f}s; check the node",
            retry_in_s=wait,
        )

    def record_success(self) -> None:
        changed = False
        with self._lock:
            was_open = self._opened_at is not None
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False
            changed = was_open
        if changed:
            log.info("RPC circuit closed: the node answers again")
            self._notify(self.CLOSED)

    def record_failure(self) -> bool:
        """Count a failed attempt; True if this failure opened (or reopened) the breaker."""
        opened = False
        with self._lock:
            self._failures += 1
            if self._trial_in_flight or (self._opened_at is None and self._failures >= self.threshold):
                self._opened_at = self._clock()
                self._trial_in_flight = False
                self.times_opened += 1
                opened = True
        if opened:
            log.error("RPC circuit opened after %d consecutive failures: pausing requests for %.1fs",
                      self._failures, self.cooldown_s)
            self._notify(self.OPEN)
        return opened

    def reset(self) -> None:
        self.record_success()
        with self._lock:
            self.times_opened = 0

    def _notify(self, state: str) -> None:
        for fn in list(self._listeners):
            fn(state)


# ---------------------------------------------------------------------- counters and faults


@dataclass(frozen=True)
class RpcStats:
    """A point-in-time copy of the counters of a :class:`CountingRpc`."""

    total: int
    by_method: dict[str, int]
    failures: int
    failures_by_method: dict[str, int]
    retries: int
    rejected: int          # requests refused by the open circuit breaker (never sent)
    cached: int            # eth_chainId answered from the cache (never sent)

    def calls(self, method: str) -> int:
        return self.by_method.get(method, 0)

    def __sub__(self, other: "RpcStats") -> "RpcStats":
        """Counters accumulated between ``other`` (earlier) and ``self``."""
        def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}
        return RpcStats(
            self.total - other.total, diff(self.by_method, other.by_method), self.failures - other.failures,
            diff(self.failures_by_method, other.failures_by_method), self.retries - other.retries,
            self.rejected - other.rejected, self.cached - other.cached,
        )


@dataclass
class _Fault:
    remaining: int
    methods: frozenset[str] | None
    message: str = field(default="injected fault: connection refused")

    def matches(self, method: str) -> bool:
        return self.remaining > 0 and (self.methods is None or method in self.methods)


class InjectedFault(ConnectionError):
    """The connection error raised by :meth:`CountingRpc.inject_faults` (a transient failure)."""


# ---------------------------------------------------------------------- the wrapper


class CountingRpc:
    """Counts, retries and circuit-breaks every JSON-RPC request of ``w3`` (installed on creation).

    ``retries`` is the number of retries after the first attempt; the wait before retry ``i``
    (0-based) is ``min(backoff_s * 2**i, backoff_max_s)``. ``sleep`` and ``clock`` are injectable
    (tests; or ``threading.Event().wait`` so that a shutdown cuts a backoff short).
    """

    def __init__(
        self,
        w3: Web3,
        *,
        retries: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 30.0,
        cache_chain_id: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.w3 = w3
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.cache_chain_id = cache_chain_id
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown_s, clock)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._by_method: Counter[str] = Counter()
        self._failures_by_method: Counter[str] = Counter()
        self._retries = 0
        self._rejected = 0
        self._cached = 0
        self._faults: list[_Fault] = []
        self._chain_id_result: Any = None
        self._saved_retry_config: Any = None
        self._installed = False
        self.install()

    @classmethod
    def from_config(cls, w3: Web3, config: "BotConfig", **kwargs: Any) -> "CountingRpc":
        """A wrapper with the retry and breaker settings of ``config``."""
        return cls(
            w3,
            retries=config.rpc_retries,
            backoff_s=config.rpc_backoff_s,
            backoff_max_s=config.rpc_backoff_max_s,
            breaker_threshold=config.breaker_threshold,
            breaker_cooldown_s=config.breaker_cooldown_s,
            **kwargs,
        )

    # installation --------------------------------------------------------
    def install(self) -> None:
        """Put the middleware at the innermost layer of ``w3`` (idempotent)."""
        if self._installed:
            return
        rpc = self

        def build(w3: Web3) -> Web3Middleware:
            return _CountingMiddleware(w3, rpc)

        self.w3.middleware_onion.inject(build, name=MIDDLEWARE_NAME, layer=0)
        provider = self.w3.provider
        if hasattr(provider, "exception_retry_configuration"):
            self._saved_retry_config = provider.exception_retry_configuration
            provider.exception_retry_configuration = None  # we retry, and count each attempt
        self._installed = True

    def uninstall(self) -> None:
        """Remove the middleware and restore the provider's own retry configuration."""
        if not self._installed:
            return
        self.w3.middleware_onion.remove(MIDDLEWARE_NAME)
        provider = self.w3.provider
        if hasattr(provider, "exception_retry_configuration") and self._saved_retry_config is not None:
            provider.exception_retry_configuration = self._saved_retry_config
        self._installed = False

    def __enter__(self) -> "CountingRpc":
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # counters ------------------------------------------------------------
    @property
    def total(self) -> int:
        """Requests sent to the node (attempts, retries included; cached and rejected excluded)."""
        with self._lock:
            return sum(self._by_method.values())

    def count(self, method: str) -> int:
        with self._lock:
            return self._by_method[method]

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_method)

    def stats(self) -> RpcStats:
        with self._lock:
            return RpcStats(
                total=sum(self._by_method.values()),
                by_method=dict(self._by_method),
                failures=sum(self._failures_by_method.values()),
                failures_by_method=dict(self._failures_by_method),
                retries=self._retries,
                rejected=self._rejected,
                cached=self._cached,
            )

    def reset_counts(self) -> None:
        with self._lock:
            self._by_method.clear()
            self._failures_by_method.clear()
            self._retries = self._rejected = self._cached = 0

    # fault injection -----------------------------------------------------
    def inject_faults(self, count: int, methods: Iterable[str] | None = None,
                      message: str = "injected fault: connection refused") -> None:
        """Make the next ``count`` requests (of ``methods``, default any) fail with a connection error.

        The failing attempts are counted, retried and seen by the breaker exactly like a real
        outage; they never reach the node. Several injections queue up in order.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._faults.append(_Fault(count, frozenset(methods) if methods is not None else None, message))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _take_fault(self, method: str) -> InjectedFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method):
                    fault.remaining -= 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return InjectedFault(fault.message)
        return None

    # the request path ----------------------------------------------------
    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return min(self.backoff_s * (2 ** attempt), self.backoff_max_s)

    def request(self, make_request: "MakeRequestFn", method: "RPCEndpoint", params: Any) -> "RPCResponse":
        """Send one request through counting, fault injection, retries and the breaker."""
        if method == "eth_chainId" and self.cache_chain_id and self._chain_id_result is not None:
            with self._lock:
                self._cached += 1
            return {"jsonrpc": "2.0", "id": 0, "result": self._chain_id_result}  # type: ignore[return-value]

        attempt = 0
        while True:
            try:
                self.breaker.before_request(method)
            except CircuitOpen:
                with self._lock:
                    self._rejected += 1
                raise
            with self._lock:
                self._by_method[method] += 1
            reason: str | None
            cause: BaseException | None = None
            try:
                fault = self._take_fault(method)
                if fault is not None:
                    raise fault
                response = make_request(method, params)
            except _TRANSPORT_ERRORS as exc:
                reason = transient_exception(exc)
                if reason is None:
                    self.breaker.record_success()  # the node answered (e.g. HTTP 413): not an outage
                    raise
                cause = exc
            except Exception:
                # Anything else is the node's answer raised as an exception (eth-tester raises
                # reverts and rejected transactions): the node is up. Not retried.
                self.breaker.record_success()
                raise
            else:
                error = response.get("error") if isinstance(response, Mapping) else None
                if not isinstance(response, Mapping) or ("result" not in response and error is None):
                    reason = "malformed answer (neither result nor error)"
                else:
                    reason = transient_error_response(method, error) if isinstance(error, Mapping) else None
                if reason is None:
                    self.breaker.record_success()
                    if method == "eth_chainId" and isinstance(response, Mapping) and "result" in response:
                        self._chain_id_result = response["result"]
                    return response
            self._transient_failure(method, [method], reason or "error", attempt, cause)
            attempt += 1

    def _transient_failure(self, label: str, methods: Iterable[str], reason: str, attempt: int,
                           cause: BaseException | None) -> None:
        """Count a transient failure of attempt number ``attempt`` (0-based) of ``label`` (a method,
        or a batch of ``methods``); raise when the breaker opens or the retries are used up, else
        wait the backoff before the next attempt."""
        with self._lock:
            for method in dict.fromkeys(methods):
                self._failures_by_method[method] += 1
        opened = self.breaker.record_failure()
        if opened or self.breaker.state == CircuitBreaker.OPEN:
            raise CircuitOpen(f"{label} failed ({reason}) and the RPC circuit breaker opened: check the node",
                              retry_in_s=self.breaker.retry_in_s()) from cause
        if attempt >= self.retries:
            raise RpcError(f"{label} failed after {attempt + 1} attempt(s): {reason}; "
                           "check the node or raise XMARGIN_RPC_RETRIES") from cause
        delay = self.backoff(attempt)
        log.warning("%s failed (%s); retry %d/%d in %.2fs", label, reason, attempt + 1, self.retries, delay)
        with self._lock:
            self._retries += 1
        self._sleep(delay)

    def batch_request(self, make_batch_request: "MakeBatchRequestFn",
                      requests_info: list[tuple["RPCEndpoint", Any]]) -> Any:
        """A JSON-RPC batch: one transport call, so it fails, is retried (the whole batch, with the
        same backoff as a single request) and is seen by the breaker as one request; every member
        is counted on every attempt. An injected fault for any member's method fails the batch.
        The members' own answers (errors included) are returned as they are, for the caller.
        Resending a batch is safe for what the bot batches: ``eth_call`` has no effect and a raw
        transaction the node already has is answered "already known"."""
        label = f"batch of {len(requests_info)} requests"
        methods = [method for method, _ in requests_info]
        attempt = 0
        while True:
            try:
                self.breaker.before_request("batch")
            except CircuitOpen:
                with self._lock:
                    self._rejected += 1
                raise
            with self._lock:
                for method in methods:
                    self._by_method[method] += 1
            cause: BaseException | None = None
            try:
                fault = next((f for f in (self._take_fault(m) for m in dict.fromkeys(methods)) if f), None)
                if fault is not None:
                    raise fault
                response = make_batch_request(requests_info)
            except _TRANSPORT_ERRORS as exc:
                reason = transient_exception(exc)
                if reason is None:
                    self.breaker.record_success()
                    raise
                cause = exc
            else:
                if isinstance(response, list) and len(response) == len(requests_info) and all(
                        isinstance(r, Mapping) and ("result" in r or "error" in r) for r in response):
                    self.breaker.record_success()
                    return response
                if isinstance(response, Mapping) and isinstance(response.get("error"), Mapping):
                    # One error object for the whole batch: a node that refuses batches, or a
                    # rate limit. The former is the caller's answer; the latter is retried.
                    reason = transient_error_response("batch", response["error"])
                    if reason is None:
                        self.breaker.record_success()
                        return response
                else:
                    reason = "malformed batch answer"
                cause = None
            self._transient_failure(label, methods, reason, attempt, cause)
            attempt += 1


class _CountingMiddleware(Web3Middleware):
    """The web3 middleware object; all state lives in the shared :class:`CountingRpc`."""

    def __init__(self, w3: Web3, rpc: CountingRpc) -> None:
        super().__init__(w3)
        self._rpc = rpc

    def wrap_make_request(self, make_request: "MakeRequestFn") -> "MakeRequestFn":
        rpc = self._rpc

        def middleware(method: "RPCEndpoint", params: Any) -> "RPCResponse":
            return rpc.request(make_request, method, params)

        return middleware

    def wrap_make_batch_request(self, make_batch_request: "MakeBatchRequestFn") -> "MakeBatchRequestFn":
        rpc = self._rpc

        def middleware(requests_info: list[tuple["RPCEndpoint", Any]]) -> Any:
            return rpc.batch_request(make_batch_request, requests_info)

        return middleware  # type: ignore[return-value]
