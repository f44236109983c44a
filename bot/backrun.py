"""Backrunning the oracle: liquidate in the block of a price update, right after it.

A bot that reacts to mined blocks finds a liquidation one block after the price update at best.
This module reads the update while it is still pending and sends the liquidations it causes
before the block is built, with the update's own fees, so that a fee-ordered block (the dev node's
pool, anvil's ``--order fees``, a builder ordering by priority fee) holds the update, then them.

    backrunner = Backrunner(bot, FilterPendingSource(w3, ...), DecoderRegistry.for_feeds(...))
    report = backrunner.poll()       # drain the pending source; act on the price updates in it

What one :meth:`Backrunner.poll` does (the live loop, :meth:`bot.liquidator.Liquidator.run`,
calls it between heads every ``pending_poll_interval_s``; :meth:`Liquidator.poll_pending` is the
same for step-by-step callers):

1. drains the :class:`~bot.pending.PendingSource` and decodes price updates of the feeds the
   engine reads (:class:`~bot.pending.DecoderRegistry`); the last update of each feed counts;
2. builds a **view**: the mirror's state at its head with those answers published at the expected
   next block's time (:func:`pending_view`: the feeds and the clock are copies, every account and
   the configuration are shared, and nothing of the mirror is written);
3. finds the accounts liquidatable at the pending prices with the mirror's own
   :class:`~protocol_model.health.HealthBook` (:func:`liquidatable_at`: the book is moved to the
   pending prices and back, exact integers both ways, before anything else runs);
4. plans them with the liquidator's decision code (:func:`bot.decide.decide` over a
   :class:`~bot.strategy.Planner` whose gas model prices the update's tip, since that is the fee
   paid), leaving out accounts with a transaction of ours in flight, backed off or suppressed;
5. preflights the transactions **on the model** at the pending prices
   (:func:`bot.preflight.simulate_units`; a node ``eth_call`` would run at the old price) and
   sends those that execute, as ``liquidate_many`` batches, with the update's priority fee and
   max fee (:class:`PinnedFees`, never above ``max_fee_cap_wei``): equal effective tips whatever the
   base fee, and the dev node and anvil break ties by arrival, so ours come after the update.

The backrun needs the model, since a node's ``eth_call`` runs at the old price: with the setting
``preflight`` at ``node`` it is off, and an update seen while the mirror is not exactly at its head
(after a reorg, late logs or a re-read through the Lens) is left to the next head's tick.

A backrun that lands before the update (or without it: the update was replaced or dropped) is
checked by the engine at the old price: its orders are skipped (``LiquidationSkipped``), never
reverted and never wrongful. Such a skip is not a lost race: :meth:`Backrunner.on_skip` counts its
gas and nothing is backed off, so the next head's tick may liquidate the account. Our backruns
are in flight like any other transaction (``TxSender.pending_for``): the next head's tick does not
send them again. Which hashes were backruns is kept in memory only: after a restart, a skipped
backrun restored from the store counts as a lost race (a back-off, never a wrong liquidation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from protocol_model.actions import LiquidationOrder
from protocol_model.errors import ConfigError
from protocol_model.health import HealthBook, answer_to_price
from protocol_model.state import Feed, ProtocolState

from .decide import decide, unexpired
from .pending import DecoderRegistry, PendingSource, PriceUpdate
from .preflight import needs_quote, simulate_units
from .strategy import GasModel, Planner
from .txs import Fees, FixedTip, Preflight, SendResult, TxRequest

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- fees


@dataclass(frozen=True)
class PinnedFees:
    """A fee strategy that offers exactly ``fees`` (the price update's), whatever the base fee."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    max_fee_cap_wei: int

    def fees(self, base_fee_wei: int, expected_profit_wei: int = 0) -> Fees:
        return Fees(self.max_fee_per_gas, self.max_priority_fee_per_gas)


def backrun_fees(updates: list[PriceUpdate], cap_wei: int) -> PinnedFees:
    """The fees that place a transaction right after every update in a fee-ordered block: the
    lowest update's tip and max fee (a legacy update's gas price as both: the same effective tip),
    capped at ``cap_wei``."""
    best: tuple[int, int] | None = None
    for u in updates:
        tx = u.tx
        if tx.get("maxFeePerGas") is not None:
            fee, tip = int(tx["maxFeePerGas"]), int(tx["maxPriorityFeePerGas"] or 0)
        else:
            fee = tip = int(tx.get("gasPrice") or 0)
        if best is None or (tip, fee) < (best[1], best[0]):
            best = (fee, tip)
    fee, tip = best if best is not None else (0, 0)
    fee = min(fee, cap_wei)
    return PinnedFees(fee, min(tip, fee), cap_wei)


# ---------------------------------------------------------------------- the view


def pending_view(state: ProtocolState, updates: list[PriceUpdate], timestamp: int) -> tuple[ProtocolState, list[PriceUpdate]]:
    """The mirror's state with ``updates`` published at ``timestamp`` (see the module docstring),
    and the updates it took: an update outside its feed's bounds reverts on chain, and is left out."""
    feeds = dict(state.feeds)
    taken: list[PriceUpdate] = []
    for u in updates:
        old = feeds.get(u.feed)
        if old is None:
            continue
        if not old.min_answer <= u.answer <= old.max_answer:
            log.info("pending update of %s to %d is outside the feed's bounds: it will revert, ignored", u.feed, u.answer)
            continue
        feeds[u.feed] = Feed(old.address, old.decimals, u.answer, timestamp, old.round_id + 1, old.min_answer,
                             old.max_answer)
        taken.append(u)
    view = replace(state, feeds=feeds, timestamp=timestamp)
    return view, taken


def liquidatable_at(book: HealthBook, view: ProtocolState, feeds: list[str]) -> list[str]:
    """The accounts the book finds liquidatable with ``feeds`` at their answers in ``view``; the
    book (and the state it writes feed answers to) is moved back to its prices before returning."""
    saved: list[tuple[str, Feed]] = []
    try:
        for address in feeds:
            old = book.state.feeds[address]
            saved.append((address, Feed(old.address, old.decimals, old.answer, old.updated_at, old.round_id,
                                        old.min_answer, old.max_answer)))
            f = view.feeds[address]
            book.update_price(address, f.answer, f.updated_at, f.round_id)
        return book.liquidatable()
    finally:
        for address, old in reversed(saved):
            book.update_price(address, old.answer, old.updated_at, old.round_id)


# ---------------------------------------------------------------------- reports


@dataclass
class BackrunReport:
    """What one backrun did: the updates it acted on, the accounts they make liquidatable, the
    transactions it sent. ``latency_s``: from the drain that saw the updates to the last send."""

    updates: list[PriceUpdate]
    head: int
    liquidatable: list[str] = field(default_factory=list)
    chosen: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)   # (account, reason) the model refused
    sends: list[SendResult] = field(default_factory=list)
    fees: PinnedFees | None = None
    latency_s: float | None = None

    @property
    def sent(self) -> list[SendResult]:
        return [s for s in self.sends if s.sent]


@dataclass
class BackrunStats:
    """Counters over the bot's life (the bench and the logs read them)."""

    updates: int = 0            # decoded pending price updates acted on
    transactions: int = 0       # backrun transactions sent
    orders: int = 0             # orders in them
    skipped_orders: int = 0     # orders the engine skipped (the update was not before them)
    skipped_gas_wei: int = 0    # gas of transactions of which every order was skipped


# ---------------------------------------------------------------------- the backrunner


class Backrunner:
    """Backruns pending price updates for one :class:`~bot.liquidator.Liquidator` (see the module
    docstring). ``clock`` times the latency (``time.perf_counter`` by default)."""

    def __init__(self, bot: Any, source: PendingSource, registry: DecoderRegistry, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.bot = bot
        self.source = source
        self.registry = registry
        self._clock = clock
        self._sent: set[str] = set()
        self.stats = BackrunStats()
        self.reports: list[BackrunReport] = []      # the last few, newest last

    def close(self) -> None:
        self.source.close()

    def owns(self, tx_hash: str) -> bool:
        """Whether ``tx_hash`` is a backrun of ours (sent since start)."""
        return tx_hash.lower() in self._sent

    # ------------------------------------------------------------------ the loop's step

    def poll(self) -> BackrunReport | None:
        """Drain the pending source and backrun the price updates in it (None: there were none)."""
        txs = self.source.drain()
        if not txs:
            return None
        seen = self._clock()
        state = self.bot.state
        latest: dict[str, PriceUpdate] = {}
        for u in self.registry.updates(txs):
            if u.feed in state.feeds:
                latest[u.feed] = u           # the last update of a feed is the price the block ends with
        if not latest:
            return None
        report = self.backrun(list(latest.values()), seen)
        self.reports = (self.reports + [report])[-16:]
        return report

    def backrun(self, updates: list[PriceUpdate], seen: float | None = None) -> BackrunReport:
        """Send the liquidations ``updates`` cause, placed right after them (steps 2-5 of the
        module docstring)."""
        bot = self.bot
        sender, store, config = bot.sender, bot.store, bot.config
        if sender is None or bot.eth_feed is None:   # dev: set by start()
            raise ConfigError("the bot is not started: call start() first")
        seen = self._clock() if seen is None else seen
        state = bot.state
        head = bot.watcher.latest
        base_fee = (head.base_fee_wei or 0) if head is not None else 0
        timestamp = max(state.timestamp + 1, int(time.time()))
        view, taken = pending_view(state, updates, timestamp)
        report = BackrunReport(taken, state.block)
        if not taken:
            return report
        if getattr(bot, "_exact_head", state.block) != state.block:
            # The model preflights at the pending price only on an exact mirror (bot/preflight.py).
            log.info("pending price update not backrun: the mirror is not exactly at block %d (a reorg, late logs "
                     "or a re-read); the next head's tick acts on it", state.block)
            return report
        self.stats.updates += len(taken)
        report.liquidatable = liquidatable_at(bot.book, view, [u.feed for u in taken])
        fees = report.fees = backrun_fees(taken, config.max_fee_cap_wei)
        for u in taken:
            f = view.feeds[u.feed]
            log.info("pending price update %s %s -> %s (tx %s, tip %d wei): %d liquidatable after it",
                     bot.mirror.assets.get(u.feed, u.feed) if bot.mirror is not None else u.feed,
                     _price_text(state.feeds[u.feed]), _price_text(f), u.tx["hash"], fees.max_priority_fee_per_gas,
                     len(report.liquidatable))
        if not report.liquidatable or fees.max_fee_per_gas < base_fee:
            return report
        planner = Planner(GasModel(FixedTip(fees.max_priority_fee_per_gas, config.max_fee_cap_wei),
                                   config.liquidation_gas_estimate),
                          config.min_profit_usd_wad, liquidator=bot.address,
                          collateral_liquidation=bot.planner.collateral_liquidation, backstop=config.backstop)
        bot._suppressed = unexpired(bot._suppressed, state.block)
        decision = decide(
            view, report.liquidatable, planner, base_fee_wei=base_fee,
            eth_price_wad=answer_to_price(view.feeds[bot.eth_feed].answer, view.feeds[bot.eth_feed].price_scale),
            backoffs=store.backoffs(state.block), suppressed=bot._suppressed,
            in_flight=lambda a: bool(sender.pending_for(a)), quote_balance=bot._quote_balance,
            backstop=config.backstop,
        )
        report.chosen = len(decision.chosen)
        if not decision.chosen:
            return report
        units, batched = bot.tx_units(decision.chosen)
        quote = bot._quote_balance() if needs_quote(units) else 0
        flights = simulate_units(view, units, bot.address, quote, batch=batched)
        to_send: list[tuple[TxRequest, Preflight]] = []
        sent_units = []
        for unit, flight in zip(units, flights):
            if flight.ok and flight.skips is not None:
                passed = [c for c, why in zip(unit, flight.skips) if why is None]
                report.refused += [(c.account, why) for c, why in zip(unit, flight.skips) if why is not None]
            elif flight.ok:
                passed = list(unit)
            else:
                passed = []
                report.refused += [(c.account, flight.reason or "reverted") for c in unit]
            if passed:
                to_send.append((bot._request(passed), Preflight(True)))
                sent_units.append(passed)
        for account, why in report.refused:
            log.debug("backrun: the model refuses %s at the pending price (%s)", account, why)
        if not to_send:
            return report
        results = sender.send_many(to_send, base_fee_wei=base_fee, head_block=state.block, strategy=fees)
        report.latency_s = self._clock() - seen
        with store.transaction():
            for unit, result in zip(sent_units, results):
                report.sends.append(result)
                if result.sent and result.tx is not None:
                    self._sent.add(result.tx.hash.lower())
                    self.stats.transactions += 1
                    self.stats.orders += len(unit)
                for cand in unit:
                    if head is None:
                        continue
                    if result.status in ("sent", "dry_run"):
                        bot._log_send(cand, result, head)
                    else:
                        bot._not_sent(cand, result, head)
        if report.sent:
            bot.metrics.observe_latency(report.latency_s)
            log.info("backrun: %d transaction(s), %d order(s) sent %.0f ms after the pending update was seen",
                     len(report.sent), sum(len(u) for u, r in zip(sent_units, results) if r.sent),
                     report.latency_s * 1000)
        return report

    # ------------------------------------------------------------------ outcomes

    def on_skip(self, order: LiquidationOrder, reason: str, cost_wei: int, tx_hash: str, block: int | None) -> None:
        """An order of a backrun of ours was skipped: the update was not before it (or not in the
        chain at all). Its gas is counted; nothing is backed off or suppressed."""
        self.stats.skipped_orders += 1
        self.stats.skipped_gas_wei += cost_wei
        self.bot.metrics.add_gas(cost_wei)
        log.info("backrun order for %s skipped in block %s (%s): the price update was not before it (tx %s)",
                 order.account, block, reason, tx_hash)


def _price_text(feed: Feed) -> str:
    from protocol_model.fmt import fmt_wad

    return fmt_wad(answer_to_price(feed.answer, feed.price_scale))


def make_backrunner(bot: Any, source: PendingSource | None = None) -> Backrunner | None:
    """The bot's backrunner: ``source`` or the node's pending-transaction filter, and the
    ``set_answer`` decoders of the engine's feeds (each accepting its updater only). None, said
    once in the log, when the node has no pending-transaction filter."""
    from web3.exceptions import Web3RPCError

    from .pending import FilterPendingSource
    from .ws import pushed_pending

    if getattr(bot.config, "preflight", "auto") == "node":
        log.warning("backrun off: it preflights on the model at the pending price, and the setting preflight is "
                    "'node' (use 'auto' or 'model' to backrun)")
        return None
    sender = bot.sender
    if source is None:
        def skip(h: str) -> bool:
            return sender is not None and any(t.hash == h for t in sender.in_flight)

        filt = FilterPendingSource(bot.w3, batch=sender._batch if sender is not None else None, skip=skip)
        try:
            filt.start()
        except (Web3RPCError, ValueError, NotImplementedError) as exc:
            log.warning("backrun off: the node has no pending-transaction filter (%s)", _one_line(exc))
            return None
        source = filt
        if bot.watcher.pushed and bot.watcher.heads is not None:   # WebSockets up: pushed as the pool accepts them (bot/ws.py)
            source = pushed_pending(bot.watcher.heads, filt, skip)
    backrunner = Backrunner(bot, source, DecoderRegistry.for_feeds(feed_updaters(bot)))
    log.info("backrun on: pending price updates of %d feed(s) read from %s", len(backrunner.registry),
             type(source).__name__)
    return backrunner


def feed_updaters(bot: Any) -> dict[str, str | None]:
    """The engine's feeds and, where the feed tells it (``updater()``), who may update it."""
    from eth_utils import to_checksum_address
    from web3.exceptions import ContractLogicError, Web3RPCError

    out: dict[str, str | None] = {}
    data = "0x" + _selector("updater()").hex()
    for feed in bot.state.feeds:
        try:
            raw = bytes(bot.w3.eth.call({"to": feed, "data": data}))   # type: ignore[typeddict-item]
            out[feed] = to_checksum_address(raw[-20:]) if len(raw) == 32 else None
        except (ContractLogicError, Web3RPCError, ValueError):
            out[feed] = None   # another feed contract: any sender's update is read
    return out


def _selector(signature: str) -> bytes:
    from protocol_model.calls import selector

    return selector(signature)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


__all__ = ["BackrunReport", "BackrunStats", "Backrunner", "PinnedFees", "backrun_fees", "feed_updaters",
           "liquidatable_at", "make_backrunner", "pending_view"]
