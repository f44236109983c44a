"""The bot's mirror of the protocol: every account's state and health, kept current from logs.

Startup (:meth:`ChainMirror.start`), at the head block ``B``, from logs, not from per-account reads:

* a reorg check of the blocks the last run processed (stored hashes), rewinding the store if needed
  (a rewind below the database's snapshot drops it);
* the database's snapshot (:meth:`bot.store.Store.load_snapshot`: the protocol, the house, the fund
  and every account at a block ``S``), if its block is still on the chain (one header read);
  otherwise an empty state before the deployment block;
* the logs of the engine and of every feed after that (``S + 1`` or the deployment block) through
  ``B``, with the adaptive :class:`~protocol_model.logscan.LogScanner`, one ``eth_getLogs`` per
  chunk for all of them, applied in order (:func:`protocol_model.logs.apply_events`: every account
  event carries the account's resulting state, the house's and the fund's); depositors go into the
  store chunk by chunk; names come from the deployment file;
* a :class:`~protocol_model.health.HealthBook` over that state, and a snapshot at ``B``.

The Lens is a check, not the start-up path (setting ``start_check``): after the start, the
protocol, the house and a sample of accounts (or every account, ``lens_batch_size`` per block) are
compared with the Lens at the mirror's block, after the liquidations of a tick are out
(:meth:`ChainMirror.after_tick`); a difference is logged as an error and repaired from the Lens.
The snapshot is rewritten every ``snapshot_every_blocks`` and at shutdown, incrementally: the
protocol row and the accounts changed since the last one, in one transaction.

Each new head (:meth:`ChainMirror.sync`):

* reorg check: free when the head's parent is the last processed block (the usual case), else one
  ``eth_getBlockByNumber`` through :func:`~bot.scanner.find_fork_point`;
* **one** ``eth_getLogs`` for the engine and every feed over ``[last + 1 - lookback, head]``
  (chunked only when catching up after a pause). Logs already applied are recognised by
  ``(block hash, log index)`` and skipped; logs of blocks the start already covered are skipped;
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

import dataclasses
import functools
import gc
import json
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from protocol_model.deploy import Deployment
from protocol_model.errors import ChainError
from protocol_model.health import HealthBook
from protocol_model.loader import load_accounts, load_protocol
from protocol_model.logs import (
    ENGINE,
    FEED,
    AppliedLogs,
    Event,
    apply_event,
    apply_events,
    decode_log,
    empty_state,
    engine_topic,
    fill_names,
)
from protocol_model.logscan import LogScanner
from protocol_model.state import Account, Collateral, Feed, Market, Params, Position, ProtocolState
from protocol_model.wad import BaseWad, Wad

from .config import BotConfig
from .errors import StoreError
from .scanner import Head, _hex, block_hash, find_fork_point, log_scanner
from .store import LiquidationRecord, Snapshot, Store
from .ws import bloom_may_log

log = logging.getLogger(__name__)

ACCOUNT_EVENTS = frozenset({
    "Deposit", "Withdraw", "Trade", "Liquidation", "CollateralLiquidation", "BadDebtSettled",
    "HouseSeeded", "InsuranceSeeded",
})
# Events that change nothing the bot mirrors.
IGNORED_EVENTS = frozenset({"OwnershipTransferStarted", "LiquidationSkipped"})
SNAPSHOT_FORMAT = 1             # of the database's snapshot text; another one is rebuilt from logs
SCAN_SNAPSHOT_S = 30.0          # a long start-up scan saves a snapshot this often (seconds)


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


@dataclass(frozen=True)
class StartStats:
    """How :meth:`ChainMirror.start` built the mirror."""

    source: str                  # "snapshot" (the database's, plus the logs since) or "logs" (from the deployment)
    from_block: int              # first block whose logs were applied
    to_block: int
    events: int
    accounts: int
    seconds: float


@dataclass
class StartCheck:
    """Progress of the comparison of the mirror with the Lens after a start (``start_check``)."""

    mode: str                    # "full", "sample" or "off"
    queue: list[str] = field(default_factory=list)    # accounts still to compare
    protocol: bool = False       # the protocol and the house still to compare
    checked: int = 0             # accounts compared
    differences: int = 0         # differences found (and repaired)
    done: bool = False


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
        self.start_stats: StartStats | None = None
        self.check = StartCheck("off", done=True)
        self._saved_block = -1                                 # block of the database's snapshot (-1: none)
        self._dirty: set[str] = set()                          # accounts changed since that snapshot
        self._full_snapshot = True                             # the next snapshot rewrites every account
        self._in_sync = False                                  # a sync is under way (or raised half-way)
        # Leave out of eth_getLogs the blocks whose header bloom proves no engine/feed log (bot.ws);
        # at the head of the range only: what is read keeps the lookback's late-log checks.
        self.bloom_skip = False
        self._blooms: dict[int, bytes | None] = {}            # processed block -> its header's logsBloom
        self.bloom_skips = 0                                   # eth_getLogs left out entirely

    # ------------------------------------------------------------------ startup

    def start(self, head: Head) -> int:
        """Build the mirror at ``head`` from the database's snapshot and the logs after it (from the
        deployment block without a usable snapshot); returns the number of accounts."""
        t0 = time.perf_counter()
        known = self.store.block_hashes()
        if known:
            fork = find_fork_point(self.w3, known)
            if fork is not None:
                fork = min(fork, head.number - 1)
                deep = fork < min(known)
                log.warning("the chain reorganised since the last run: rewinding to block %d%s", fork,
                            " (deeper than the lookback window)" if deep else "")
                self.store.rewind_to(fork)     # also drops a snapshot above the fork
                self.start_reorg = (fork, deep)
        # A bulk load of acyclic objects (events, accounts, book entries): the cyclic collector would
        # only walk the process's heap again and again meanwhile (seconds next to an in-process node).
        collecting = gc.isenabled()
        gc.disable()
        try:
            state, resumed = self._resume(head)
            replayed = self._replay(state, head, full_snapshot=not resumed)
            if not state.params.quote_token:
                raise ChainError(
                    f"no QuoteTokenSet event of engine {self.engine} in blocks {self.deployment.block}..{head.number}: "
                    "is the deployment file for this chain, and its 'block' the engine's deployment block?"
                )
            fill_names(state, self.deployment)
            state.block = head.number
            state.timestamp = head.timestamp
            self.state = state
            self.book = HealthBook(state)
        finally:
            if collecting:
                gc.enable()
        self._snapshot_block = head.number
        self._seen.clear()
        self._touched.clear()
        self._scanner = log_scanner(self.w3, self.config, self._log_addresses(), None, head.number + 1)
        self._remember(head)
        self.save_snapshot()
        self._plan_check()
        self.start_stats = StartStats(
            source="snapshot" if resumed else "logs", from_block=replayed.from_block, to_block=head.number,
            events=replayed.events, accounts=len(state.accounts), seconds=time.perf_counter() - t0,
        )
        log.info("mirror at block %d from %s: %d account(s), %d event(s) of blocks %d..%d applied, in %.2fs",
                 head.number, f"the snapshot of block {replayed.from_block - 1} and the logs since" if resumed
                 else "logs alone", len(state.accounts), replayed.events, replayed.from_block, head.number,
                 self.start_stats.seconds)
        return len(state.accounts)

    def _resume(self, head: Head) -> tuple[ProtocolState, bool]:
        """The stored snapshot's state if it is still on the chain, else an empty state before the
        deployment block; and whether it came from the snapshot."""
        snap = self.store.load_snapshot()
        if snap is not None:
            reason = None
            if snap.block > head.number:
                reason = f"is ahead of the head {head.number}"
            elif block_hash(self.w3, snap.block) != snap.hash:
                reason = "is no longer on the chain (a reorg below it)"
            else:
                try:
                    state = decode_snapshot(snap, self.engine)
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    reason = f"cannot be read ({exc})"
                else:
                    self._saved_block = snap.block
                    return state, True
            log.warning("the database's snapshot of block %d %s: rebuilding the mirror from logs", snap.block, reason)
            self.store.drop_snapshot()
        state = empty_state(self.engine)
        state.block = self.deployment.block - 1
        self._saved_block = -1
        return state, False

    def _replay(self, state: ProtocolState, head: Head, *, full_snapshot: bool) -> AppliedLogs:
        """Apply the engine's and the feeds' logs of ``(state.block, head]`` to ``state``, chunk by
        chunk, with one ``eth_getLogs`` per chunk for the engine and every known feed; depositors go
        into the store with each chunk. A long scan saves a snapshot every ``SCAN_SNAPSHOT_S``, so
        a start killed half-way resumes there."""
        start = state.block + 1
        out = AppliedLogs(from_block=start, to_block=head.number)
        self._dirty = set()
        self._full_snapshot = full_snapshot
        if start > head.number:
            return out
        feeds = {to_checksum_address(a) for a in self.deployment.feeds.values()} | set(state.feeds)
        scanner = log_scanner(self.w3, self.config, [self.engine, *sorted(feeds)], None, start)
        scanner.raw = True                     # every log since the deployment: skip web3's formatting
        carry: list[Event] = []                # updates of feeds not listed yet
        saved_at = time.monotonic()
        for lo, hi, logs in scanner.iter_chunks(head.number):
            self._note_scan(lo, hi)
            events = self._decode(logs)
            listed = {ev.args["feed"] for ev in events if ev.name in ("MarketListed", "CollateralListed")} - feeds
            if listed:   # a feed the deployment file does not name: its updates so far, then with every chunk
                feeds |= listed
                extra = log_scanner(self.w3, self.config, sorted(listed), None, start)
                extra.raw = True
                events.extend(self._decode(extra.fetch(start, hi)))
                scanner.addresses = [self.engine, *sorted(feeds)]
            events = sorted(carry + events, key=lambda ev: ev.order)
            before = len(out.deposits)
            _, carry = apply_events(state, events, out)
            self.store.add_accounts(out.deposits[before:], checksummed=True)
            state.block = hi
            self._dirty |= out.accounts
            out.accounts = set()
            if hi < head.number and time.monotonic() - saved_at > SCAN_SNAPSHOT_S:
                block = self.w3.eth.get_block(hi)
                state.timestamp = int(block["timestamp"])
                fill_names(state, self.deployment)
                self._write_snapshot(state, hi, _hex(block["hash"]))
                saved_at = time.monotonic()
        return out

    def _decode(self, logs: Iterable[Any]) -> list[Event]:
        out: list[Event] = []
        for entry in logs:
            ev = decode_log(entry, ENGINE if _log_address(entry["address"]) == self.engine else FEED)
            if ev is not None:
                out.append(ev)
        return out

    # ------------------------------------------------------------------ the database's snapshot

    def save_snapshot(self) -> None:
        """Write the mirror's state at its block to the database: the protocol row and the accounts
        changed since the last write (every account after a rebuild or a reorg), one transaction."""
        state = self.state
        if state is None or self._in_sync:
            return
        head_hash = self._hashes.get(state.block)
        if head_hash is None:   # dev: _remember() records the hash of every block the mirror is at
            return
        self._write_snapshot(state, state.block, head_hash)

    def _write_snapshot(self, state: ProtocolState, block: int, head_hash: str) -> None:
        t0 = time.perf_counter()
        index = {c.token: c.index for c in state.collaterals}
        names = list(state.accounts) if self._full_snapshot else [a for a in self._dirty if a in state.accounts]
        rows = {a: encode_account(state.accounts[a], index) for a in names}
        self.store.save_snapshot(block, head_hash, encode_protocol(state), rows, full=self._full_snapshot)
        log.debug("snapshot of block %d written: %d account(s)%s in %.3fs", block, len(rows),
                  " (all)" if self._full_snapshot else "", time.perf_counter() - t0)
        self._full_snapshot = False
        self._dirty = set()
        self._saved_block = block

    # ------------------------------------------------------------------ the Lens check

    def _plan_check(self) -> None:
        state = self.state
        mode = self.config.start_check
        if state is None or mode == "off":
            self.check = StartCheck(mode, done=True)
            return
        addresses = sorted(state.accounts)
        if mode == "sample" and len(addresses) > self.config.start_check_accounts:
            addresses = random.sample(addresses, self.config.start_check_accounts)
        self.check = StartCheck(mode, queue=addresses, protocol=True)

    def check_step(self, head: Head) -> int:
        """One step of the start check (setting ``start_check``) at ``head``, where the mirror must
        be: compare the protocol and the house (first step) and the next accounts (a sample all at
        once, 'full' ``lens_batch_size`` per step) with the Lens; log each difference as an error
        and repair it from the Lens. A difference in a sample extends the check to every account.
        Returns the number of differences found in this step; free once the check is done."""
        check, state, book = self.check, self.state, self.book
        if check.done or state is None or book is None or state.block != head.number:
            return 0
        found = 0
        if check.protocol:
            fresh = load_protocol(self.w3, self.deployment, head.number)
            load_accounts(self.w3, self.deployment, fresh, [], batch_size=1, block_identifier=head.number)
            check.protocol = False
            diffs = protocol_differences(state, fresh)
            if diffs:
                found += len(diffs)
                log.error("start check: the mirror's protocol differs from the Lens at block %d: %s; "
                          "re-read through the Lens", head.number, "; ".join(diffs))
                self._reload(head, [], protocol=True)
                self._full_snapshot = True
                state, book = self.state, self.book
                if state is None or book is None:  # dev: _reload sets them
                    return found
        size = len(check.queue) if check.mode == "sample" else self.config.lens_batch_size
        batch = check.queue[:size]
        if batch:
            scratch = dataclasses.replace(state, accounts={}, house=None)
            load_accounts(self.w3, self.deployment, scratch, batch, batch_size=self.config.lens_batch_size,
                          block_identifier=head.number)
            check.queue = check.queue[size:]
            for a in batch:
                lens = scratch.accounts[a]
                if state.accounts.get(a) != lens:
                    found += 1
                    log.error("start check: account %s differs from the Lens at block %d (mirror %s, Lens %s): "
                              "repaired from the Lens", a, head.number, state.accounts.get(a), lens)
                    state.accounts[a] = lens
                    book.apply_account(lens)
                    self._dirty.add(a)
            check.checked += len(batch)
        check.differences += found
        if found and check.mode == "sample":
            checked = set(batch)
            check.queue = [a for a in sorted(state.accounts) if a not in checked]
            check.mode = "full"
            log.error("start check: %d difference(s) in a sample: checking the %d other account(s) too, %d per block",
                      found, len(check.queue), self.config.lens_batch_size)
        if not check.queue:
            check.done = True
            log.log(logging.ERROR if check.differences else logging.INFO,
                    "start check done at block %d: the protocol, the house and %d account(s) compared with the "
                    "Lens, %d difference(s)", head.number, check.checked, check.differences)
        return found

    def after_tick(self, head: Head) -> None:
        """What waits until a tick's liquidations are out: a step of the start check, and the
        snapshot every ``snapshot_every_blocks`` (at once after a repair or a reorg)."""
        repaired = self.check_step(head)
        state = self.state
        if state is not None and (repaired or self._full_snapshot
                                  or state.block - self._saved_block >= self.config.snapshot_every_blocks):
            self.save_snapshot()

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

    def _log_addresses(self) -> list[str]:
        if self.state is None:
            return [self.engine]
        return [self.engine, *sorted(self.state.feeds)]

    # ------------------------------------------------------------------ per block

    def sync(self, head: Head) -> SyncResult:
        """Bring the mirror to ``head``: reorg check, one ``eth_getLogs``, apply, record progress."""
        self._in_sync = True          # a sync that raises half-way leaves a state no snapshot may take
        result = self._sync(head)
        self._in_sync = False
        return result

    def _sync(self, head: Head) -> SyncResult:
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
        if self.bloom_skip:
            lo = self._first_may_log(lo, head)
        entries = self._fetch(lo, head.number) if lo <= head.number else []
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

    def _first_may_log(self, lo: int, head: Head) -> int:
        """The first block of ``[lo, head]`` whose bloom does not rule out a log of ours (one
        unknown may log); ``head + 1`` when none may: then no eth_getLogs is needed at all."""
        addresses = self._log_addresses()
        for number in range(lo, head.number + 1):
            bloom = head.logs_bloom if number == head.number else self._blooms.get(number)
            if bloom_may_log(bloom, addresses):
                return number
        self.bloom_skips += 1
        return head.number + 1

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
        self._dirty |= touched
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
        self._dirty.update(wanted)
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
        self._full_snapshot = True        # the snapshot may be gone with the dropped blocks: rewrite it whole
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
            self._blooms.pop(block, None)
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
        self._blooms[head.number] = head.logs_bloom
        floor = head.number - keep
        for table in (self._hashes, self._seen, self._touched, self._blooms):
            for block in [b for b in table if b <= floor]:
                table.pop(block)

    def _note_scan(self, lo: int, hi: int) -> None:
        self.scans.append((lo, hi))
        if len(self.scans) > 256:
            del self.scans[:128]


# ---------------------------------------------------------------------- the snapshot's text


def encode_account(acc: Account, index: Mapping[str, int]) -> str:
    """``[cash, [[market, size, quote], ...], [[collateral index, balance], ...]]`` as compact JSON."""
    return json.dumps([int(acc.cash), [[m, int(p.size), int(p.quote)] for m, p in acc.positions.items()],
                       [[index[t], b] for t, b in acc.collateral.items()]], separators=(",", ":"))


def _decode_account(address: str, text: str, tokens: list[str]) -> Account:
    cash, positions, collateral = json.loads(text)
    return Account(address, Wad(int(cash)), {tokens[i]: int(b) for i, b in collateral},
                   {int(m): Position(BaseWad(int(size)), Wad(int(quote))) for m, size, quote in positions})


def encode_protocol(state: ProtocolState) -> str:
    """Everything of ``state`` but the traders' accounts, as JSON (the house included)."""
    index = {c.token: c.index for c in state.collaterals}
    house = state.house if state.house is not None else Account(state.engine)
    return json.dumps({
        "format": SNAPSHOT_FORMAT,
        "engine": state.engine,
        "block": state.block,
        "timestamp": state.timestamp,
        "params": dataclasses.asdict(state.params),
        "markets": [dataclasses.asdict(m) for m in state.markets],
        "collaterals": [dataclasses.asdict(c) for c in state.collaterals],
        "feeds": [dataclasses.asdict(f) for f in state.feeds.values()],
        "house": encode_account(house, index),
        "insurance_fund": int(state.insurance_fund),
        "total_collateral": state.total_collateral,
    }, separators=(",", ":"))


def decode_snapshot(snap: Snapshot, engine: str) -> ProtocolState:
    """The state a :class:`~bot.store.Snapshot` holds. Raises ``ValueError`` for a snapshot of
    another format or engine (the caller rebuilds from logs)."""
    p = json.loads(snap.protocol)
    if p.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"format {p.get('format')!r}, this bot reads {SNAPSHOT_FORMAT}")
    if p["engine"] != engine or int(p["block"]) != snap.block:
        raise ValueError(f"it is of engine {p['engine']} at block {p['block']}")
    collaterals = sorted((Collateral(**c) for c in p["collaterals"]), key=lambda c: c.index)
    tokens = [""] * (1 + max((c.index for c in collaterals), default=-1))
    for c in collaterals:
        tokens[c.index] = c.token
    state = ProtocolState(
        engine=engine,
        params=Params(**p["params"]),
        markets=[Market(**m) for m in p["markets"]],
        collaterals=collaterals,
        feeds={f["address"]: Feed(**f) for f in p["feeds"]},
        house=_decode_account(engine, p["house"], tokens),
        insurance_fund=Wad(int(p["insurance_fund"])),
        total_collateral={t: int(v) for t, v in p["total_collateral"].items()},
        timestamp=int(p["timestamp"]),
        block=snap.block,
    )
    state.accounts = {a: _decode_account(a, text, tokens) for a, text in snap.accounts.items()}
    return state


def protocol_differences(mirror: ProtocolState, lens: ProtocolState) -> list[str]:
    """What differs between two states apart from the traders' accounts (configuration, feeds,
    the house, the insurance fund, collateral totals), one short line each."""
    out: list[str] = []
    for name in ("params", "markets", "collaterals", "feeds", "house", "insurance_fund", "total_collateral"):
        a, b = getattr(mirror, name), getattr(lens, name)
        if a != b:
            out.append(f"{name}: mirror {a} != Lens {b}")
    return out


@functools.lru_cache(maxsize=256)
def _log_address(value: Any) -> str:
    return to_checksum_address(value)


def _topic_address(topic: Any) -> str:
    return to_checksum_address("0x" + bytes(topic)[-20:].hex())


def _account_of(ev: Event, engine: str) -> str:
    account = ev.args.get("account")
    return to_checksum_address(account) if isinstance(account, str) else engine


__all__ = ["ACCOUNT_EVENTS", "ChainMirror", "PriceChange", "StartCheck", "StartStats", "SyncResult", "decode_snapshot",
           "encode_account", "encode_protocol", "protocol_differences"]
