"""CountingRpc against the real in-process chain: counting, retries, circuit breaker, metrics, lifecycle.

Faults are injected at the transport (``CountingRpc.inject_faults``) or by a provider-side layer
that answers like a real provider would (rate limits, range limits); the chain itself is real.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import requests
from web3 import Web3
from web3.exceptions import Web3RPCError
from web3.middleware import Web3Middleware

from bot.errors import BotError, CircuitOpen, RpcError
from bot.lifecycle import Lifecycle
from bot.metrics import BotMetrics
from bot.rpc import CircuitBreaker, CountingRpc, is_log_range_error, transient_exception
from bot.scanner import HeadWatcher


class FakeTime:
    """A clock and a sleep that only move when told: backoffs and cool-downs without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def error_layer(w3: Web3, method: str, error: dict[str, Any], times: int) -> list[int]:
    """Below every other layer, answer the next ``times`` requests of ``method`` with ``error``."""
    left = [times]

    class ErrorLayer(Web3Middleware):
        def wrap_make_request(self, make_request):
            def middleware(m, params):
                if m == method and left[0] > 0:
                    left[0] -= 1
                    return {"jsonrpc": "2.0", "id": 1, "error": error}
                return make_request(m, params)
            return middleware

    w3.middleware_onion.inject(ErrorLayer, name=f"test_errors_{method}", layer=0)
    return left


@pytest.fixture
def bot_w3(w3):
    """A second Web3 on the same in-process chain, so middleware never leaks into other tests."""
    return Web3(w3.provider)


@pytest.fixture
def fake_time():
    return FakeTime()


@pytest.fixture
def rpc(bot_w3, fake_time):
    r = CountingRpc(bot_w3, retries=3, backoff_s=0.5, backoff_max_s=1.5, breaker_threshold=5,
                    breaker_cooldown_s=30.0, clock=fake_time.clock, sleep=fake_time.sleep)
    yield r
    r.uninstall()


def test_counts_every_request_by_method(protocol, actors, bot_w3, rpc):
    engine = bot_w3.eth.contract(address=protocol.engine.address, abi=protocol.engine.abi)
    bot_w3.eth.block_number
    bot_w3.eth.get_block("latest")
    # with a "from": without one, eth-tester's own provider layer asks eth_accounts to fill it in
    engine.functions.health(actors.trader.address).call({"from": actors.liquidator.address})
    engine.functions.health(actors.trader2.address).call({"from": actors.liquidator.address})
    stats = rpc.stats()
    assert stats.calls("eth_blockNumber") == 1
    assert stats.calls("eth_getBlockByNumber") == 1
    assert stats.calls("eth_call") == 2
    assert stats.calls("eth_chainId") == 1 and stats.cached >= 1  # web3 asks before each call; the node once
    assert set(stats.by_method) == {"eth_blockNumber", "eth_getBlockByNumber", "eth_call", "eth_chainId"}
    assert stats.total == 5 == rpc.total  # cached answers are not requests
    before = rpc.stats()
    bot_w3.eth.block_number
    assert (rpc.stats() - before).by_method == {"eth_blockNumber": 1}


def test_retry_succeeds_after_k_transient_failures(protocol, actors, bot_w3, rpc, fake_time):
    engine = bot_w3.eth.contract(address=protocol.engine.address, abi=protocol.engine.abi)
    bot_w3.eth.chain_id
    rpc.inject_faults(3, methods=["eth_call"])
    assert engine.functions.health(actors.trader.address).call({"from": actors.liquidator.address}) == [0, 0, 0]
    stats = rpc.stats()
    assert stats.calls("eth_call") == 4 and stats.failures_by_method == {"eth_call": 3} and stats.retries == 3
    assert fake_time.sleeps == [0.5, 1.0, 1.5]  # exponential, capped at backoff_max_s
    assert rpc.breaker.state == CircuitBreaker.CLOSED and rpc.breaker.consecutive_failures == 0
    rpc.inject_faults(1, methods=["eth_getBalance"])  # faults for another method do not touch this one
    assert bot_w3.eth.block_number == protocol.w3.eth.block_number
    assert rpc.pending_faults == 1


def test_exhausted_retries_raise_one_line_rpc_error(bot_w3, rpc, fake_time):
    rpc.inject_faults(4)
    with pytest.raises(RpcError) as info:
        bot_w3.eth.block_number
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, BotError)
    assert str(info.value) == ("eth_blockNumber failed after 4 attempt(s): connection error (InjectedFault); "
                               "check the node or raise XMARGIN_RPC_RETRIES")
    assert rpc.count("eth_blockNumber") == 4
    assert bot_w3.eth.block_number >= 0  # the next request goes through


def test_reverts_and_range_limits_are_answers_not_failures(protocol, actors, bot_w3, rpc):
    engine = bot_w3.eth.contract(address=protocol.engine.address, abi=protocol.engine.abi)
    bot_w3.eth.chain_id
    with pytest.raises(Exception, match="healthy"):
        engine.functions.liquidate(actors.trader.address, 0, 1).call({"from": actors.liquidator.address})
    assert rpc.count("eth_call") == 1 and rpc.stats().failures == 0  # a revert is never retried
    error_layer(bot_w3, "eth_getLogs", {"code": -32005, "message": "query returned more than 10000 results"}, 1)
    with pytest.raises(Web3RPCError) as info:
        bot_w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest"})
    assert is_log_range_error(info.value)
    assert rpc.count("eth_getLogs") == 1 and rpc.stats().failures == 0  # for the scanner to shrink, not a retry


def test_rate_limit_error_responses_are_retried(bot_w3, rpc, fake_time):
    left = error_layer(bot_w3, "eth_blockNumber", {"code": -32005, "message": "daily request count exceeded, request rate limited"}, 2)
    assert bot_w3.eth.block_number >= 0
    assert left == [0] and rpc.count("eth_blockNumber") == 3 and rpc.stats().retries == 2
    error_layer(bot_w3, "eth_getBalance", {"code": 429, "message": "Too Many Requests"}, 1)
    assert bot_w3.eth.get_balance("0x" + "00" * 20) >= 0
    assert rpc.count("eth_getBalance") == 2


def test_circuit_breaker_opens_after_n_failures_and_recovers(bot_w3, fake_time):
    rpc = CountingRpc(bot_w3, retries=0, breaker_threshold=3, breaker_cooldown_s=30.0,
                      clock=fake_time.clock, sleep=fake_time.sleep)
    metrics = BotMetrics()
    metrics.bind_rpc(rpc)
    try:
        rpc.inject_faults(100)
        for _ in range(2):
            with pytest.raises(RpcError) as info:
                bot_w3.eth.block_number
            assert not isinstance(info.value, CircuitOpen)
        with pytest.raises(CircuitOpen):  # the third failure opens it
            bot_w3.eth.block_number
        assert rpc.breaker.state == CircuitBreaker.OPEN and metrics.value("xmargin_circuit_open") == 1
        sent = rpc.total
        with pytest.raises(CircuitOpen) as info:
            bot_w3.eth.block_number
        assert rpc.total == sent and rpc.stats().rejected == 1  # refused without touching the node
        assert 29.0 < info.value.retry_in_s <= 30.0
        fake_time.now += 31
        assert rpc.breaker.state == CircuitBreaker.HALF_OPEN
        with pytest.raises(CircuitOpen):  # the trial request fails: open again
            bot_w3.eth.block_number
        assert rpc.breaker.state == CircuitBreaker.OPEN and rpc.breaker.times_opened == 2
        rpc.clear_faults()
        fake_time.now += 31
        assert bot_w3.eth.block_number >= 0  # the trial succeeds: closed
        assert rpc.breaker.state == CircuitBreaker.CLOSED and metrics.value("xmargin_circuit_open") == 0
        assert bot_w3.eth.get_block("latest")["number"] >= 0
        assert metrics.value("xmargin_rpc_calls_total", {"method": "eth_blockNumber"}) == rpc.count("eth_blockNumber")
        assert metrics.value("xmargin_rpc_failures_total", {"method": "eth_blockNumber"}) == 4
    finally:
        rpc.uninstall()


def test_uninstall_removes_the_layer(bot_w3):
    rpc = CountingRpc(bot_w3)
    rpc.uninstall()
    bot_w3.eth.block_number
    assert rpc.total == 0


def test_transport_error_classification():
    def http_error(status: int) -> requests.HTTPError:
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(response=response)

    assert transient_exception(http_error(429)) == "HTTP 429"
    assert transient_exception(http_error(503)) == "HTTP 503"
    assert transient_exception(http_error(413)) is None   # too large: an answer, not an outage
    assert transient_exception(http_error(400)) is None
    assert transient_exception(requests.ReadTimeout()) == "timeout"
    assert transient_exception(requests.ConnectionError()) == "connection error (ConnectionError)"
    assert transient_exception(ValueError("execution reverted")) is None
    assert is_log_range_error(http_error(413))


# ---------------------------------------------------------------------- lifecycle on top of the RPC


def test_lifecycle_stops_after_repeated_rpc_failures(bot_w3, fake_time):
    rpc = CountingRpc(bot_w3, retries=1, breaker_threshold=1000, clock=fake_time.clock, sleep=fake_time.sleep)
    watcher = HeadWatcher(bot_w3, stale_after_s=60.0, clock=fake_time.clock)
    life = Lifecycle(watcher.poll, poll_interval_s=0.0, max_failed_ticks=3, watchdog=watcher)
    seen: list[int] = []
    shut: list[bool] = []
    life.on_block(lambda head: seen.append(head.number))
    life.on_shutdown(lambda: shut.append(True))
    try:
        rpc.inject_faults(100, methods=["eth_getBlockByNumber"])
        result = life.run(max_ticks=50, install_signals=False)
        assert result.reason == "failures" and not result.ok
        assert result.failed_ticks == 3 and seen == [] and shut == [True]
        assert "RpcError" in result.errors[-1]
        rpc.clear_faults()
        result = life.run(max_ticks=2, install_signals=False)
        assert result.reason == "max_ticks" and len(seen) == 1  # the same head is processed once
    finally:
        rpc.uninstall()


def test_lifecycle_skips_blocks_that_arrived_during_processing_and_runs_timers():
    heads = iter([1, 2, 5, 5, 6])

    class H:
        def __init__(self, n: int) -> None:
            self.number = n

    def source():
        n = next(heads, None)
        if n is None:
            life.stop("done")
            return None
        return H(n)

    life = Lifecycle(source, poll_interval_s=0.0)
    seen: list[int] = []
    ticks: list[int] = []
    life.on_block(lambda head: seen.append(head.number))
    life.every(1e-9, lambda: ticks.append(1))
    result = life.run(install_signals=False)
    assert seen == [1, 2, 5, 5, 6]
    assert result.skipped == 2 and result.reason == "done" and ticks


def test_lifecycle_unexpected_errors_propagate_after_shutdown():
    life = Lifecycle(lambda: type("H", (), {"number": 1})(), poll_interval_s=0.0)
    shut: list[bool] = []
    life.on_block(lambda head: 1 / 0)
    life.on_shutdown(lambda: shut.append(True))
    with pytest.raises(ZeroDivisionError):
        life.run(install_signals=False)
    assert shut == [True]


def test_lifecycle_stops_cleanly_on_sigterm(bot_w3):
    watcher = HeadWatcher(bot_w3)
    life = Lifecycle(watcher.poll, poll_interval_s=0.01)
    shut: list[bool] = []
    life.on_shutdown(lambda: shut.append(True))
    life.every(0.02, lambda: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)
    result = life.run(max_ticks=10_000)
    assert result.reason == "signal" and shut == [True]
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored


def test_batches_are_counted_retried_and_fail_as_one_request(fake_time):
    """A JSON-RPC batch (the bot's preflights and raw transactions) on a chain that can batch: an
    injected fault for any member fails the whole batch, which is retried with the same backoff."""
    from devnode.provider import DevChainProvider

    w3 = Web3(DevChainProvider())
    rpc = CountingRpc(w3, retries=3, backoff_s=0.5, backoff_max_s=1.5, breaker_threshold=10,
                      breaker_cooldown_s=30.0, clock=fake_time.clock, sleep=fake_time.sleep)
    accounts = w3.eth.accounts
    rpc.reset_counts()

    def batch() -> list[Any]:
        with w3.batch_requests() as b:
            for a in accounts[:3]:
                b.add(w3.eth.get_balance(a))
            b.add(w3.eth.get_block("latest"))
            return b.execute()

    rpc.inject_faults(2, methods=["eth_getBlockByNumber"])
    results = batch()
    assert results[:3] == [w3.eth.get_balance(a) for a in accounts[:3]] and results[3].number == 0
    stats = rpc.stats()
    assert stats.calls("eth_getBalance") == 3 * 3 + 3  # three attempts of three members, then the check
    assert stats.calls("eth_getBlockByNumber") == 3
    assert stats.failures_by_method == {"eth_getBalance": 2, "eth_getBlockByNumber": 2} and stats.retries == 2
    assert fake_time.sleeps == [0.5, 1.0]
    assert rpc.breaker.state == CircuitBreaker.CLOSED and rpc.pending_faults == 0

    rpc.inject_faults(4, methods=["eth_getBalance"])
    with pytest.raises(RpcError) as info:
        batch()
    assert str(info.value) == ("batch of 4 requests failed after 4 attempt(s): connection error (InjectedFault); "
                               "check the node or raise XMARGIN_RPC_RETRIES")
    assert batch()[3].number == 0  # the next batch goes through
    rpc.uninstall()
