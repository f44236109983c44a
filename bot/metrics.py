"""Prometheus metrics of the bot, in a registry of its own.

:class:`BotMetrics` owns a dedicated :class:`prometheus_client.CollectorRegistry` (never the
process-global one, so tests and several bots in one process do not collide) with:

========================================  =========  ==============================================
name                                      type       meaning
========================================  =========  ==============================================
``xmargin_liquidations_won_total``        counter    our liquidations mined successfully
``xmargin_liquidations_lost_total``       counter    liquidations a rival got first
``xmargin_profit_usd_total``              counter    keeper rewards earned, USD
``xmargin_gas_spent_wei_total``           counter    gas paid by our transactions, wei
``xmargin_accounts_tracked``              gauge      accounts discovered from the engine's events
``xmargin_accounts_at_risk``              gauge      accounts close to (or past) liquidation
``xmargin_rpc_calls_total{method}``       counter    JSON-RPC requests sent, by method
``xmargin_rpc_failures_total{method}``    counter    transient RPC failures, by method
``xmargin_detection_latency_seconds``     histogram  from a block's arrival to our liquidation sent
``xmargin_tx_replacements_total``         counter    stuck transactions replaced with higher fees
``xmargin_circuit_open``                  gauge      1 while the RPC circuit breaker is open
``xmargin_last_block``                    gauge      last block processed
========================================  =========  ==============================================

Prometheus samples are floats by nature; exact amounts stay integers in the store, and only
their conversion for display happens here. The RPC counters are read from the
:class:`~bot.rpc.CountingRpc` at scrape time, so they are exact and cost nothing per request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol_model.wad import WAD

if TYPE_CHECKING:
    from .rpc import CountingRpc

log = logging.getLogger(__name__)

NAMESPACE = "xmargin"
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


class _RpcCollector(Collector):
    """Exposes a CountingRpc's counters at scrape time."""

    def __init__(self, rpc: "CountingRpc") -> None:
        self._rpc = rpc

    def collect(self) -> Iterator[Metric]:
        stats = self._rpc.stats()
        calls = CounterMetricFamily(f"{NAMESPACE}_rpc_calls", "JSON-RPC requests sent to the node, by method",
                                    labels=["method"])
        for method, count in sorted(stats.by_method.items()):
            calls.add_metric([method], count)
        yield calls
        failures = CounterMetricFamily(f"{NAMESPACE}_rpc_failures", "transient JSON-RPC failures, by method",
                                       labels=["method"])
        for method, count in sorted(stats.failures_by_method.items()):
            failures.add_metric([method], count)
        yield failures


class BotMetrics:
    """The bot's metrics; every update method takes exact integers where money is involved."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.liquidations_won = Counter("liquidations_won", "liquidations of ours that were mined successfully",
                                        namespace=NAMESPACE, registry=r)
        self.liquidations_lost = Counter("liquidations_lost", "liquidations another liquidator got first",
                                         namespace=NAMESPACE, registry=r)
        self.profit_usd = Counter("profit_usd", "keeper rewards earned, USD", namespace=NAMESPACE, registry=r)
        self.gas_spent_wei = Counter("gas_spent_wei", "gas paid by the bot's transactions, wei",
                                     namespace=NAMESPACE, registry=r)
        self.accounts_tracked = Gauge("accounts_tracked", "accounts discovered from the engine's events",
                                      namespace=NAMESPACE, registry=r)
        self.accounts_at_risk = Gauge("accounts_at_risk", "accounts close to or past liquidation",
                                      namespace=NAMESPACE, registry=r)
        self.detection_latency = Histogram("detection_latency_seconds",
                                           "seconds from a block's arrival to the liquidation it triggered being sent",
                                           namespace=NAMESPACE, registry=r, buckets=LATENCY_BUCKETS_S)
        self.tx_replacements = Counter("tx_replacements", "stuck transactions replaced with higher fees",
                                       namespace=NAMESPACE, registry=r)
        self.circuit_open = Gauge("circuit_open", "1 while the RPC circuit breaker is open", namespace=NAMESPACE,
                                  registry=r)
        self.last_block = Gauge("last_block", "last block processed", namespace=NAMESPACE, registry=r)
        self._rpc_collector: _RpcCollector | None = None

    # wiring ---------------------------------------------------------------------
    def bind_rpc(self, rpc: "CountingRpc") -> None:
        """Expose ``rpc``'s request counters and follow its circuit breaker's state."""
        if self._rpc_collector is not None:
            self.registry.unregister(self._rpc_collector)
        self._rpc_collector = _RpcCollector(rpc)
        self.registry.register(self._rpc_collector)
        rpc.breaker.add_listener(lambda state: self.circuit_open.set(1 if state == "open" else 0))

    # updates --------------------------------------------------------------------
    def won(self, reward_usd_wad: int, gas_cost_wei: int) -> None:
        self.liquidations_won.inc()
        self.add_profit(reward_usd_wad)
        self.add_gas(gas_cost_wei)

    def lost(self, gas_cost_wei: int = 0) -> None:
        self.liquidations_lost.inc()
        self.add_gas(gas_cost_wei)

    def add_profit(self, usd_wad: int) -> None:
        if usd_wad > 0:
            self.profit_usd.inc(usd_wad / WAD)  # display only; exact sums live in the store

    def add_gas(self, wei: int) -> None:
        if wei > 0:
            self.gas_spent_wei.inc(wei)

    def set_accounts(self, tracked: int, at_risk: int | None = None) -> None:
        self.accounts_tracked.set(tracked)
        if at_risk is not None:
            self.accounts_at_risk.set(at_risk)

    def observe_latency(self, seconds: float) -> None:
        self.detection_latency.observe(max(0.0, seconds))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's current value by full name (e.g. ``"xmargin_liquidations_won_total"``)."""
        return self.registry.get_sample_value(name, labels or {})


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "127.0.0.1") -> Any:
    """Serve ``registry`` on ``http://addr:port/metrics`` from a daemon thread; returns the server
    (call ``.shutdown()`` on it to stop)."""
    result = start_http_server(port, addr=addr, registry=registry)
    server = result[0] if isinstance(result, tuple) else result
    log.info("Prometheus metrics on http://%s:%d/metrics", addr, port)
    return server
