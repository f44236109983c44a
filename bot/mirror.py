"""The bot's mirror of the protocol: every account's state and health, kept current from logs.

Startup (:meth:`ChainMirror.start`), at the head block ``B``:

* a reorg check of the blocks the last run processed (stored hashes), rewinding the store if needed;
* discovery of depositors from ``Deposit`` logs, from the store's next block (the deployment block
  on a first start) through ``B``, with the adaptive :class:`~protocol_model.logscan.LogScanner`; progress is
  saved chunk by chunk, so an interrupted first scan resumes where it stopped;
* one ``Lens.protocol`` call and one ``Lens.accounts`` call per ``lens_batch_size`` accounts, all
  pinned to ``B``: a consistent snapshot, without replaying old logs (after a restart: the stored
  accounts plus those discovered since);
* a :class:`~protocol_model.health.HealthBook` over that state.

Each new head (:meth:`ChainMirror.sync`):

* reorg check: free when the head's parent is the last processed block (the usual case), else one
  ``eth_getBlockByNumber`` through :func:`~bot.scanner.find_fork_point`;
* **one** ``eth_getLogs`` for the engine and every feed over ``[last + 1 - lookback, head]``
  (chunked only when catching up after a pause). Logs already applied are recognised by
  ``(block hash, log index)`` and skipped; logs of blocks the snapshot already covers are skipped;
  a log that shows up late for an already-processed block (a provider whose log index lagged)
  makes its account be re-read through the Lens at the head, never applied out of order;
* engine events set the account's resulting state, and the house's cash and the insurance fund
  from the resulting values each event that moves them carries (SPEC invariant 6;
  :func:`protocol_model.logs.apply_event`; ``LiquidationSkipped`` changes nothing), price
  events move the HealthBook (only the terms that feed prices are recomputed), and only the
  changed accounts are re-read into the book; new depositors go into the store;
* a configuration event (listing, parameters, pause) re-reads the protocol through the Lens and
  rebuilds the book; a reorg rewinds the store and re-reads the touched accounts at the head.

In steady state a block costs a header read and one ``eth_getLogs``, whatever the number of
accounts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from protocol_model.deploy import Deployment
from protocol_model.errors import ChainError
from protocol_model.health import HealthBook
from protocol_model.loader import load_accounts, load_protocol
from protocol_model.logs import ENGINE, FEED, Event, apply_event, decode_log, engine_topic
from protocol_model.logscan import LogScanner
from protocol_model.state import ProtocolState

from .config import BotConfig
from .errors import StoreError
from .scanner import Head, _hex, block_hash, find_fork_point, log_scanner
from .store import LiquidationRecord, Store

log = logging.getLogger(__name__)

ACCOUNT_EVENTS = frozenset({
    "Deposit", "Withdraw", "Trade", "Liquidation", "CollateralLiquidation", "BadDebtSettled",
    "HouseSeeded", "InsuranceSeeded",
})
# Events that change nothing the bot mirrors.
IGNORED_EVENTS = frozenset({"OwnershipTransferStarted", "LiquidationSkipped"})


@dataclass(frozen=True)
class PriceChange:
    """A feed whose price changed during a sync (USD WAD, loose reads)."""

    feed: str
    asset: str
    old_wad: int
    new_wad: int


@dataclass
class SyncResult:
    """What one :meth:`ChainMirror.sync` did."""

    head: int
    from_block: int
    events: int = 0                                            # events applied to the mirror
    new_accounts: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)             # accounts changed by events or reloads
    changed: set[str] = field(default_factory=set)             # accounts whose health may have changed
    price_changes: list[PriceChange] = field(default_factory=list)
    liquidations: list[Event] = field(default_factory=list)    # Liquidation / CollateralLiquidation events applied
    reorg_at: int | None = None                                # last block still canonical after a reorg
    deep_reorg: bool = False                                   # the reorg went below the lookback window
    dropped: list[LiquidationRecord] = field(default_factory=list)   # outcomes the reorg took away
    reloaded: int = 0                                          # accounts re-read through the Lens
    config_reloaded: bool = False
    skipped: bool = False                                      # the head was already processed


class ChainMirror:
    """Account state and health of one deployment, mirrored from the Lens and the logs."""

    def __init__(self, w3: Web3, deployment: Deployment, config: BotConfig, store: Store) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.config = config
        self.store = store
        self.engine = to_checksum_address(deployment.engine)
        self.state: ProtocolState | None = None
        self.book: HealthBook | None = None
        self.assets = {to_checksum_address(addr): asset for asset, addr in deployment.feeds.items()}
        self._snapshot_block = -1                              # blocks <= this: covered by the last full load
        self._seen: dict[int, set[tuple[str, int]]] = {}       # block -> {(block hash, log index)} applied
        self._touched: dict[int, set[str]] = {}                # block -> accounts its events changed
        self._hashes: dict[int, str] = {}                      # processed block -> hash (lookback window)
        self._scanner: LogScanner | None = None
        self.scans: list[tuple[int, int]] = []                 # eth_getLogs ranges asked for, newest last (bounded)
        self.start_reorg: tuple[int, bool] | None = None       # (fork, deep) when start() found the chain reorganised

    # ------------------------------------------------------------------ startup

    def start(self, head: Head) -> int:
        """Discover accounts and load the snapshot at ``head``; returns the number of accounts."""
        known = self.store.block_hashes()
        if known:
            fork = find_fork_point(self.w3, known)
            if fork is not None:
                fork = min(fork, head.number - 1)
                deep = fork < min(known)
                log.warning("the chain reorganised since the last run: rewinding to block %d%s", fork,
                            " (deeper than the lookback window)" if deep else "")
                self.store.rewind_to(fork)
                if deep:
                    self._rediscover(fork)
                self.start_reorg = (fork, deep)
        start = max(self.store.next_block, self.deployment.block)
        if start <= head.number:
            self._discover(start, head.number)
        addresses = self.store.accounts()
        self._load_snapshot(head, addresses)
        self._remember(head)
        return len(addresses)

    def _discover(self, start: int, end: int) -> None:
        scanner = log_scanner(self.w3, self.config, self.engine, [[engine_topic("Deposit")]], start)
        found = 0
        for lo, hi, logs in scanner.iter_chunks(end):
            self._note_scan(lo, hi)
            seen = [(_topic_address(entry["topics"][1]), int(entry["blockNumber"])) for entry in logs]
            with self.store.transaction():
                found += len(self.store.add_accounts(seen))
                if hi < end:
                    self.store.mark_processed(hi, None)
        log.info("discovered %d new account(s) in blocks %d..%d", found, start, end)

    def _check_same_chain(self) -> None:
        """A reorg below the lookback window on a chain whose deployment block changed is no reorg:
        the node now serves another chain (a restarted dev node or anvil). Refuse it, as the store
        refuses such a chain at the start, instead of rewinding the history of the old one."""
        stored = self.store.deployment_block_hash
        if stored is None:
            return
        now = block_hash(self.w3, self.deployment.block)
        if now != stored:
            raise StoreError(
                f"the node now serves another chain: its block {self.deployment.block}, where the engine was "
                f"deployed, is {'missing' if now is None else now[:10] + '…'} (was {stored[:10]}…); was the node "
                "restarted? redeploy with `xmargin deploy --force`, then run the bot with --fresh-db"
            )

    def _rediscover(self, through: int) -> None:
        """Every depositor from the deployment block through ``through`` again (after a reorg
        deeper than the stored hashes, the fork point is unknown: the new branch may have
        depositors the store never saw). Idempotent; does not move the last processed block."""
        if through < self.deployment.block:
            return
        scanner = log_scanner(self.w3, self.config, self.engine, [[engine_topic("Deposit")]], self.deployment.block)
        seen = [(_topic_address(entry["topics"][1]), int(entry["blockNumber"])) for entry in scanner.scan(through)]
        found = self.store.add_accounts(seen)
        log.info("deep reorg: re-read the depositors through block %d, %d new", through, len(found))

    def _load_snapshot(self, head: Head, addresses: Iterable[str]) -> None:
        state = load_protocol(self.w3, self.deployment, head.number)
        load_accounts(self.w3, self.deployment, state, addresses, batch_size=self.config.lens_batch_size,
                      block_identifier=head.number)
        state.block = head.number
        state.timestamp = head.timestamp
        self.state = state
        self.book = HealthBook(state)
        self._snapshot_block = head.number
        self._seen.clear()
        self._touched.clear()
        self._scanner = log_scanner(self.w3, self.config, self._log_addresses(), None, head.number + 1)

    def _log_addresses(self) -> list[str]:
        if self.state is None:
            return [self.engine]
        return [self.engine, *sorted(self.state.feeds)]

    # ------------------------------------------------------------------ per block

    def sync(self, head: Head) -> SyncResult:
        """Bring the mirror to ``head``: reorg check, one ``eth_getLogs``, apply, record progress."""
        if self.state is None or self.book is None or self._scanner is None:
            raise ChainError("the mirror is not started: call start() first")  # dev
        last = self.store.last_block
        if head.number <= last and self._hashes.get(head.number) == head.hash:
            return SyncResult(head.number, head.number + 1, skipped=True)   # a lagging node: nothing new

        # The head's parent is the last processed block: the processed chain is still canonical.
        if not (head.number == last + 1 and self._hashes.get(last) == head.parent_hash):
            fork = find_fork_point(self.w3, self._hashes)
            if fork is not None:
                return self._after_reorg(head, fork)

        lo = max(self.deployment.block, last + 1 - self.config.lookback_blocks, self._snapshot_block + 1)
        lo = min(lo, head.number)
        entries = self._fetch(lo, head.number)
        result = SyncResult(head.number, lo)
        new_events: list[Event] = []
        late_accounts: set[str] = set()
        config_change = False
        for entry, ev in entries:
            key = (_hex(entry["blockHash"]), int(entry["logIndex"]))
            if ev.block <= self._snapshot_block or key in self._seen.get(ev.block, ()):
                continue
            self._seen.setdefault(ev.block, set()).add(key)
            if ev.block > last:
                new_events.append(ev)
                continue
            # A log of an already processed block that was not there before.
            if ev.contract == FEED:
                feed = self.state.feeds.get(ev.address)
                if feed is not None and int(ev.args.get("roundId", 0)) > feed.round_id:
                    new_events.append(ev)
            elif ev.name in ACCOUNT_EVENTS:
                late_accounts.add(_account_of(ev, self.engine))
            elif ev.name not in IGNORED_EVENTS:
                config_change = True
            log.warning("late log %s of block %d, which was already processed: reconciled at block %d",
                        ev.name, ev.block, head.number)

        self._apply(new_events, result)
        if config_change or result.config_reloaded or late_accounts:
            # The Lens at the head is authoritative for everything it re-reads, events included.
            self._reload(head, late_accounts, protocol=True)
            result.config_reloaded = True
            result.reloaded = len(late_accounts)
            result.touched |= late_accounts
            result.changed = set(self.state.accounts)
        self.state.block = head.number
        self.state.timestamp = head.timestamp
        self._remember(head)
        return result

    def _fetch(self, lo: int, hi: int) -> list[tuple[Any, Event]]:
        scanner = self._scanner
        if scanner is None:  # dev: set by start()
            raise ChainError("the mirror is not started")
        scanner.addresses = [Web3.to_checksum_address(a) for a in self._log_addresses()]
        self._note_scan(lo, hi)
        raw = scanner.fetch(lo, hi)
        out: list[tuple[Any, Event]] = []
        for entry in raw:
            contract = ENGINE if to_checksum_address(entry["address"]) == self.engine else FEED
            ev = decode_log(entry, contract)
            if ev is not None:
                out.append((entry, ev))
        out.sort(key=lambda pair: pair[1].order)
        return out

    def _apply(self, events: list[Event], result: SyncResult) -> None:
        state, book = self.state, self.book
        if state is None or book is None:  # dev: set by start()
            raise ChainError("the mirror is not started")
        moved: dict[str, int] = {}
        touched: set[str] = set()
        deposits: list[tuple[str, int]] = []
        for ev in events:
            if ev.contract == FEED:
                if ev.name != "AnswerUpdated" or ev.address not in state.feeds:
                    continue
                moved.setdefault(ev.address, book.price(ev.address))
                apply_event(state, ev)
                result.events += 1
                continue
            if ev.name in ACCOUNT_EVENTS:
                who = apply_event(state, ev)
                result.events += 1
                if who is not None:
                    touched.add(who)
                    self._touched.setdefault(ev.block, set()).add(who)
                if ev.name == "Deposit":
                    deposits.append((ev.args["account"], ev.block))
                if ev.name in ("Liquidation", "CollateralLiquidation"):
                    result.liquidations.append(ev)
            elif ev.name not in IGNORED_EVENTS:
                result.config_reloaded = True   # re-read through the Lens after the loop
                result.events += 1
        changed: set[str] = set()
        for feed, old in moved.items():
            f = state.feeds[feed]
            changed |= book.update_price(feed, f.answer, f.updated_at, f.round_id)
            new = book.price(feed)
            if new != old:
                result.price_changes.append(PriceChange(feed, self.assets.get(feed, feed[:10]), old, new))
        for who in touched:
            book.apply_account(state.account(who))
        changed |= touched
        changed.discard(self.engine)
        touched.discard(self.engine)
        result.touched |= touched
        result.changed |= changed
        if deposits:
            result.new_accounts = self.store.add_accounts(deposits)

    def _reload(self, head: Head, addresses: Iterable[str], *, protocol: bool) -> None:
        """Re-read ``addresses`` (and, with ``protocol``, the configuration, feeds and house) at ``head``."""
        state = self.state
        if state is None:  # dev
            raise ChainError("the mirror is not started")
        wanted = [a for a in addresses if a != self.engine]
        if protocol:
            fresh = load_protocol(self.w3, self.deployment, head.number)
            fresh.accounts = state.accounts
            load_accounts(self.w3, self.deployment, fresh, wanted, batch_size=self.config.lens_batch_size,
                          block_identifier=head.number)
            fresh.block, fresh.timestamp = head.number, head.timestamp
            self.state = fresh
            self.book = HealthBook(fresh)
        else:
            load_accounts(self.w3, self.deployment, state, wanted, batch_size=self.config.lens_batch_size,
                          block_identifier=head.number)
            book = self.book
            if book is not None:
                for a in wanted:
                    book.apply_account(state.accounts[a])
                if state.house is not None:
                    book.apply_account(state.house)

    def _after_reorg(self, head: Head, fork: int) -> SyncResult:
        """Rewind to ``fork`` and re-read what the dropped blocks touched, at ``head``."""
        state = self.state
        if state is None:  # dev
            raise ChainError("the mirror is not started")
        oldest = min(self._hashes) if self._hashes else fork + 1
        fork = min(fork, head.number - 1)    # a chain rewound below the processed blocks
        deep = fork < oldest
        if deep:
            self._check_same_chain()
        log.warning("reorg: blocks after %d were replaced; re-reading the accounts they touched at block %d",
                    fork, head.number)
        rewind = self.store.rewind_to(fork)
        if deep:
            self._rediscover(fork)
        # Blocks after the head are new whatever the snapshot covered on the old branch.
        self._snapshot_block = min(self._snapshot_block, head.number)
        touched: set[str] = set()
        for block in [b for b in self._touched if b > fork]:
            touched |= self._touched.pop(block)
        for block in [b for b in self._seen if b > fork]:
            self._seen.pop(block)
        for block in [b for b in self._hashes if b > fork]:
            self._hashes.pop(block)
        lo = max(self.deployment.block, fork + 1)
        result = SyncResult(head.number, lo, reorg_at=fork, config_reloaded=True, deep_reorg=deep,
                            dropped=list(rewind.liquidations))
        # The new branch's logs: who deposited, who else changed (re-read at the head, not applied).
        deposits: list[tuple[str, int]] = []
        for entry, ev in self._fetch(lo, head.number):
            self._seen.setdefault(ev.block, set()).add((_hex(entry["blockHash"]), int(entry["logIndex"])))
            if ev.contract == ENGINE and ev.name in ACCOUNT_EVENTS:
                who = _account_of(ev, self.engine)
                touched.add(who)
                self._touched.setdefault(ev.block, set()).add(who)
                if ev.name == "Deposit":
                    deposits.append((ev.args["account"], ev.block))
        if deposits:
            result.new_accounts = self.store.add_accounts(deposits)
        if deep:
            touched |= set(self.store.accounts())
        touched.discard(self.engine)
        self._reload(head, touched | set(result.new_accounts), protocol=True)
        result.reloaded = len(touched)
        result.touched = touched
        result.changed = set(self.state.accounts) if self.state is not None else set()
        if self.state is not None:
            self.state.block, self.state.timestamp = head.number, head.timestamp
        self._remember(head)
        return result

    # ------------------------------------------------------------------ bookkeeping

    def _remember(self, head: Head) -> None:
        keep = self.config.lookback_blocks + 1
        self.store.mark_processed(head.number, head.hash, keep_blocks=keep)
        self._hashes[head.number] = head.hash
        floor = head.number - keep
        for table in (self._hashes, self._seen, self._touched):
            for block in [b for b in table if b <= floor]:
                table.pop(block)

    def _note_scan(self, lo: int, hi: int) -> None:
        self.scans.append((lo, hi))
        if len(self.scans) > 256:
            del self.scans[:128]


def _topic_address(topic: Any) -> str:
    return to_checksum_address("0x" + bytes(topic)[-20:].hex())


def _account_of(ev: Event, engine: str) -> str:
    account = ev.args.get("account")
    return to_checksum_address(account) if isinstance(account, str) else engine


__all__ = ["ACCOUNT_EVENTS", "ChainMirror", "PriceChange", "SyncResult"]
