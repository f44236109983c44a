"""Reading the chain: the head with a stale-head watchdog, reorg checks, the bot's log scanner.

:func:`log_scanner` gives the project's one adaptive ``eth_getLogs`` scanner
(:class:`protocol_model.logscan.LogScanner`) with the bot's chunk settings.

:class:`HeadWatcher` reads the latest block (one ``eth_getBlockByNumber`` per poll, or the newest
header a ``newHeads`` subscription pushed: :mod:`bot.ws`) and reports a stale head when no new block
arrived for ``stale_after_s`` seconds.

:func:`find_fork_point` compares block hashes the bot stored for its lookback window with the
chain's, to find where a reorg forked off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from web3 import Web3
from web3.exceptions import BlockNotFound

from protocol_model.logscan import LogScanner

from .errors import CircuitOpen, StaleHead

if TYPE_CHECKING:
    from .config import BotConfig
    from .ws import WsHeads

log = logging.getLogger(__name__)


def _hex(value: Any) -> str:
    """A block hash / tx hash as a 0x-prefixed lower-case hex string."""
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else "0x" + value.lower()
    return "0x" + bytes(value).hex()


def _int(value: Any) -> int:
    """A quantity from web3 (int) or from raw JSON (0x hex string)."""
    return int(value, 16) if isinstance(value, str) else int(value)


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return bytes.fromhex(value[2:] if value.startswith("0x") else value) if isinstance(value, str) else bytes(value)


def log_scanner(w3: Web3, config: "BotConfig", addresses: str | Sequence[str], topics: Sequence[Any] | None,
                start_block: int) -> LogScanner:
    """The model's adaptive :class:`~protocol_model.logscan.LogScanner` with the bot's chunk
    settings; an open circuit breaker is never taken for a range refusal."""
    return LogScanner(w3, addresses, topics, start_block, config.log_chunk_initial_blocks,
                      config.log_chunk_min_blocks, config.log_chunk_max_blocks, not_refusals=(CircuitOpen,),
                      min_range_retries=config.rpc_retries, backoff_s=config.rpc_backoff_s,
                      backoff_max_s=config.rpc_backoff_max_s)


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
    logs_bloom: bytes | None = None   # the header's 256-byte logsBloom (None if the node gave none)

    @classmethod
    def from_block(cls, block: Mapping[str, Any], seen_at: float) -> "Head":
        """From web3's block (ints, bytes) or a raw JSON header (a ``newHeads`` notification)."""
        base = block.get("baseFeePerGas")
        return cls(
            number=_int(block["number"]),
            hash=_hex(block["hash"]),
            parent_hash=_hex(block["parentHash"]),
            timestamp=_int(block["timestamp"]),
            base_fee_wei=_int(base) if base is not None else None,
            seen_at=seen_at,
            logs_bloom=_bytes(block.get("logsBloom")),
        )


class HeadWatcher:
    """Polls the latest block, or takes it from a ``newHeads`` subscription (``heads``) while that
    is connected; a watchdog says when no new block came for ``stale_after_s``."""

    def __init__(self, w3: Web3, stale_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 heads: "WsHeads | None" = None, http_check_s: float | None = None) -> None:
        from .ws import HTTP_CHECK_S

        self.w3 = w3
        self.stale_after_s = stale_after_s
        self._clock = clock
        self.heads = heads
        self.http_check_s = HTTP_CHECK_S if http_check_s is None else http_check_s   # pushed: longest without HTTP
        self.latest: Head | None = None
        self._last_change = clock()
        self._last_http = float("-inf")
        self._stale_reported = False

    @property
    def pushed(self) -> bool:
        """New heads arrive by subscription (the WebSocket is connected)."""
        return self.heads is not None and self.heads.alive

    def _read(self) -> Mapping[str, Any] | None:
        """The newest block: pushed if a header arrived, else over HTTP (always before the first
        head, without a subscription, and every ``http_check_s`` as a safety check)."""
        if self.latest is not None and self.pushed and self.heads is not None:
            header = self.heads.newest()
            if header is not None and int(header["number"], 16) >= self.latest.number:
                return header   # (an older one is a late notification of a block already seen)
            if self._clock() - self._last_http < self.http_check_s:
                return None
        self._last_http = self._clock()
        return self.w3.eth.get_block("latest")

    def poll(self) -> Head | None:
        """The latest head if it changed since the last poll (new number or new hash), else None."""
        block = self._read()
        if block is None:
            return None
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


__all__ = ["Head", "HeadWatcher", "block_hash", "find_fork_point", "log_scanner"]
