"""The liquidation bot: wiring of the mirror, the strategy, the sender, the store and the metrics.

    bot = Liquidator(w3, deployment, account, BotConfig.from_env())
    bot.run()                  # until SIGTERM/SIGINT, or repeated failures

or, step by step (tests, benchmarks): ``bot.start()``, then ``bot.tick()`` once per block, then
``bot.stop()``.

The parts, each replaceable on its own (auction-keeper's split of ``main``/``strategy``/``gas``):

* data: :class:`~bot.mirror.ChainMirror` (discovery, Lens snapshot, logs, reorgs) and
  :class:`~bot.scanner.HeadWatcher` (the head, the stale-head watchdog);
* decisions: :func:`~bot.decide.decide` (the tick's orders, shared with the off-chain simulator)
  over :class:`~bot.strategy.Planner` (model previews, profit net of gas, sequencing) with
  :class:`~bot.strategy.GasModel` (gas in USD from the mirrored ETH feed);
* execution: :mod:`~bot.preflight` (the model's preflight) and :class:`~bot.txs.TxSender`
  (preflight ``eth_call``, nonces, EIP-1559 fees, signing, replacement of stuck transactions,
  revert classification);
* state and observability: :class:`~bot.store.Store`, :class:`~bot.metrics.BotMetrics`, and the
  request counters of :class:`~bot.rpc.CountingRpc`;
* the loop: :class:`~bot.lifecycle.Lifecycle` (on-block, timers, SIGTERM, circuit breaker).

One tick, for a new head: sync the mirror (one ``eth_getLogs``), settle our in-flight
transactions, then for each liquidatable account that is neither backed off after a lost race nor
already targeted by a pending transaction, plan its liquidations; then put the chosen
liquidations, most profitable first, into ``liquidate_many`` transactions of up to
``max_batch_orders`` orders (:func:`tx_units`; a race lost to a rival then costs a skipped order,
recorded from the engine's ``LiquidationSkipped``, not a reverted transaction), preflight them,
sign those that passed, and send them (one JSON-RPC batch), with every store write of the tick in
one SQLite transaction. The preflight (setting ``preflight``) is the exact model
(:mod:`bot.preflight`: every transaction of the tick simulated in order on the mirror's state, no
RPC) when the mirror is exactly at the head it acts on, and otherwise (after a reorg, late logs or
a re-read through the Lens) the node's ``eth_call``, in one JSON-RPC batch per wave (one by one
when the provider cannot batch).

Backstop mode (``backstop``, ``--backstop``): the protocol operator's keeper. A bankrupt account
(equity < 0) pays its keeper like any other (the insurance fund, then the house, pays what it
cannot), so a plain bot closes it, and a liquidation that leaves nothing but negative cash settles
that bad debt itself. What is left needs an operator: in backstop mode the bot also closes bankrupt
accounts whose reward does not cover the gas and the minimum profit (dust), at a loss, and sends
``settle_bad_debt`` for every account left with no position, no collateral and negative cash that
no liquidation settled, e.g. after the trader's own close at a loss (history kind ``"settle"``).
The key is never printed nor logged; log lines are one per event, e.g.::

    liquidated 0x5B38…ddC4 ETH-PERP 12.5 @ 1,700.00 reward 212.50 USDC gas 0.42 USD tx 0x… block 123
    lost race 0x5B38…ddC4 ETH-PERP (healthy) backing off 20 blocks
    price ETH 2,000.00 -> 1,700.00 (3 liquidatable)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError

from protocol_model import calls
from protocol_model.calls import encode_call
from protocol_model.deploy import Deployment, contract_at
from protocol_model.errors import ChainError, ConfigError, Revert
from protocol_model.fmt import fmt_units, fmt_wad
from protocol_model.health import HealthBook, margin_ratio
from protocol_model.logs import ENGINE, decode_log
from protocol_model.report import HEALTHY, status
from protocol_model.state import ProtocolState
from protocol_model.actions import SKIP_REASONS, ZERO_ADDRESS
from protocol_model.wad import MAX_ORDERS, UINT256_MAX, WAD

from .config import BotConfig
from .decide import after_refusal, decide, unexpired
from .errors import CircuitOpen, RpcError
from .lifecycle import DEFAULT_EXPECTED_ERRORS, Lifecycle, RunResult
from .metrics import BotMetrics, start_metrics_server
from .mirror import ChainMirror, SyncResult
from .backrun import Backrunner, BackrunReport, make_backrunner
from .preflight import needs_quote, simulate_units
from .rpc import CountingRpc
from .scanner import Head, HeadWatcher
from .ws import open_heads, provider_url
from .store import KeeperTotals, LiquidationRecord, SentTx, Store
from .strategy import (
    LIQUIDATE,
    LIQUIDATE_COLLATERAL,
    SETTLE,
    Candidate,
    GasModel,
    Planner,
)
from .txs import (
    LIQUIDATE_MANY,
    Preflight,
    SendResult,
    TxOutcome,
    TxRequest,
    TxSender,
    batch_orders,
    classify_revert,
    order_target,
    strategy_from_config,
)

log = logging.getLogger(__name__)

APPROVE_GAS = 100_000


def needs_approve(allowance: int) -> bool:
    """Whether the quote allowance the engine has from the bot calls for the (unlimited) approve
    that collateral liquidations need; sent once per key at the start."""
    return allowance < UINT256_MAX // 2

SETTLE_GAS = 150_000
# What a tick may fail with and be retried on the next poll; anything else is a bug and stops the loop.
TICK_ERRORS: tuple[type[BaseException], ...] = (*DEFAULT_EXPECTED_ERRORS, ChainError, Web3RPCError, ContractLogicError)


@dataclass
class TickReport:
    """What one :meth:`Liquidator.tick` did.

    ``candidates`` are every priced candidate the strategy evaluated (chosen or not), ``chosen``
    the ones it decided to send, ``sends`` the sender's results for them (``"sent"``,
    ``"dry_run"``, ``"preflight_failed"``, ...), ``outcomes`` the in-flight transactions that
    settled. ``rpc_calls`` are the requests the tick sent to the node, by method.
    ``detection_latency_s``: from the moment the head was seen to the tick's last send.
    """

    head: int
    events: int = 0
    new_accounts: list[str] = field(default_factory=list)
    liquidatable: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    chosen: list[Candidate] = field(default_factory=list)
    sends: list[SendResult] = field(default_factory=list)
    outcomes: list[TxOutcome] = field(default_factory=list)
    rpc_calls: dict[str, int] = field(default_factory=dict)
    detection_latency_s: float | None = None
    tick_seconds: float = 0.0
    backed_off: list[str] = field(default_factory=list)
    lost: list[tuple[str, str]] = field(default_factory=list)   # (account, target) lost to a rival this tick
    reorg_at: int | None = None
    idle: bool = False           # no new head: nothing was processed
    preflight: str | None = None  # "model" or "node": what checked this tick's transactions

    @property
    def rpc_total(self) -> int:
        return sum(self.rpc_calls.values())

    @property
    def sent(self) -> list[SendResult]:
        return [s for s in self.sends if s.sent]

    def summary(self) -> str:
        return (f"block {self.head}: {self.events} event(s), {len(self.liquidatable)} liquidatable, "
                f"{len(self.candidates)} candidate(s), {len(self.sent)} sent, {len(self.outcomes)} settled, "
                f"{self.rpc_total} RPC call(s) in {self.tick_seconds * 1000:.0f} ms")


FIRST_WAVE = 4   # liquidations in the first preflight-and-send wave of a tick; each next wave doubles


def send_waves(chosen: list[Candidate], first: int = FIRST_WAVE) -> list[list[Candidate]]:
    """``chosen`` cut, in order, into waves of ``first``, ``2 * first``, ``4 * first``, ...
    candidates (the last wave holds what is left)."""
    waves: list[list[Candidate]] = []
    size, i = max(1, first), 0
    while i < len(chosen):
        waves.append(chosen[i:i + size])
        i += size
        size *= 2
    return waves


class Liquidator:
    """The liquidation bot for one deployment (see the module docstring)."""

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        account: LocalAccount | None,
        config: BotConfig,
        *,
        store: Store | None = None,
        metrics: BotMetrics | None = None,
        rpc: CountingRpc | None = None,
        collateral_liquidation: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if account is None and not config.dry_run:
            raise ConfigError(
                "no signing key: set XMARGIN_PRIVATE_KEY or give --keystore with its password, or use --dry-run"
            )
        self.w3 = w3
        self.deployment = deployment
        self.config = config
        self._rpc = rpc if rpc is not None else CountingRpc.from_config(w3, config)
        self.metrics = metrics if metrics is not None else BotMetrics()
        self.metrics.bind_rpc(self._rpc)
        self._store = store
        self._owns_store = store is None
        self._account = account
        # A dry run without a key still preflights from some address; it never signs.
        self._signer: LocalAccount = account if account is not None else Account.create()
        self.address = to_checksum_address(self._signer.address)
        self._clock = clock
        self.engine = contract_at(w3, "MarginEngine", deployment.engine)
        self.quote = contract_at(w3, "Token", deployment.quote)
        self.watcher = HeadWatcher(w3, config.stale_head_s, clock=clock)
        self.planner = Planner(
            GasModel(strategy_from_config(config), config.liquidation_gas_estimate),
            config.min_profit_usd_wad,
            liquidator=self.address,
            collateral_liquidation=collateral_liquidation and account is not None,
            backstop=config.backstop,
        )
        self.mirror: ChainMirror | None = None
        self.sender: TxSender | None = None
        self.eth_feed: str | None = None
        self._lifecycle: Lifecycle | None = None
        self._metrics_server: Any = None
        self._started = False
        self._closed = False
        self._dirty = False                        # the last processing of a head did not finish
        self._processed_once = False               # a head was processed since start()
        self._last_head: int | None = None
        self._suppressed: dict[tuple[str, str], int] = {}   # (account, target) -> until block, after an error
        self._told_skips: dict[str, str] = {}   # bankrupt account -> why it was last said to be skipped
        self._at_risk: set[str] = set()
        self._blocks = 0
        self._max_blocks: int | None = None
        self._final_totals: KeeperTotals | None = None
        self._report: TickReport | None = None     # the report of the tick in progress
        self._poll_started: tuple[float, Any] | None = None   # (clock, RPC counters) before the last head poll
        self.backrun: Backrunner | None = None     # backruns pending price updates (bot/backrun.py)
        self._backrun_tried = False
        self._head_polled_at: float | None = None
        self._exact_head: int | None = None        # the head the mirror's state is exactly at (every log applied)
        self._model_preflight = False              # this tick's transactions are checked by the model
        self._tick_quote: int | None = None        # the keeper's quote balance, read at most once per tick
        self._allowance: int | None = None         # the engine's quote allowance from the keeper, once known

    def __repr__(self) -> str:   # never the key
        return f"Liquidator(address={self.address}, engine={self.engine.address}, dry_run={self.config.dry_run})"

    # ------------------------------------------------------------------ properties

    @property
    def rpc(self) -> CountingRpc:
        return self._rpc

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ChainError("the bot is not started: call start() first")  # dev
        return self._store

    @property
    def book(self) -> HealthBook:
        if self.mirror is None or self.mirror.book is None:
            raise ChainError("the bot is not started: call start() first")  # dev
        return self.mirror.book

    @property
    def state(self) -> ProtocolState:
        if self.mirror is None or self.mirror.state is None:
            raise ChainError("the bot is not started: call start() first")  # dev
        return self.mirror.state

    @property
    def at_risk(self) -> set[str]:
        """Accounts at risk, liquidatable or bankrupt (protocol_model.report's statuses)."""
        return set(self._at_risk)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the store, load the mirror at the head, restore in-flight transactions."""
        if self._started:
            return
        t0 = self._clock()
        chain_id = int(self.w3.eth.chain_id)
        if chain_id != self.deployment.chain_id:
            raise ConfigError(
                f"the deployment is for chain id {self.deployment.chain_id} but the node is chain id {chain_id}: "
                "point --rpc at the right node"
            )
        if self._store is None:
            anchor = self.w3.eth.get_block(self.deployment.block)
            self._store = Store(self.config.db_path, chain_id, self.deployment.engine, self.deployment.block,
                                deployment_block_hash=anchor["hash"])
        self.sender = TxSender.from_config(self.w3, self._signer, self.config, store=self._store, chain_id=chain_id)
        restored = self.sender.restore()
        self.watcher.poll()
        head = self.watcher.latest
        if head is None:  # dev: poll() always sets it
            raise ChainError("the node returned no head block")
        self.mirror = ChainMirror(self.w3, self.deployment, self.config, self._store)
        self.mirror.bloom_skip = self.watcher.heads is not None   # pushed heads: skip provably empty blocks
        accounts = self.mirror.start(head)
        self._exact_head = head.number   # the snapshot was read at the head
        if self.mirror.start_reorg is not None:
            repair = self.sender.after_reorg(deep=self.mirror.start_reorg[1])
            if repair.unmined or repair.gone:
                log.warning("reorg since the last run: %d mined transaction(s) of ours no longer on chain "
                            "(%d liquidation record(s) dropped), %d in flight gone", len(repair.unmined),
                            len(repair.dropped), len(repair.gone))
        else:
            self.sender.reconcile()   # a kill between the record and the broadcast leaves a nonce nobody used
        self.eth_feed = self._find_eth_feed()
        self._last_head = head.number
        self._refresh_risk(set(self.state.accounts))
        self.metrics.set_accounts(len(self.state.accounts), len(self._at_risk))
        self.metrics.last_block.set(head.number)
        if self.config.metrics_port is not None and self._metrics_server is None:
            # Before the first transaction: a busy port must not cost an approve.
            self._metrics_server = start_metrics_server(self.config.metrics_port, self.metrics.registry,
                                                        self.config.metrics_addr)
        if self.planner.collateral_liquidation and not self.config.dry_run:
            self._approve_quote(head)
        warm_up_encoders()
        self._started = True   # last: a start that failed half-way (the node) is done again in full
        log.info("started at block %d: %d account(s), %d liquidatable, %d transaction(s) in flight, "
                 "liquidator %s%s, in %.1fs", head.number, accounts, len(self.book.liquidatable()), restored,
                 self.address, " (dry run)" if self.config.dry_run else "", self._clock() - t0)

    def _find_eth_feed(self) -> str:
        feed = self.deployment.feeds.get("ETH")
        if feed is None or to_checksum_address(feed) not in self.state.feeds:
            raise ConfigError("the deployment has no ETH price feed the engine uses: the bot prices gas with it")
        return to_checksum_address(feed)

    def _approve_quote(self, head: Head) -> None:
        """Let the engine pull quote tokens for collateral liquidations (once per key)."""
        allowance = int(self.quote.functions.allowance(self.address, self.engine.address).call({"from": self.address}))
        if not needs_approve(allowance):
            self._allowance = allowance
            return
        sender = self.sender
        if sender is None:  # dev: set by start()
            return
        result = sender.send_call(
            self.quote.functions.approve(self.engine.address, UINT256_MAX), kind="approve", account="",
            target=self.quote.address, gas=APPROVE_GAS, base_fee_wei=head.base_fee_wei or 0, head_block=head.number,
        )
        log.info("approve the engine for %s: %s", self.deployment.quote_symbol, result.status)
        if result.status == "sent":
            self._allowance = UINT256_MAX   # mined before our next transactions (nonce order)

    def stop(self) -> None:
        """Stop the loop if it runs (it shuts down after its current step), else close now."""
        if self._lifecycle is not None and not self._lifecycle.stopping and self._lifecycle.result.reason == "running":
            self._lifecycle.stop()
            return
        self.close()

    def close(self) -> None:
        """Release the store and the metrics endpoint (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.backrun is not None:
            self.backrun.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        if self._store is not None:
            if self.mirror is not None:
                self.mirror.save_snapshot()     # the next start replays only the logs after this block
            self._final_totals = self._store.totals()
            if self._owns_store:
                self._store.close()
        log.info("stopped")

    def store_totals(self) -> KeeperTotals | None:
        """Won/lost counts, rewards and gas from the store (also after :meth:`close`)."""
        if self._store is not None and not self._closed:
            return self._store.totals()
        return self._final_totals

    def run(self, max_ticks: int | None = None, *, max_blocks: int | None = None,
            install_signals: bool = True) -> RunResult:
        """The loop: start, one :meth:`tick` per new head, stop on SIGTERM/SIGINT, ``max_ticks``
        polls, ``max_blocks`` processed heads, or ``max_failed_ticks`` consecutive failures."""
        heads = self.watcher.heads
        if heads is None:
            heads = self.watcher.heads = open_heads(self.config.ws_url, provider_url(self.w3), threading.Event())
        life = Lifecycle(
            self._loop_head,
            # Backrunning reads the pending transactions between heads at a shorter interval.
            poll_interval_s=min(self.config.poll_interval_s, self.config.pending_poll_interval_s)
            if self.config.backrun else self.config.poll_interval_s,
            max_failed_ticks=self.config.max_failed_ticks,
            expected_errors=TICK_ERRORS,
            watchdog=self.watcher,
            clock=self._clock,
            wake=heads.wake if heads is not None else None,
        )
        if heads is not None:
            life.on_shutdown(heads.close)
        self._lifecycle = life
        self._max_blocks = max_blocks
        life.on_startup(lambda: self._start_until_up(life))
        life.on_block(self._on_block)
        life.on_stale(lambda: log.warning(
            "stale head: no new block for %.0fs (an automining dev node mines only when it gets a transaction; "
            "a live chain's node may be stuck or syncing)", self.watcher.seconds_since_new_head()))
        life.every(60.0, self._heartbeat, name="heartbeat")
        life.on_shutdown(self.close)
        return life.run(max_ticks=max_ticks, install_signals=install_signals)

    def _start_until_up(self, life: Lifecycle) -> None:
        """:meth:`start`, again and again while the node fails to answer (an outage, a restart,
        a flaky provider), with a growing pause, until it works or the loop is stopped. Anything
        else (a wrong chain, a refused database) still ends the run at once."""
        attempt = 0
        while True:
            try:
                self.start()
                return
            except RpcError as exc:
                wait = min(self.config.poll_interval_s * 2 ** attempt, 30.0)
                if isinstance(exc, CircuitOpen):
                    wait = max(wait, min(exc.retry_in_s, 60.0))
                attempt += 1
                log.warning("start failed, the node did not answer (%s): trying again in %.1fs", exc, wait)
                if life.stop_event.wait(wait):
                    return

    def _next_head(self) -> Head | None:
        """A new head; or the current one again when it was never processed since the start, or
        its processing failed half-way; else None."""
        self._poll_started = (self._clock(), self._rpc.stats())
        head = self.watcher.poll()
        if head is None and (self._dirty or not self._processed_once):
            return self.watcher.latest
        return head

    def _loop_head(self) -> Head | None:
        """:meth:`run`'s head source. With ``backrun`` the loop comes here every
        ``pending_poll_interval_s``: the head is polled every ``poll_interval_s`` (and at once
        while a head waits to be processed), and whenever no new head comes of it, the pending
        transactions are read (:meth:`poll_pending`)."""
        if not self.config.backrun:
            return self._next_head()
        now = self._clock()
        if (self._head_polled_at is not None and now - self._head_polled_at < self.config.poll_interval_s
                and not self._dirty and self._processed_once and not self.watcher.pushed):   # pushed: free
            self.poll_pending()
            return None
        self._head_polled_at = now
        head = self._next_head()
        if head is None:
            self.poll_pending()
        return head

    def tx_units(self, chosen: list[Candidate]) -> tuple[list[list[Candidate]], bool]:
        """The transactions ``chosen`` go out as (:func:`tx_units`), and whether a lone liquidation
        goes as ``liquidate_many`` too (``max_batch_orders`` > 1); for :mod:`bot.backrun`."""
        size = batch_size(self.config)
        return tx_units(chosen, size), size > 1

    def poll_pending(self) -> BackrunReport | None:
        """Read the node's pending transactions and backrun the price updates among them
        (:mod:`bot.backrun`); None without any. The first call sets the backrunner up (off, said
        once, where the node has no pending-transaction filter or ``backrun`` is off)."""
        if not self._started:
            self.start()
        if not self._backrun_tried:
            self._backrun_tried = True
            self.backrun = make_backrunner(self) if self.config.backrun else None
        return self.backrun.poll() if self.backrun is not None else None

    def _on_block(self, head: Head) -> None:
        t0, before = self._poll_started if self._poll_started is not None else (self._clock(), self._rpc.stats())
        report = self._process(head, t0, before)
        log.debug("%s", report.summary())
        self._blocks += 1
        if self._max_blocks is not None and self._blocks >= self._max_blocks and self._lifecycle is not None:
            self._lifecycle.stop("max_blocks")

    def _heartbeat(self) -> None:
        totals = self.store.totals()
        log.info("alive at block %s: %d account(s), %d at risk, won %d, lost %d, %d RPC call(s)",
                 self._last_head, len(self.state.accounts), len(self._at_risk), totals.won, totals.lost,
                 self._rpc.total)

    # ------------------------------------------------------------------ one tick

    def tick(self) -> TickReport:
        """Process everything up to the current head once (see the module docstring)."""
        if not self._started:
            self.start()
        head = self._next_head()
        t0, before = self._poll_started
        if head is None:
            return TickReport(head=self._last_head or 0, idle=True, rpc_calls=(self._rpc.stats() - before).by_method,
                              tick_seconds=self._clock() - t0)
        return self._process(head, t0, before)

    def _process(self, head: Head, t0: float, before: Any) -> TickReport:
        mirror, sender = self.mirror, self.sender
        if mirror is None or sender is None:  # dev: set by start()
            raise ChainError("the bot is not started")
        self._dirty = True
        report = TickReport(head=head.number)
        self._report = report
        exact_before, self._exact_head = self._exact_head, None   # not exact while (or if) the sync fails
        sync = mirror.sync(head)
        self._exact_head = head.number if self._mirror_exact(sync, exact_before) else None
        report.events = sync.events
        report.reorg_at = sync.reorg_at
        report.new_accounts = list(sync.new_accounts)
        if sync.reorg_at is not None:
            self._after_reorg(sync)
        self._log_sync(sync)
        if not sync.skipped:
            self._refresh_risk(sync.changed)

        report.outcomes = sender.check_pending(head.number, head.base_fee_wei)
        for outcome in report.outcomes:
            self._settle(outcome, head)

        report.liquidatable = self.book.liquidatable()
        if report.liquidatable:
            self._liquidate(head, report)

        self._last_head = head.number
        try:   # once the liquidations are out: a step of the start check, the periodic snapshot
            mirror.after_tick(head)
        except TICK_ERRORS as exc:
            log.warning("start check / snapshot postponed to the next block: %s", exc)
        self.metrics.set_accounts(len(self.state.accounts), len(self._at_risk | set(report.liquidatable)))
        self.metrics.last_block.set(head.number)
        report.rpc_calls = (self._rpc.stats() - before).by_method
        report.tick_seconds = self._clock() - t0
        self._dirty = False
        self._processed_once = True
        return report

    def _mirror_exact(self, sync: SyncResult, exact_before: int | None) -> bool:
        """Whether the mirror's state, after ``sync``, is exactly the chain's at its head: every
        log through the head applied in order. Not after a reorg, nor after late logs or a
        configuration event (re-read through the Lens at the head instead of applied), nor when
        the head was already processed (a lagging node) unless the state was exact at that very
        head."""
        if sync.skipped:
            return exact_before == sync.head and self.state.block == sync.head
        return sync.reorg_at is None and not sync.config_reloaded

    def _after_reorg(self, sync: SyncResult) -> None:
        """The store has rewound; bring the sender (in-flight transactions, nonce) and the
        per-account suppressions in line with the new branch, and say what was dropped."""
        sender = self.sender
        if sender is None:  # dev
            raise ChainError("the bot is not started")
        repair = sender.after_reorg(deep=sync.deep_reorg)
        unmined, gone = repair.unmined, repair.gone
        self._suppressed.clear()
        dropped = list(sync.dropped) + list(repair.dropped)
        if sync.deep_reorg:
            log.error("deep reorg (below the %d-block lookback): rewound to block %d; dropped %d liquidation "
                      "record(s) (%d won), %d mined transaction(s) of ours no longer on chain, %d in flight gone; "
                      "nonce resynced to %s", self.config.lookback_blocks, sync.reorg_at, len(dropped),
                      sum(r.outcome == "won" for r in dropped), len(unmined), len(gone), sender.nonces.peek())
        elif dropped or gone:
            log.warning("reorg: rewound to block %d; dropped %d liquidation record(s), %d transaction(s) in flight gone",
                        sync.reorg_at, len(dropped), len(gone))
        for rec in dropped:
            log.info("dropped by the reorg: %s %s of %s at block %d (tx %s)", rec.outcome, rec.kind, rec.account,
                     rec.block, rec.tx_hash or "-")

    def _log_sync(self, sync: SyncResult) -> None:
        for address in sync.new_accounts:
            log.info("new account %s", address)
        if sync.price_changes:
            count = len(self.book.liquidatable())
            for change in sync.price_changes:
                log.info("price %s %s -> %s (%d liquidatable)", change.asset, fmt_wad(change.old_wad),
                         fmt_wad(change.new_wad), count)
        for ev in sync.liquidations:
            if ev.args.get("liquidator") != self.address:
                log.info("rival %s liquidated %s (%s) in block %d", ev.args.get("liquidator"), ev.args.get("account"),
                         self._target_name(ev.args.get("market", ev.args.get("token"))), ev.block)

    # ------------------------------------------------------------------ deciding and sending

    def _liquidate(self, head: Head, report: TickReport) -> None:
        sender, store = self.sender, self.store
        if sender is None or self.eth_feed is None:  # dev
            raise ChainError("the bot is not started")
        backoffs = store.backoffs(head.number)
        self._suppressed = unexpired(self._suppressed, head.number)
        self._tick_quote = None
        decision = decide(
            self.state, report.liquidatable, self.planner,
            base_fee_wei=head.base_fee_wei or 0, eth_price_wad=self.book.price(self.eth_feed),
            backoffs=backoffs, suppressed=self._suppressed, in_flight=lambda a: bool(sender.pending_for(a)),
            quote_balance=self._keeper_quote, backstop=self.config.backstop,
        )
        for address, why in decision.skipped.items():
            # A bankrupt account left alone says why, once per reason (its bad debt waits meanwhile).
            if self._told_skips.get(address) != why and self._bankrupt(address):
                self._told_skips[address] = why
                hint = "" if self.config.backstop else "; a --backstop keeper closes it and settles its bad debt"
                log.info("not liquidating bankrupt %s: %s%s", address, why, hint)
            else:
                log.debug("not liquidating %s: %s", address, why)
        report.candidates.extend(decision.evaluated)
        report.backed_off.extend(decision.backed_off)
        report.chosen = decision.chosen
        if report.chosen:
            self._send_chosen(report, head)

    def _bankrupt(self, address: str) -> bool:
        try:
            return self.book.health(address).equity < 0
        except Revert:   # the engine's health view would overflow: not a plain bankruptcy
            return False

    def _send_chosen(self, report: TickReport, head: Head) -> None:
        """Preflight and send the chosen transactions, most profitable first (:meth:`_send_units`).

        The liquidations go out as ``liquidate_many`` batches (:func:`tx_units`), so a race lost
        to a rival costs a skipped order instead of a reverted transaction; with
        ``max_batch_orders`` 1 each goes out as its own ``liquidate`` / ``liquidate_collateral``."""
        self._send_units(tx_units(report.chosen, batch_size(self.config)), report, head)

    def _uses_model(self, head: Head) -> bool:
        """Whether this tick's transactions are preflighted by the model (setting ``preflight``):
        ``model`` always, ``node`` never, ``auto`` when the mirror is exactly at ``head``."""
        mode = self.config.preflight
        if mode == "auto" and self._exact_head != head.number:
            log.info("preflight by the node at block %d: the mirror is not exactly at the head "
                     "(a reorg, late logs or a re-read)", head.number)
        return mode == "model" or (mode == "auto" and self._exact_head == head.number)

    def _send_units(self, units: list[list[Candidate]], report: TickReport, head: Head) -> None:
        """Preflight and send ``units`` (each one transaction, in sending order).

        With the model as the preflight (:mod:`bot.preflight`), every unit is simulated in order
        on one scratch state at once, and all that pass are signed and sent in one batch. With the
        node's ``eth_call``, in waves of growing size (:func:`send_waves`): each wave is one batch
        of ``eth_call`` preflights, then one batch of the raw transactions that passed, its store
        writes in one transaction; the first liquidations go out after a few preflights instead
        of after all of them, at the cost of a few more round trips (about log2 of the count)."""
        failed: set[str] = set()
        any_sent = False
        breaker: CircuitOpen | None = None
        self._model_preflight = self._uses_model(head)
        report.preflight = "model" if self._model_preflight else "node"
        size = batch_size(self.config)
        waves = [units] if self._model_preflight else send_waves(units, FIRST_WAVE if size == 1 else 1)
        for wave in waves:
            try:
                any_sent = self._send_wave(wave, failed, report, head) or any_sent
            except CircuitOpen as exc:   # what was sent stays recorded; stop sending more
                breaker = exc
                break
        if any_sent:
            latency = max(0.0, self._clock() - head.seen_at)
            report.detection_latency_s = latency
            self.metrics.observe_latency(latency)
        if breaker is not None:
            raise breaker

    def _send_wave(self, units: list[list[Candidate]], failed: set[str], report: TickReport, head: Head) -> bool:
        """One wave of :meth:`_send_chosen` (each unit one transaction); returns whether anything
        was sent (or dry-run)."""
        sender, store = self.sender, self.store
        if sender is None:  # dev
            raise ChainError("the bot is not started")
        requests = [self._request(u) for u in units]
        flights = self._preflight(units, requests)
        to_send: list[tuple[TxRequest, Preflight]] = []
        sent_units: list[list[Candidate]] = []
        failures: list[tuple[Candidate, Preflight]] = []
        for unit, req, flight in zip(units, requests, flights):
            if req.kind == LIQUIDATE_MANY:
                passed, refused = self._preflight_batch(unit, flight)
                failures += refused
                failed.update(c.account for c, _ in refused)
                if passed:
                    batch = self._request(passed) if len(passed) < len(unit) else req
                    to_send.append((batch, Preflight(True)))
                    sent_units.append(passed)
                continue
            cand = unit[0]
            if cand.account in failed:
                continue   # a later step of an account whose earlier step does not go out
            if not flight.ok:
                failed.add(cand.account)
                failures.append((cand, flight))
                continue
            to_send.append((req, flight))
            sent_units.append(unit)
        breaker: CircuitOpen | None = None
        with store.transaction():
            for cand, flight in failures:
                result = SendResult("preflight_failed", flight)
                report.sends.append(result)
                self._not_sent(cand, result, head)
        # Outside the store transaction: the sender commits its records before it broadcasts.
        results = sender.send_many(to_send, base_fee_wei=head.base_fee_wei or 0,
                                   head_block=head.number) if to_send else []
        with store.transaction():
            for unit, result in zip(sent_units, results):
                report.sends.append(result)
                for cand in unit:
                    if result.status in ("sent", "dry_run"):
                        self._log_send(cand, result, head)
                        continue
                    failed.add(cand.account)
                    try:
                        self._not_sent(cand, result, head)
                    except CircuitOpen as exc:   # raised after the commit: what was sent stays recorded
                        breaker = breaker or exc
        if breaker is not None:
            raise breaker
        return any(r.status in ("sent", "dry_run") for r in results)

    def _not_sent(self, cand: Candidate, result: SendResult, head: Head) -> None:
        if result.status == "preflight_failed" and cand.step > 0:
            # The preflight runs on the latest block, without our own earlier step of this
            # account (still pending): e.g. a collateral liquidation needs the negative cash our
            # close leaves behind. Not a lost race: it is planned again once that step is mined.
            log.debug("step %d for %s %s waits for its previous step (%s)", cand.step, cand.account,
                      cand.target_name, result.preflight.reason)
        elif result.status == "preflight_failed":
            self._preflight_failed(cand, result, head)
        elif result.status == "rejected":
            log.warning("node refused the %s of %s %s: %s", cand.kind, cand.account, cand.target_name, result.error)
            if self._rpc.breaker.state != "closed":
                raise CircuitOpen(f"not sending more liquidations: {result.error}",
                                  retry_in_s=self._rpc.breaker.retry_in_s())
        else:
            log.warning("not sending the %s of %s %s: %s", cand.kind, cand.account, cand.target_name,
                        result.error or result.status)

    def _preflight_batch(self, unit: list[Candidate],
                         flight: Preflight) -> tuple[list[Candidate], list[tuple[Candidate, Preflight]]]:
        """Which orders of a batch go out, and the refusals of the others.

        The batch's preflight (the model's, or the node's ``eth_call``) returns how many orders
        would execute. Some: the batch goes out whole (the engine skips what a rival took first in
        the meantime). None: each order's reason comes from the model, or from
        ``preview_liquidate_many`` (a lost race, or an unusable price). A revert (not a skip: e.g.
        the quote the collateral orders need is missing): each order is preflighted alone, and
        those that pass go out together."""
        if flight.ok:
            if _executed(flight) > 0:
                return list(unit), []
            reasons = [r or "skipped" for r in flight.skips] if flight.skips is not None else self._skip_reasons(unit)
            return [], [(c, Preflight(False, r, classify_revert(r))) for c, r in zip(unit, reasons)]
        log.info("preflight of a batch of %d order(s) reverted (%s): trying each on its own", len(unit), flight.reason)
        alone = self._preflight([[c] for c in unit])
        passed = [c for c, f in zip(unit, alone) if f.ok and _executed(f) > 0]
        skipped = [i for i, f in enumerate(alone) if f.ok and _executed(f) == 0]
        if skipped:   # the model's reasons, else one preview for all (each order read against the current state)
            known = all(alone[i].skips is not None for i in skipped)
            reasons = ([alone[i].skips[0] or "skipped" for i in skipped] if known   # type: ignore[index]
                       else self._skip_reasons([unit[i] for i in skipped]))
            for i, r in zip(skipped, reasons):
                alone[i] = Preflight(False, r, classify_revert(r))
        return passed, [(c, f) for c, f in zip(unit, alone) if not f.ok]

    def _preflight(self, units: list[list[Candidate]], requests: list[TxRequest] | None = None) -> list[Preflight]:
        """One :class:`Preflight` per unit: the model's (all units in order on one scratch state;
        :func:`bot.preflight.simulate_units`) when this tick uses it, else the node's ``eth_call``
        of each transaction (one JSON-RPC batch)."""
        if self._model_preflight:
            quote = needs_quote(units)
            return simulate_units(self.state, units, self.address, self._keeper_quote() if quote else 0,
                                  batch=batch_size(self.config) > 1,
                                  allowance=self._keeper_allowance() if quote else UINT256_MAX)
        sender = self.sender
        if sender is None:  # dev
            raise ChainError("the bot is not started")
        reqs = requests if requests is not None else [self._request(u) for u in units]
        return sender.preflight_many([(r.to, r.data, 0) for r in reqs])

    def _skip_reasons(self, unit: list[Candidate]) -> list[str]:
        """Why each order of ``unit`` would be skipped now (``preview_liquidate_many``)."""
        previews = self.engine.functions.preview_liquidate_many(_orders(unit)).call({"from": self.address})
        return [SKIP_REASONS.get(int(p[0]), "skipped") for p in previews]

    def _request(self, unit: Candidate | list[Candidate]) -> TxRequest:
        """The transaction of a candidate (or of a batch of them: ``liquidate_many``), its calldata
        encoded directly (no web3 contract round)."""
        if isinstance(unit, list):
            if len(unit) > 1 or batch_size(self.config) > 1 and unit[0].kind != SETTLE:
                return batch_request(self.engine.address, unit, self.config.liquidation_gas_estimate)
            unit = unit[0]
        cand = unit
        if cand.kind == LIQUIDATE:
            data = encode_call(calls.LIQUIDATE, cand.account, int(cand.target), cand.amount)
        elif cand.kind == SETTLE:
            data = encode_call(calls.SETTLE_BAD_DEBT, cand.account)
        else:
            data = encode_call(calls.LIQUIDATE_COLLATERAL, cand.account, str(cand.target), cand.amount)
        gas = SETTLE_GAS if cand.kind == SETTLE else self.config.liquidation_gas_estimate
        return TxRequest(self.engine.address, "0x" + data.hex(), cand.kind, cand.account, cand.target, gas,
                         cand.expected_profit_wei, cand.profit_usd_wad)

    def _log_send(self, cand: Candidate, result: SendResult, head: Head) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        tx = f" tx {result.tx.hash} nonce {result.tx.nonce}" if result.tx is not None else ""
        if cand.kind == SETTLE:
            verb = "would settle" if result.status == "dry_run" else "settling"
            log.info("%s the bad debt of %s (cash %s USD)%s block %d", verb, cand.account,
                     fmt_wad(self.state.accounts[cand.account].cash), tx, head.number)
            return
        verb = "would liquidate" if result.status == "dry_run" else "liquidating"
        log.info("%s %s %s %s expected reward %s USD gas %s USD profit %s USD%s block %d", verb, cand.account,
                 cand.target_name, self._amount_text(cand), fmt_wad(cand.reward_usd_wad),
                 fmt_wad(cand.gas.cost_usd_wad if cand.gas else 0), fmt_wad(cand.profit_usd_wad), tx, head.number)

    def _preflight_failed(self, cand: Candidate, result: SendResult, head: Head) -> None:
        reason = result.preflight.reason or "no reason"
        if cand.kind == SETTLE and _settle_skip(reason):
            # A rival settled it, or the account changed since the mirror saw it: look again later.
            self._suppressed[(cand.account, str(cand.target))] = head.number + 1
            log.info("not settling %s: %s", cand.account, reason)
            return
        reaction, until = after_refusal(cand.step, result.preflight.lost_race, head.number,
                                        self.config.lost_race_backoff_blocks)
        if reaction == "back_off":
            self._lost(cand.account, cand.target, cand.kind, head.number, until, None, 0, reason)
            return
        # The model said yes, the chain says no for another reason: do not retry it every block.
        self._suppressed[(cand.account, str(cand.target))] = until
        log.warning("preflight of %s %s reverted (%s): skipped until block %d", cand.account, cand.target_name,
                    reason, until)

    def _lost(self, account: str, target: int | str, kind: str, block: int, until: int, tx_hash: str | None,
              gas_cost_wei: int, reason: str) -> None:
        """A race lost in ``block``: the account is backed off until ``until`` (:func:`after_refusal`)."""
        store = self.store
        blocks = until - block
        store.back_off(account, until, reason=f"lost race ({reason})")
        store.record_liquidation(LiquidationRecord(account=account, target=target, kind=kind, outcome="lost",
                                                   block=block, tx_hash=tx_hash, gas_cost_wei=gas_cost_wei,
                                                   reason=reason))
        self.metrics.lost(gas_cost_wei)
        if self._report is not None:
            self._report.lost.append((account, str(target)))
        log.info("lost race %s %s (%s) backing off %d blocks", account, self._target_name(target), reason, blocks)

    def _quote_balance(self) -> int:
        if self._account is None:
            return 0
        return int(self.quote.functions.balanceOf(self.address).call({"from": self.address}))

    def _keeper_quote(self) -> int:
        """The keeper's quote balance, read at most once per tick (the planner's budget and the
        model's preflight use the same figure)."""
        if self._tick_quote is None:
            self._tick_quote = self._quote_balance()
        return self._tick_quote

    def _keeper_allowance(self) -> int:
        """The engine's quote allowance from the keeper: known after start's approve, else read."""
        if self._allowance is not None:
            return self._allowance
        return int(self.quote.functions.allowance(self.address, self.engine.address).call({"from": self.address}))

    # ------------------------------------------------------------------ outcomes

    def _settle(self, outcome: TxOutcome, head: Head) -> None:
        tx = outcome.tx
        if tx.kind == LIQUIDATE_MANY:
            self._settle_batch(outcome, head)
            return
        if tx.kind not in ("liquidate", "liquidate_collateral", SETTLE):
            self.metrics.add_gas(outcome.gas_cost_wei)
            log.info("%s %s %s in block %s", tx.kind, tx.hash, outcome.status, tx.mined_block)
            return
        if outcome.status == "mined":
            self._won(outcome)
        elif outcome.status == "reverted":
            if tx.kind == SETTLE and _settle_skip(outcome.revert_reason):
                self.metrics.add_gas(outcome.gas_cost_wei)
                self.store.record_liquidation(LiquidationRecord(
                    account=tx.account, target=tx.target, kind=SETTLE, outcome="lost",
                    block=tx.mined_block or head.number, tx_hash=tx.hash, gas_cost_wei=outcome.gas_cost_wei,
                    reason=outcome.revert_reason or ""))
                log.info("settlement of %s not needed any more (%s)", tx.account, outcome.revert_reason)
            elif outcome.lost_race:
                block = tx.mined_block or head.number
                _, until = after_refusal(0, True, block, self.config.lost_race_backoff_blocks)
                self._lost(tx.account, tx.target, tx.kind, block, until, tx.hash, outcome.gas_cost_wei,
                           outcome.revert_reason or "")
            else:
                self.metrics.add_gas(outcome.gas_cost_wei)
                _, until = after_refusal(0, False, head.number, self.config.lost_race_backoff_blocks)
                self._suppressed[(tx.account, tx.target)] = until
                log.warning("liquidation of %s %s reverted in block %s: %s (tx %s)", tx.account,
                            self._target_name(tx.target), tx.mined_block, outcome.revert_reason, tx.hash)
        else:
            log.warning("liquidation of %s %s dropped: its nonce was used by another transaction", tx.account,
                        self._target_name(tx.target))

    def _settle_batch(self, outcome: TxOutcome, head: Head) -> None:
        """A ``liquidate_many`` of ours settled. Mined: each executed order is a won liquidation
        (its reward from its own event), each skipped order (``LiquidationSkipped``) a race lost to
        a rival (backed off) or, for an unusable price, suppressed for a while; the gas is shared
        by the won orders (by the skipped ones when none won). Reverted (a malformed order or a
        failed transfer, never a lost race): every order is suppressed for a while."""
        tx = outcome.tx
        orders = batch_orders(tx.data)
        if outcome.status == "dropped":
            log.warning("batch of %d liquidation(s) dropped: its nonce was used by another transaction", len(orders))
            return
        block = tx.mined_block or head.number
        if outcome.status == "reverted":
            self.metrics.add_gas(outcome.gas_cost_wei)
            _, until = after_refusal(0, False, head.number, self.config.lost_race_backoff_blocks)
            for o in orders:
                self._suppressed[(o.account, order_target(o))] = until
            log.warning("batch of %d liquidation(s) reverted in block %s: %s (tx %s)", len(orders), tx.mined_block,
                        outcome.revert_reason, tx.hash)
            return
        state = self.state
        won: list[tuple[LiquidationRecord, str]] = []
        skipped: list[tuple[int, str]] = []
        settled: dict[str, str] = {}
        for ev in self._engine_events(outcome):
            a = ev.args
            if ev.name == "BadDebtSettled":
                settled[a["account"]] = (f"; bad debt {fmt_wad(int(a['deficit']))} USD settled: insurance fund "
                                         f"{fmt_wad(int(a['covered']))}, house {fmt_wad(int(a['socialised']))}")
                continue
            if a.get("liquidator") != self.address:
                continue
            if ev.name == "LiquidationSkipped":
                skipped.append((int(a["index"]), SKIP_REASONS.get(int(a["reason"]), "skipped")))
                continue
            if ev.name == "Liquidation":
                reward = int(a["keeper_reward"])
                rec = LiquidationRecord(account=a["account"], target=str(int(a["market"])), kind=LIQUIDATE,
                                        outcome="won", block=block, tx_hash=tx.hash, reward_native=reward,
                                        reward_usd_wad=reward * state.params.quote_scale)
                paid = "" if int(a["charged"]) * 2 >= int(a["penalty"]) else " (paid by the insurance fund / house)"
                text = (f"{self._target_name(a['market'])} {fmt_wad(abs(int(a['size_delta'])), 4)} @ "
                        f"{fmt_wad(int(a['price']))} reward "
                        f"{fmt_units(reward, self.deployment.quote_decimals, 2)} {self.deployment.quote_symbol}{paid}")
                won.append((rec, text))
            elif ev.name == "CollateralLiquidation":
                col = state.collateral_by_token(a["token"])
                unit = col.unit if col is not None else 1
                gain = int(a["seized"]) * int(a["price"]) // unit - int(a["repay"]) * state.params.quote_scale
                rec = LiquidationRecord(account=a["account"], target=a["token"], kind=LIQUIDATE_COLLATERAL,
                                        outcome="won", block=block, tx_hash=tx.hash, reward_native=int(a["seized"]),
                                        reward_usd_wad=gain)
                text = (f"{self._target_name(a['token'])} repaid "
                        f"{fmt_units(int(a['repay']), self.deployment.quote_decimals, 2)} "
                        f"{self.deployment.quote_symbol} for {fmt_units(int(a['seized']), col.decimals if col else 18)} "
                        f"@ {fmt_wad(int(a['price']))} gain {fmt_wad(gain)} USD")
                won.append((rec, text))
        merged: dict[tuple[str, str, str], tuple[LiquidationRecord, str]] = {}
        for rec, text in won:   # the same target twice in one batch: one outcome, its rewards summed
            key = (rec.account, rec.target, rec.kind)
            if key in merged:
                old, old_text = merged[key]
                rec = replace(old, reward_native=old.reward_native + rec.reward_native,
                              reward_usd_wad=old.reward_usd_wad + rec.reward_usd_wad)
                text = f"{old_text}; {text}"
            merged[key] = (rec, text)
        won = list(merged.values())
        gas = outcome.gas_cost_wei
        shares = [gas // len(won) + (gas % len(won) if i == 0 else 0) for i in range(len(won))] if won else []
        gas_usd = gas * self.book.price(self.eth_feed) // WAD if self.eth_feed else 0
        for (rec, text), share in zip(won, shares):
            rec = replace(rec, gas_cost_wei=share)
            if self.store.record_liquidation(rec):
                self.metrics.won(rec.reward_usd_wad, share)
            log.info("liquidated %s %s%s (batch of %d, gas %s USD) tx %s block %s", rec.account, text,
                     settled.get(rec.account, ""), len(orders), fmt_wad(gas_usd), tx.hash, tx.mined_block)
        backrun = self.backrun if self.backrun is not None and self.backrun.owns(tx.hash) else None
        for k, (index, reason) in enumerate(skipped):
            if index >= len(orders):
                continue   # dev: the engine numbers the orders of this call
            o = orders[index]
            kind = LIQUIDATE_COLLATERAL if o.is_collateral else LIQUIDATE
            cost = gas if not won and k == 0 else 0
            if backrun is not None:   # landed before its price update: not a lost race
                backrun.on_skip(o, reason, cost, tx.hash, tx.mined_block)
                continue
            if classify_revert(reason) == "lost_race":
                _, until = after_refusal(0, True, block, self.config.lost_race_backoff_blocks)
                self._lost(o.account, order_target(o), kind, block, until, tx.hash, cost, reason)
            else:
                self.metrics.add_gas(cost)
                _, until = after_refusal(0, False, head.number, self.config.lost_race_backoff_blocks)
                self._suppressed[(o.account, order_target(o))] = until
                log.warning("order for %s %s skipped in block %s: %s (tx %s)", o.account,
                            self._target_name(order_target(o)), tx.mined_block, reason, tx.hash)

    def _engine_events(self, outcome: TxOutcome) -> Iterator[Any]:
        """The engine's decoded events in a mined transaction's receipt, in log order."""
        for entry in (outcome.receipt or {}).get("logs", []):
            if to_checksum_address(entry["address"]) == self.engine.address:
                ev = decode_log(entry, ENGINE)
                if ev is not None:
                    yield ev

    def _won(self, outcome: TxOutcome) -> None:
        tx = outcome.tx
        state = self.state
        reward_native = reward_usd = 0
        text = ""
        for ev in self._engine_events(outcome):
            a = ev.args
            if ev.name == "BadDebtSettled" and tx.kind == SETTLE:
                text = (f"bad debt settled: deficit {fmt_wad(int(a['deficit']))} USD, insurance "
                        f"{fmt_wad(int(a['covered']))}, socialised {fmt_wad(int(a['socialised']))}")
                continue
            if a.get("liquidator") != self.address:
                continue
            if ev.name == "Liquidation":
                reward_native += int(a["keeper_reward"])
                reward_usd += int(a["keeper_reward"]) * state.params.quote_scale
                text = (f"{self._target_name(a['market'])} {fmt_wad(abs(int(a['size_delta'])), 4)} @ "
                        f"{fmt_wad(int(a['price']))} reward "
                        f"{fmt_units(int(a['keeper_reward']), self.deployment.quote_decimals, 2)} "
                        f"{self.deployment.quote_symbol}")
            elif ev.name == "CollateralLiquidation":
                col = state.collateral_by_token(a["token"])
                unit = col.unit if col is not None else 1
                gain = int(a["seized"]) * int(a["price"]) // unit - int(a["repay"]) * state.params.quote_scale
                reward_native += int(a["seized"])
                reward_usd += gain
                text = (f"{self._target_name(a['token'])} repaid "
                        f"{fmt_units(int(a['repay']), self.deployment.quote_decimals, 2)} "
                        f"{self.deployment.quote_symbol} for {fmt_units(int(a['seized']), col.decimals if col else 18)} "
                        f"@ {fmt_wad(int(a['price']))} gain {fmt_wad(gain)} USD")
        recorded = self.store.record_liquidation(LiquidationRecord(
            account=tx.account, target=tx.target, kind=tx.kind, outcome="won", block=tx.mined_block or 0,
            tx_hash=tx.hash, reward_native=reward_native, reward_usd_wad=reward_usd,
            gas_cost_wei=outcome.gas_cost_wei,
        ))
        if recorded:
            self.metrics.won(reward_usd, outcome.gas_cost_wei)
        gas_usd = outcome.gas_cost_wei * self.book.price(self.eth_feed) // WAD if self.eth_feed else 0
        log.info("liquidated %s %s gas %s USD tx %s block %s", tx.account, text or self._target_name(tx.target),
                 fmt_wad(gas_usd), tx.hash, tx.mined_block)

    # ------------------------------------------------------------------ helpers

    def _refresh_risk(self, changed: set[str]) -> None:
        """Keep the set of accounts that are not healthy (report.status) current for ``changed``."""
        state, book = self.state, self.book
        slack = _risk_slack(state)
        for address in changed:
            acc = state.accounts.get(address)
            if acc is None:
                self._at_risk.discard(address)
                continue
            try:
                eq, ih, mh = book.health(address)
            except Revert:
                self._at_risk.add(address)
                continue
            if eq >= 0 and mh >= 0 and ih >= 0 and slack is not None and slack[0] * mh > slack[1] * (mh - ih) + slack[2]:
                self._at_risk.discard(address)      # far from the at-risk ratio: no breakdown needed
                continue
            if status(eq, ih, mh, margin_ratio(state, acc)) == HEALTHY:
                self._at_risk.discard(address)
            else:
                self._at_risk.add(address)

    def _target_name(self, target: Any) -> str:
        if target is None:
            return "?"
        state = self.state
        text = str(target)
        if text.isdigit():
            m = int(text)
            return state.markets[m].name if m < len(state.markets) and state.markets[m].name else f"market {m}"
        col = state.collateral_by_token(to_checksum_address(text)) if Web3.is_address(text) else None
        return col.symbol if col is not None and col.symbol else text

    def _amount_text(self, cand: Candidate) -> str:
        if cand.kind == LIQUIDATE:
            return f"{fmt_wad(cand.amount, 4)} @ {fmt_wad(cand.price_wad)}"
        return f"repay {fmt_units(cand.amount, self.deployment.quote_decimals, 2)} {self.deployment.quote_symbol}"

    def pending(self) -> list[SentTx]:
        """The transactions in flight (newest of each nonce)."""
        return self.sender.in_flight if self.sender is not None else []


def _settle_skip(reason: str | None) -> bool:
    """A ``settle_bad_debt`` revert that means someone else acted first, not an error."""
    text = (reason or "").strip().lower()
    if text.startswith("execution reverted"):
        text = text[len("execution reverted"):].lstrip(": ").strip()
    return text in ("no bad debt", "open positions", "has collateral")


def _risk_slack(state: ProtocolState) -> tuple[int, int, int] | None:
    """Coefficients ``(a, b, c)`` of a cheap test that an account is far from "at risk".

    With ``ratio = req_maint / (maint_health + req_maint)``, "at risk" needs ``ratio >= 0.8``, i.e.
    ``maint_health <= req_maint / 4``. Since ``req_init - req_maint >= k * req_maint`` with
    ``k = min (imf - mmf) / mmf`` over the markets, and ``maint_health - init_health >=
    req_init - req_maint``, an account with ``4 * k * maint_health > maint_health - init_health``
    (plus rounding slack) cannot be at risk. Returns ``(4 * num, den, slack * den)`` with
    ``k = num / den``, or None without markets.
    """
    best: tuple[int, int] | None = None
    for m in state.markets:
        if m.mmf <= 0:
            return None
        num, den = m.imf - m.mmf, m.mmf
        if best is None or num * best[1] < best[0] * den:
            best = (num, den)
    if best is None:
        return None
    num, den = best
    # Each mul_up of a requirement rounds by less than one wei: at most 16 markets x (k + 1) wei.
    return 4 * num, den, 2 * 16 * (num + den)


__all__ = ["Liquidator", "TickReport", "TICK_ERRORS"]


def batch_size(config: BotConfig) -> int:
    """Orders per ``liquidate_many`` transaction: ``max_batch_orders``, as many as its gas limit
    ``max_batch_gas`` holds at ``liquidation_gas_estimate`` each (at least 1)."""
    return max(1, min(config.max_batch_orders, MAX_ORDERS, config.max_batch_gas // config.liquidation_gas_estimate))


def tx_units(chosen: list[Candidate], size: int) -> list[list[Candidate]]:
    """The tick's transactions in sending order, each a list of candidates: with ``size`` 1 one
    per candidate; else the liquidations, in the chosen order (most profitable first, each
    account's steps in order), cut into ``liquidate_many`` batches of ``size``, then each
    settlement on its own."""
    if size <= 1:
        return [[c] for c in chosen]
    orders = [c for c in chosen if c.kind != SETTLE]
    units = [orders[i:i + size] for i in range(0, len(orders), size)]
    return units + [[c] for c in chosen if c.kind == SETTLE]


def batch_request(engine: str, unit: list[Candidate], order_gas: int) -> TxRequest:
    """The ``liquidate_many`` transaction of ``unit``: ``order_gas`` per order. The fee strategy
    prices a tip per gas from a profit over one liquidation's gas estimate; a batch has that gas
    per order, so it is priced on its orders' average profit (a profit-share tip stays the same
    share of the batch's profit as of one liquidation's)."""
    return TxRequest(engine, _batch_data(unit), LIQUIDATE_MANY, unit[0].account, f"{len(unit)} orders",
                     len(unit) * order_gas, sum(c.expected_profit_wei for c in unit) // len(unit),
                     sum(c.profit_usd_wad for c in unit))


def warm_up_encoders() -> None:
    """Encode each call the bot sends once, at start: the ABI codec builds its encoder for a type
    on first use (about 80 ms for ``liquidate_many``'s order tuples), which would otherwise land in
    the tick of the first crash."""
    encode_call(calls.LIQUIDATE_MANY, [(ZERO_ADDRESS, 0, ZERO_ADDRESS, 0)])
    encode_call(calls.LIQUIDATE, ZERO_ADDRESS, 0, 0)
    encode_call(calls.LIQUIDATE_COLLATERAL, ZERO_ADDRESS, ZERO_ADDRESS, 0)
    encode_call(calls.SETTLE_BAD_DEBT, ZERO_ADDRESS)


def _orders(unit: list[Candidate]) -> list[tuple[str, int, str, int]]:
    """The engine's ``LiquidationOrder`` tuples of a batch."""
    return [(c.account, int(c.target), ZERO_ADDRESS, c.amount) if c.kind == LIQUIDATE
            else (c.account, 0, str(c.target), c.amount) for c in unit]


def _batch_data(unit: list[Candidate]) -> str:
    return "0x" + encode_call(calls.LIQUIDATE_MANY, _orders(unit)).hex()


def _executed(flight: Preflight) -> int:
    """``liquidate_many``'s return value (orders executed) in a preflight's result."""
    text = (flight.result or "0x")[2:]
    return int(text[:64], 16) if text else 0
