"""Reading the chain: logs in adaptive chunks, the head with a stale-head watchdog, reorg checks.

:class:`LogScanner` walks ``eth_getLogs`` forward from a start block in chunks. Providers cap a
request by block range or by result count and say so in many shapes (see
:func:`bot.rpc.is_log_range_error`); on such an answer the scanner halves the range and asks again
for the same blocks, and after a few successes it doubles the range again, never above the
smallest range that failed recently nor above ``max_chunk``. Logs come back ordered by
``(blockNumber, logIndex)``.

:class:`HeadWatcher` reads the latest block (one ``eth_getBlockByNumber`` per poll) and reports a
stale head when no new block arrived for ``stale_after_s`` seconds.

:func:`find_fork_point` compares block hashes the bot stored for its lookback window with the
chain's, to find where a reorg forked off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from web3 import Web3
from web3.exceptions import BlockNotFound, Web3RPCError
from web3.types import FilterParams, LogReceipt

from .errors import CircuitOpen, LogRangeError, RpcError, StaleHead
from .rpc import is_log_range_error

if TYPE_CHECKING:
    from .config import BotConfig

log = logging.getLogger(__name__)


def _hex(value: Any) -> str:
    """A block hash / tx hash as a 0x-prefixed lower-case hex string."""
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else "0x" + value.lower()
    return "0x" + bytes(value).hex()


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
        chunk: int = 2000,
        min_chunk: int = 1,
        max_chunk: int = 10_000,
        *,
        grow_after: int = 3,
        forget_ceiling_after: int = 64,
        min_range_retries: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if not 1 <= min_chunk <= chunk <= max_chunk:
            raise ValueError("need 1 <= min_chunk <= chunk <= max_chunk")
        if start_block < 0:
            raise ValueError("start_block must be >= 0")
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
        self.min_range_retries = min_range_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self.stats = ScanStats()
        self._ceiling: int | None = None   # largest range believed to pass (smallest refused - 1)
        self._streak = 0                   # consecutive successful requests

    @classmethod
    def from_config(cls, w3: Web3, config: "BotConfig", addresses: str | Sequence[str],
                    topics: Sequence[Any] | None, start_block: int) -> "LogScanner":
        return cls(w3, addresses, topics, start_block, config.log_chunk_initial_blocks,
                   config.log_chunk_min_blocks, config.log_chunk_max_blocks, min_range_retries=config.rpc_retries,
                   backoff_s=config.rpc_backoff_s, backoff_max_s=config.rpc_backoff_max_s)

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
        where it was and the error propagates (:class:`RpcError`, :class:`LogRangeError`).
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
            except (Web3RPCError, requests.HTTPError, RpcError) as exc:
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
        if isinstance(exc, CircuitOpen):
            return False
        if isinstance(exc, RpcError):
            # Retries exhausted on timeouts: big ranges often time out instead of being refused.
            return hi > lo and isinstance(exc.__cause__, (requests.Timeout, TimeoutError))
        return is_log_range_error(exc)

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
        params: FilterParams = {"fromBlock": lo, "toBlock": hi, "address": self.addresses}
        if self.topics is not None:
            params["topics"] = self.topics
        logs = self.w3.eth.get_logs(params)
        return sorted(logs, key=lambda entry: (entry["blockNumber"], entry["logIndex"]))


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------------- head and watchdog


@dataclass(frozen=True)
class Head:
    """The latest block as the bot saw it."""

    number: int
    hash: str                   # 0x hex
    parent_hash: str            # 0x hex
    timestamp: int              # block timestamp, seconds
    base_fee_wei: int | None    # None before London
    seen_at: float              # monotonic seconds when the bot first saw it

    @classmethod
    def from_block(cls, block: Mapping[str, Any], seen_at: float) -> "Head":
        base = block.get("baseFeePerGas")
        return cls(
            number=int(block["number"]),
            hash=_hex(block["hash"]),
            parent_hash=_hex(block["parentHash"]),
            timestamp=int(block["timestamp"]),
            base_fee_wei=int(base) if base is not None else None,
            seen_at=seen_at,
        )


class HeadWatcher:
    """Polls the latest block; a watchdog says when no new block came for ``stale_after_s``."""

    def __init__(self, w3: Web3, stale_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.w3 = w3
        self.stale_after_s = stale_after_s
        self._clock = clock
        self.latest: Head | None = None
        self._last_change = clock()
        self._stale_reported = False

    def poll(self) -> Head | None:
        """The latest head if it changed since the last poll (new number or new hash), else None."""
        block = self.w3.eth.get_block("latest")
        now = self._clock()
        head = Head.from_block(block, now)
        if self.latest is not None and head.number == self.latest.number and head.hash == self.latest.hash:
            return None
        if self.latest is not None and head.number < self.latest.number:
            log.warning("head went back from %d to %d: a reorg or a node that lags", self.latest.number, head.number)
        self.latest = head
        self._last_change = now
        if self._stale_reported:
            log.info("head moves again at block %d", head.number)
            self._stale_reported = False
        return head

    def seconds_since_new_head(self) -> float:
        return self._clock() - self._last_change

    def is_stale(self) -> bool:
        """True when no new head was seen for longer than ``stale_after_s`` (logged once per episode)."""
        stale = self.seconds_since_new_head() > self.stale_after_s
        if stale and not self._stale_reported:
            self._stale_reported = True
            log.warning("no new block for %.0fs (head %s): the node may be stuck or out of sync",
                        self.seconds_since_new_head(), self.latest.number if self.latest else "unknown")
        return stale

    def check(self) -> None:
        """Raise :class:`StaleHead` when the head is stale."""
        if self.is_stale():
            raise StaleHead(
                f"no new block for {self.seconds_since_new_head():.0f}s (limit {self.stale_after_s:.0f}s): "
                "check that the node is syncing, or point --rpc at another node"
            )


# ---------------------------------------------------------------------- reorg detection


def block_hash(w3: Web3, number: int) -> str | None:
    """The canonical hash of block ``number``, or None if the chain is shorter."""
    try:
        block = w3.eth.get_block(number)
    except BlockNotFound:
        return None
    return _hex(block["hash"]) if block is not None else None


def find_fork_point(w3: Web3, known: Mapping[int, str]) -> int | None:
    """Where a reorg forked off the blocks the bot processed, or None when there was no reorg.

    ``known`` maps block numbers to the hashes the bot saw (its lookback window). Costs one
    ``eth_getBlockByNumber`` in the steady state (the newest known block still matches). On a
    mismatch, walks down and returns the newest known block whose hash still matches; if none
    does, the block before the oldest known one (the reorg is deeper than the window).
    """
    if not known:
        return None
    numbers = sorted(known, reverse=True)
    newest = numbers[0]
    if block_hash(w3, newest) == _hex(known[newest]):
        return None
    for number in numbers[1:]:
        if block_hash(w3, number) == _hex(known[number]):
            log.warning("reorg: blocks after %d changed (had processed up to %d)", number, newest)
            return number
    fork = numbers[-1] - 1
    log.error("reorg deeper than the lookback window: every stored hash from %d to %d changed", numbers[-1], newest)
    return fork


__all__ = ["Head", "HeadWatcher", "LogScanner", "ScanStats", "block_hash", "find_fork_point"]
