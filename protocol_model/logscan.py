"""Reading event logs in adaptive chunks: the one ``eth_getLogs`` loop of the project.

:class:`LogScanner` walks ``eth_getLogs`` forward from a start block in chunks. Providers cap a
request by block range or by result count and say so in many shapes (see
:func:`is_log_range_error`); on such an answer the scanner halves the range and asks again for the
same blocks, and after a few successes it doubles the range again, never above the smallest range
that failed recently nor above ``max_chunk``. Logs come back ordered by ``(blockNumber, logIndex)``.

The keeper's mirror (:mod:`bot.mirror`, through :func:`bot.scanner.log_scanner`), account discovery
(:func:`protocol_model.loader.discover_accounts`), the rebuild from logs
(:func:`protocol_model.logs.fetch_events`) and so the CLI's ``xmargin accounts`` all read logs with
it, so they work on the same providers.

A request that failed for good in a retrying layer below (a ``ConnectionError`` whose cause is a
timeout) also counts as a refusal when it spans more than one block: big ranges often time out
instead of being refused. ``not_refusals`` names errors that never count (the keeper's open
circuit breaker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from web3 import Web3
from web3.exceptions import Web3RPCError
from web3.middleware import Web3Middleware
from web3.types import FilterParams, LogReceipt

from .errors import ConfigError, LogRangeError

log = logging.getLogger(__name__)

DEFAULT_LOG_CHUNK = 2_000      # blocks of the first eth_getLogs request
DEFAULT_MAX_LOG_CHUNK = 10_000
_RATE_LIMIT_WORDS = (
    "rate limit", "rate-limit", "ratelimit", "too many requests", "request rate", "requests per",
    "per second", "compute units", "credits", "throughput", "capacity", "throttl",
)
_LOG_RANGE_WORDS = (
    "range", "too many", "limit", "exceed", "response size", "too large", "more than", "max results",
)
_REVERT_CODES = frozenset({3})  # geth/anvil: execution reverted
ATTRDICT = "attrdict"           # web3's name of its AttributeDict middleware


# ---------------------------------------------------------------------- error classification


def error_fields(error: BaseException | Mapping[str, Any] | None) -> tuple[int | None, str]:
    """``(code, lower-case message)`` of a JSON-RPC error object, a web3 RPC error or an HTTP error."""
    if error is None:
        return None, ""
    if isinstance(error, Mapping):
        code = error.get("code")
        return (code if isinstance(code, int) else None), str(error.get("message", "")).lower()
    if isinstance(error, Web3RPCError):
        response = error.rpc_response if isinstance(error.rpc_response, Mapping) else None
        inner = response.get("error") if response else None
        if isinstance(inner, Mapping):
            return error_fields(inner)
        return None, str(error.message).lower()
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code, f"http {error.response.status_code} {error.response.reason or ''}".lower()
    return None, str(error).lower()


def is_revert(code: int | None, message: str) -> bool:
    """An execution revert (an answer about the call, not about the request)."""
    return code in _REVERT_CODES or "revert" in message


def is_rate_limited(code: int | None, message: str) -> bool:
    """A rate-limit / over-capacity answer: retry later, do not change the request."""
    return code == 429 or any(word in message for word in _RATE_LIMIT_WORDS)


def is_log_range_error(error: BaseException | Mapping[str, Any]) -> bool:
    """An ``eth_getLogs`` answer meaning "ask for fewer blocks / fewer results".

    Matches the shapes providers use: ``-32005`` (Infura "query returned more than 10000 results",
    "limit exceeded"), ``-32602`` mentioning a range (QuickNode, Alchemy "block range"), HTTP 413,
    and messages with "range", "limit", "too many", "exceed", "response size", "more than"
    (geth "query timeout exceeded", Alchemy "Log response size exceeded", Cloudflare "Exceeded
    max range limit"). A rate limit ("request rate exceeded") is not a range error.
    """
    code, message = error_fields(error)
    if is_revert(code, message):
        return False
    if is_rate_limited(code, message):
        return False
    if code == 413:
        return True
    if code == -32005:
        return True
    if code == -32602:
        return "range" in message or "block" in message
    return any(word in message for word in _LOG_RANGE_WORDS)


# ---------------------------------------------------------------------- the scanner


@dataclass
class ScanStats:
    requests: int = 0       # eth_getLogs requests answered with logs
    refused: int = 0        # eth_getLogs requests refused for their range (then shrunk)
    logs: int = 0
    shrinks: int = 0
    grows: int = 0


class LogScanner:
    """Forward ``eth_getLogs`` scanner with a cursor and an adaptive block range.

    ``addresses`` (one or several contracts) and ``topics`` (the usual positional topic filter,
    e.g. ``[[topic_a, topic_b]]`` for "either event") select the logs. The cursor
    :attr:`next_block` starts at ``start_block``; :meth:`scan` reads up to a block and moves it.
    """

    def __init__(
        self,
        w3: Web3,
        addresses: str | Sequence[str],
        topics: Sequence[Any] | None = None,
        start_block: int = 0,
        chunk: int = DEFAULT_LOG_CHUNK,
        min_chunk: int = 1,
        max_chunk: int = DEFAULT_MAX_LOG_CHUNK,
        *,
        grow_after: int = 3,
        forget_ceiling_after: int = 64,
        not_refusals: tuple[type[BaseException], ...] = (),
        min_range_retries: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], Any] = time.sleep,
        raw: bool = False,
    ) -> None:
        if not 1 <= min_chunk <= chunk <= max_chunk:
            raise ConfigError(f"log chunks need 1 <= min ({min_chunk}) <= initial ({chunk}) <= max ({max_chunk}) blocks")
        if start_block < 0:
            raise ConfigError(f"start block {start_block} is negative")
        self.w3 = w3
        if isinstance(addresses, str):
            addresses = [addresses]
        self.addresses = [Web3.to_checksum_address(a) for a in addresses]
        self.topics = list(topics) if topics is not None else None
        self.next_block = start_block
        self.chunk = chunk
        self.min_chunk = min_chunk
        self.max_chunk = max_chunk
        self.grow_after = grow_after
        self.forget_ceiling_after = forget_ceiling_after
        self.not_refusals = not_refusals
        self.min_range_retries = min_range_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self.raw = raw     # logs as the node sends them (hex strings), without web3's result formatting
        self.stats = ScanStats()
        self._ceiling: int | None = None   # largest range believed to pass (smallest refused - 1)
        self._streak = 0                   # consecutive successful requests

    # cursor ----------------------------------------------------------------
    def rewind(self, block: int) -> None:
        """Move the cursor back so the next scan starts at ``block`` at the latest (lookback, reorg)."""
        self.next_block = max(0, min(self.next_block, block))

    def seek(self, block: int) -> None:
        """Put the cursor at ``block`` (e.g. the block after the last one a restart had processed)."""
        self.next_block = max(0, block)

    # scanning ----------------------------------------------------------------
    def scan(self, to_block: int) -> list[LogReceipt]:
        """All logs from :attr:`next_block` through ``to_block``, ordered by (block, logIndex).

        Moves the cursor to ``to_block + 1``. If a request fails for good, the cursor stays
        where it was and the error propagates (:class:`~protocol_model.errors.LogRangeError`, or
        what the provider raised).
        """
        start = self.next_block
        out: list[LogReceipt] = []
        try:
            for _, _, logs in self.iter_chunks(to_block):
                out.extend(logs)
        except BaseException:
            self.next_block = start
            raise
        return out

    def iter_chunks(self, to_block: int) -> Iterator[tuple[int, int, list[LogReceipt]]]:
        """Yield ``(from_block, to_block, logs)`` chunk by chunk; the cursor moves past each chunk
        once the consumer asks for the next one, so a consumer that persists its progress per
        chunk resumes exactly there after an error."""
        while self.next_block <= to_block:
            lo = self.next_block
            hi = min(to_block, lo + self.chunk - 1)
            logs, hi = self._fetch_adaptive(lo, hi)
            yield lo, hi, logs
            self.next_block = hi + 1

    def fetch(self, from_block: int, to_block: int) -> list[LogReceipt]:
        """Logs of ``[from_block, to_block]`` in adaptive chunks, without moving the cursor."""
        out: list[LogReceipt] = []
        lo = from_block
        while lo <= to_block:
            hi = min(to_block, lo + self.chunk - 1)
            logs, hi = self._fetch_adaptive(lo, hi)
            out.extend(logs)
            lo = hi + 1
        return out

    def _fetch_adaptive(self, lo: int, hi: int) -> tuple[list[LogReceipt], int]:
        """Fetch ``[lo, hi]``, shrinking ``hi`` until the provider accepts; returns (logs, hi used).

        A refusal at the smallest range cannot be a range limit the scanner can satisfy: it is a
        rate limit in disguise (some providers answer both with ``-32005``), so the same request
        is retried after a backoff, ``min_range_retries`` times, before :class:`LogRangeError`."""
        floor_refusals = 0
        while True:
            try:
                logs = self._get_logs(lo, hi)
            except (Web3RPCError, requests.HTTPError, ConnectionError) as exc:
                if not self._is_range_refusal(exc, lo, hi):
                    raise
                size = hi - lo + 1
                self.stats.refused += 1
                if size <= self.min_chunk:
                    if floor_refusals >= self.min_range_retries:
                        raise LogRangeError(
                            f"eth_getLogs is refused even for {size} block(s) at block {lo} after "
                            f"{floor_refusals + 1} attempts ({_short(exc)}): use a node without log limits, "
                            "or lower XMARGIN_LOG_CHUNK_MIN_BLOCKS"
                        ) from exc
                    delay = min(self.backoff_s * 2 ** floor_refusals, self.backoff_max_s)
                    floor_refusals += 1
                    log.warning("eth_getLogs refused %d block(s) at block %d (%s): a rate limit, retry %d/%d in %.2fs",
                                size, lo, _short(exc), floor_refusals, self.min_range_retries, delay)
                    self._sleep(delay)
                    continue
                self._ceiling = size - 1 if self._ceiling is None else min(self._ceiling, size - 1)
                self.chunk = max(self.min_chunk, size // 2)
                self._streak = 0
                self.stats.shrinks += 1
                log.info("eth_getLogs refused %d blocks from %d (%s): shrinking to %d", size, lo, _short(exc), self.chunk)
                hi = lo + self.chunk - 1
                continue
            self.stats.requests += 1
            self.stats.logs += len(logs)
            self._after_success()
            return logs, hi

    def _is_range_refusal(self, exc: BaseException, lo: int, hi: int) -> bool:
        if isinstance(exc, self.not_refusals):
            return False
        if isinstance(exc, (Web3RPCError, requests.HTTPError)):
            return is_log_range_error(exc)
        # Retries exhausted on timeouts: big ranges often time out instead of being refused.
        return hi > lo and isinstance(exc.__cause__, (requests.Timeout, TimeoutError))

    def _after_success(self) -> None:
        self._streak += 1
        if self._ceiling is not None and self._streak >= self.forget_ceiling_after:
            self._ceiling = None
        if self._streak % self.grow_after == 0:
            limit = self.max_chunk if self._ceiling is None else max(self.min_chunk, min(self.max_chunk, self._ceiling))
            grown = min(limit, self.chunk * 2)
            if grown > self.chunk:
                self.chunk = grown
                self.stats.grows += 1
                log.debug("eth_getLogs range grown to %d blocks", grown)

    def _get_logs(self, lo: int, hi: int) -> list[LogReceipt]:
        if self.raw:
            # Through the middlewares (retries, counting) but not web3's per-field result formatting,
            # which costs more than decoding the logs (the start-up scan reads every log).
            query: dict[str, Any] = {"fromBlock": hex(lo), "toBlock": hex(hi), "address": self.addresses}
            if self.topics is not None:
                query["topics"] = self.topics
            with _plain_results(self.w3):
                entries = self.w3.manager.request_blocking("eth_getLogs", [query])
            return sorted(entries, key=lambda entry: (_quantity(entry["blockNumber"]), _quantity(entry["logIndex"])))
        params: FilterParams = {"fromBlock": lo, "toBlock": hi, "address": self.addresses}
        if self.topics is not None:
            params["topics"] = self.topics
        logs = self.w3.eth.get_logs(params)
        return sorted(logs, key=lambda entry: (entry["blockNumber"], entry["logIndex"]))


class _PlainResults(Web3Middleware):
    """Stands in for web3's ``attrdict`` middleware: results stay the node's JSON."""


@contextmanager
def _plain_results(w3: Web3) -> Iterator[None]:
    """Without web3's ``attrdict`` middleware for the duration (it wraps every dict of a result in
    an AttributeDict: as costly as decoding the logs of a start-up scan); the other middlewares
    (retries, counting) stay. Restored at its place in the onion afterwards."""
    onion = w3.middleware_onion
    if ATTRDICT not in onion.keys():
        yield
        return
    original = onion.get(ATTRDICT)
    onion.replace(ATTRDICT, _PlainResults)
    try:
        yield
    finally:
        onion.replace(ATTRDICT, original)


def _quantity(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def fetch_logs(w3: Web3, addresses: str | Sequence[str], topics: Sequence[Any] | None, from_block: int,
               to_block: int, chunk: int = DEFAULT_LOG_CHUNK) -> list[LogReceipt]:
    """The logs of ``[from_block, to_block]`` in adaptive chunks starting at ``chunk`` blocks,
    ordered by (block, logIndex) within each chunk, chunks in order."""
    return LogScanner(w3, addresses, topics, max(0, from_block), chunk, max_chunk=max(chunk, DEFAULT_MAX_LOG_CHUNK)
                      ).fetch(from_block, to_block)


__all__ = [
    "DEFAULT_LOG_CHUNK",
    "DEFAULT_MAX_LOG_CHUNK",
    "LogScanner",
    "ScanStats",
    "error_fields",
    "fetch_logs",
    "is_log_range_error",
    "is_rate_limited",
    "is_revert",
]
