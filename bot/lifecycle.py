"""A small lifecycle for the bot, in the spirit of pymaker's ``Lifecycle``.

    life = Lifecycle(watcher.poll, poll_interval_s=1.0, max_failed_ticks=20, watchdog=watcher)
    life.on_startup(load_state)
    life.on_block(process_block)          # called with the new bot.scanner.Head
    life.every(30.0, report)              # periodic timer, seconds
    life.on_shutdown(close_store)
    result = life.run()                   # until SIGTERM/SIGINT, stop(), or repeated failures

One thread runs everything (web3's sync providers, eth-tester and the SQLite connection are not
meant to be shared between threads). A block that arrives while the previous one is still being
processed is skipped, and logged: the next poll returns the newest head only, so the bot always
works on the latest state and never queues up stale blocks.

Each tick catches only the errors it expects (``expected_errors``: RPC failures, reverts, refused
transactions by default), logs them on one line and goes on; any other exception is a bug and
stops the loop (shutdown hooks still run). After ``max_failed_ticks`` consecutive failed ticks
the loop stops with reason ``"failures"`` - the silverback-style circuit breaker. While the RPC
circuit breaker is open, the loop waits for its cool-down instead of hammering the node.

SIGTERM and SIGINT set a :class:`threading.Event` the loop waits on, so shutdown is immediate
and clean; a second signal falls back to the default handler.

With ``wake`` (a :class:`threading.Event`, e.g. set by a ``newHeads`` subscription, see
:mod:`bot.ws`), the loop waits on it instead: a notification starts the next tick at once rather
than after ``poll_interval_s``. It is cleared before each tick, so one set during a tick is not
lost; :meth:`Lifecycle.stop` sets it too.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from protocol_model.errors import Revert

from .errors import CircuitOpen, RpcError, TxError

log = logging.getLogger(__name__)

DEFAULT_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (RpcError, Revert, TxError)


class _HasNumber(Protocol):
    number: int


class _Watchdog(Protocol):
    def is_stale(self) -> bool: ...


@dataclass
class _Timer:
    interval_s: float
    fn: Callable[[], Any]
    due: float
    name: str


@dataclass
class RunResult:
    """Why :meth:`Lifecycle.run` returned, and what it did."""

    reason: str                  # "signal", "stopped", "failures", "max_ticks"
    blocks: int = 0              # blocks processed
    skipped: int = 0             # blocks skipped because they arrived during processing
    failed_ticks: int = 0
    errors: list[str] = field(default_factory=list)  # the last few error lines

    @property
    def ok(self) -> bool:
        return self.reason != "failures"


class Lifecycle:
    """Startup hooks, on-block callbacks, timers, watchdog and clean shutdown around one loop."""

    def __init__(
        self,
        head_source: Callable[[], _HasNumber | None],
        *,
        poll_interval_s: float = 1.0,
        max_failed_ticks: int = 20,
        expected_errors: tuple[type[BaseException], ...] = DEFAULT_EXPECTED_ERRORS,
        watchdog: _Watchdog | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_event: threading.Event | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        self._head_source = head_source
        self.poll_interval_s = poll_interval_s
        self.max_failed_ticks = max_failed_ticks
        self.expected_errors = expected_errors
        self.watchdog = watchdog
        self._clock = clock
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.wake = wake
        self._startup: list[Callable[[], Any]] = []
        self._block: list[Callable[[Any], Any]] = []
        self._shutdown: list[Callable[[], Any]] = []
        self._stale: list[Callable[[], Any]] = []
        self._timers: list[_Timer] = []
        self._stop_reason: str | None = None
        self._last_block: int | None = None
        self._consecutive_failures = 0
        self._was_stale = False
        self._previous_handlers: dict[int, Any] = {}
        self.result = RunResult("not started")

    # registration ----------------------------------------------------------------
    def on_startup(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        self._startup.append(fn)
        return fn

    def on_block(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        self._block.append(fn)
        return fn

    def on_shutdown(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        self._shutdown.append(fn)
        return fn

    def on_stale(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Called once each time the watchdog reports the head stale."""
        self._stale.append(fn)
        return fn

    def every(self, interval_s: float, fn: Callable[[], Any], name: str | None = None) -> None:
        """Run ``fn`` every ``interval_s`` seconds (first run one interval after start)."""
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._timers.append(_Timer(interval_s, fn, 0.0, name or getattr(fn, "__name__", "timer")))

    # control -----------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to finish its current step and shut down."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self.stop_event.set()
        if self.wake is not None:
            self.wake.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def install_signal_handlers(self) -> bool:
        """Stop cleanly on SIGTERM and SIGINT; only possible from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        return True

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.warning("received %s: shutting down after the current step", signal.Signals(signum).name)
        self.stop("signal")
        # A second signal gets the default behaviour (e.g. a second Ctrl-C interrupts at once).
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)

    # the loop ------------------------------------------------------------------------
    def run(self, max_ticks: int | None = None, install_signals: bool = True) -> RunResult:
        """Run until stopped; returns a :class:`RunResult`. Startup errors propagate."""
        self.result = RunResult("running")
        self._stop_reason = None
        self._consecutive_failures = 0
        self.stop_event.clear()
        if install_signals:
            self.install_signal_handlers()
        try:
            for fn in self._startup:
                fn()
            now = self._clock()
            for timer in self._timers:
                timer.due = now + timer.interval_s
            ticks = 0
            while not self.stop_event.is_set():
                if self.wake is not None:
                    self.wake.clear()
                wait = self._tick()
                ticks += 1
                if max_ticks is not None and ticks >= max_ticks:
                    self.stop("max_ticks")
                    break
                if self.stop_event.is_set():
                    break
                self._wait(wait)
            self.result.reason = self._stop_reason or "stopped"
        finally:
            self._run_shutdown()
            self._restore_signal_handlers()
        log.info("lifecycle ended (%s): %d block(s) processed, %d skipped, %d failed tick(s)",
                 self.result.reason, self.result.blocks, self.result.skipped, self.result.failed_ticks)
        return self.result

    def _wait(self, seconds: float) -> None:
        """Sleep until the next tick: ``seconds``, or less when stopped or woken."""
        if self.wake is None:
            self.stop_event.wait(seconds)
        else:
            self.wake.wait(seconds)

    def _tick(self) -> float:
        """One poll: head, block callbacks, timers, watchdog. Returns how long to wait next."""
        wait = self.poll_interval_s
        failed = False
        try:
            head = self._head_source()
            if head is not None:
                self._process(head)
        except self.expected_errors as exc:
            failed = True
            self._failure(exc)
            if isinstance(exc, CircuitOpen):
                wait = max(wait, min(exc.retry_in_s, 60.0))
        now = self._clock()
        for timer in self._timers:
            if now >= timer.due and not self.stop_event.is_set():
                timer.due = now + timer.interval_s
                try:
                    timer.fn()
                except self.expected_errors as exc:
                    failed = True
                    self._failure(exc, where=f"timer {timer.name}")
        if not failed:
            self._consecutive_failures = 0
        self._check_watchdog()
        if self._consecutive_failures >= self.max_failed_ticks:
            log.error("stopping after %d consecutive failed ticks", self._consecutive_failures)
            self.stop("failures")
        return wait

    def _process(self, head: _HasNumber) -> None:
        number = int(head.number)
        if self._last_block is not None and number > self._last_block + 1:
            skipped = number - self._last_block - 1
            self.result.skipped += skipped
            log.info("skipped %d block(s) %d..%d that arrived while block %d was being processed",
                     skipped, self._last_block + 1, number - 1, self._last_block)
        self._last_block = number
        for fn in self._block:
            if self.stop_event.is_set():
                return
            fn(head)
        self.result.blocks += 1

    def _failure(self, exc: BaseException, where: str = "tick") -> None:
        self._consecutive_failures += 1
        self.result.failed_ticks += 1
        line = f"{where} failed ({type(exc).__name__}): {exc}"
        self.result.errors = (self.result.errors + [line])[-10:]
        log.warning("%s [%d/%d consecutive]", line, self._consecutive_failures, self.max_failed_ticks)

    def _check_watchdog(self) -> None:
        if self.watchdog is None:
            return
        stale = self.watchdog.is_stale()
        if stale and not self._was_stale:
            for fn in self._stale:
                try:
                    fn()
                except self.expected_errors as exc:
                    self._failure(exc, where="stale-head hook")
        self._was_stale = stale

    def _run_shutdown(self) -> None:
        for fn in self._shutdown:
            try:
                fn()
            except self.expected_errors as exc:
                log.warning("shutdown hook %s failed: %s", getattr(fn, "__name__", fn), exc)
