"""LogScanner, HeadWatcher and reorg detection against real engine events on the in-process chain.

Provider limits are reproduced by a layer right above the provider that refuses ``eth_getLogs``
over more than N blocks with the error shapes real providers use; the chain and its logs are real.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from web3 import Web3
from web3.middleware import Web3Middleware

from bot.errors import LogRangeError, StaleHead
from bot.rpc import CountingRpc
from bot.scanner import HeadWatcher, find_fork_point
from protocol_model.logscan import LogScanner
from bot.store import Store

WAD = 10**18

# (error object, or None for an HTTP 413) as providers send them
PROVIDER_LIMIT_ERRORS = {
    "infura": {"code": -32005, "message": "query returned more than 10000 results. Try with this block range [0x1, 0x4]."},
    "alchemy": {"code": -32602, "message": "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range"},
    "quicknode": {"code": -32614, "message": "eth_getLogs is limited to a 4 range"},
    "cloudflare": {"code": -32047, "message": "Exceeded max range limit for eth_getLogs: 4"},
    "geth-timeout": {"code": -32000, "message": "query timeout exceeded"},
    "http-413": None,
}


class RangeLimit:
    """Refuse eth_getLogs over more than ``max_blocks`` blocks; record every accepted range."""

    def __init__(self, w3: Web3, max_blocks: int, error: dict[str, Any] | None, name: str = "range_limit") -> None:
        self.max_blocks = max_blocks
        self.error = error
        self.accepted: list[tuple[int, int]] = []
        self.refused = 0
        limit = self

        class Layer(Web3Middleware):
            def wrap_make_request(self, make_request):
                def middleware(method, params):
                    if method == "eth_getLogs":
                        lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
                        if hi - lo + 1 > limit.max_blocks:
                            limit.refused += 1
                            if limit.error is None:
                                response = requests.Response()
                                response.status_code = 413
                                raise requests.HTTPError("413 Request Entity Too Large", response=response)
                            return {"jsonrpc": "2.0", "id": 1, "error": limit.error}
                        limit.accepted.append((lo, hi))
                    return make_request(method, params)
                return middleware

        w3.middleware_onion.inject(Layer, name=name, layer=0)


@pytest.fixture
def bot_w3(w3):
    return Web3(w3.provider)


@pytest.fixture
def events(protocol, actors):
    """Deposits and trades by two traders (4 engine events over 8 blocks, after the deployment's)."""
    start = protocol.w3.eth.block_number + 1
    for actor, amount in ((actors.trader, 10_000), (actors.trader2, 20_000)):
        protocol.deposit(actor, "USDC", protocol.units("USDC", amount))
    protocol.trade(actors.trader, "ETH-PERP", WAD)
    protocol.trade(actors.trader2, "BTC-PERP", -WAD // 10)
    return start, protocol.w3.eth.block_number


def engine_topics(protocol) -> list[list[str]]:
    events = protocol.engine.events
    return [[events.Deposit().topic, events.Trade().topic, events.Liquidation().topic]]


def key(log: Any) -> tuple[int, int, bytes]:
    return int(log["blockNumber"]), int(log["logIndex"]), bytes(log["transactionHash"])


def reference_logs(protocol, lo: int, hi: int) -> list[Any]:
    return protocol.w3.eth.get_logs({"fromBlock": lo, "toBlock": hi, "address": protocol.engine.address,
                                     "topics": engine_topics(protocol)})


def test_scan_returns_every_engine_event_in_order(protocol, events, bot_w3):
    lo, hi = events
    scanner = LogScanner(bot_w3, protocol.engine.address, engine_topics(protocol), start_block=protocol.dep.block)
    logs = scanner.scan(hi)
    expected = reference_logs(protocol, protocol.dep.block, hi)
    assert len(logs) == 4 and [key(x) for x in logs] == [key(x) for x in expected]
    assert [key(x) for x in logs] == sorted(key(x) for x in logs)
    assert scanner.next_block == hi + 1 and scanner.stats.requests == 1
    decoded = [protocol.engine.events.Deposit().process_log(x) for x in logs if x["topics"][0] == logs[0]["topics"][0]]
    assert {d["args"]["account"] for d in decoded} == {protocol.engine.w3.to_checksum_address(a) for a in
                                                        (decoded[0]["args"]["account"], decoded[1]["args"]["account"])}


@pytest.mark.parametrize("provider", list(PROVIDER_LIMIT_ERRORS))
def test_every_provider_limit_shape_is_recognised(provider):
    from bot.rpc import transient_error_response
    from protocol_model.logscan import is_log_range_error

    error = PROVIDER_LIMIT_ERRORS[provider]
    if error is None:
        response = requests.Response()
        response.status_code = 413
        assert is_log_range_error(requests.HTTPError(response=response))
        return
    assert is_log_range_error(error)
    assert transient_error_response("eth_getLogs", error) is None  # shrink, do not retry


@pytest.mark.parametrize("not_a_range", [
    {"code": -32005, "message": "daily request count exceeded, request rate limited"},
    {"code": 429, "message": "Too Many Requests"},
    {"code": 3, "message": "execution reverted: limit exceeded"},
    {"code": -32602, "message": "invalid argument 0: hex string has odd length"},
])
def test_rate_limits_and_reverts_are_not_range_errors(not_a_range):
    from protocol_model.logscan import is_log_range_error

    assert not is_log_range_error(not_a_range)


@pytest.mark.parametrize("provider", ["infura", "http-413"])
def test_adaptive_chunks_shrink_on_provider_limits_and_return_everything(protocol, events, bot_w3, provider):
    lo, hi = events
    rpc = CountingRpc(bot_w3, retries=2, backoff_s=0.0)
    limit = RangeLimit(bot_w3, 4, PROVIDER_LIMIT_ERRORS[provider])
    start = max(protocol.dep.block, lo - 20)  # some blocks before the events, and all of them
    scanner = LogScanner(bot_w3, [protocol.engine.address], engine_topics(protocol),
                         start_block=start, chunk=1000, min_chunk=1, max_chunk=10_000)
    logs = scanner.scan(hi)
    assert [key(x) for x in logs] == [key(x) for x in reference_logs(protocol, start, hi)]
    assert len(logs) == 4
    assert limit.refused > 0 and scanner.stats.shrinks == limit.refused
    assert all(b - a + 1 <= 4 for a, b in limit.accepted)
    covered = sorted(limit.accepted)  # no gap and no overlap: every block asked exactly once
    assert covered[0][0] == start and covered[-1][1] == hi
    assert all(nxt[0] == cur[1] + 1 for cur, nxt in zip(covered, covered[1:]))
    # once learned, the limit is not hit again on every chunk: about log2(1000 / 4) refusals
    assert limit.refused <= 10
    assert rpc.stats().failures == 0  # range refusals are answers: never retried, never trip the breaker


def test_chunk_grows_back_after_successes(protocol, bot_w3):
    hi = protocol.w3.eth.block_number  # the deployment's own blocks and engine events will do
    limit = RangeLimit(bot_w3, 2, PROVIDER_LIMIT_ERRORS["infura"])
    scanner = LogScanner(bot_w3, protocol.engine.address, None, start_block=protocol.dep.block,
                         chunk=8, min_chunk=1, max_chunk=64, grow_after=2, forget_ceiling_after=4)
    scanner.scan(protocol.dep.block + 12)
    assert scanner.chunk <= 2 and limit.refused >= 1
    limit.max_blocks = 10_000  # the provider's load went down
    scanner.scan(hi)
    assert scanner.chunk > 2 and scanner.stats.grows >= 1
    assert scanner.chunk <= 64


def test_smallest_range_refused_is_a_clear_error_and_keeps_the_cursor(protocol, bot_w3):
    lo, hi = protocol.dep.block, protocol.w3.eth.block_number
    limit = RangeLimit(bot_w3, 0, {"code": -32005, "message": "limit exceeded"})
    waits: list[float] = []
    scanner = LogScanner(bot_w3, protocol.engine.address, engine_topics(protocol), start_block=lo, chunk=16,
                         min_range_retries=3, backoff_s=0.5, backoff_max_s=1.5, sleep=waits.append)
    with pytest.raises(LogRangeError) as info:
        scanner.scan(hi)
    assert f"refused even for 1 block(s) at block {lo} after 4 attempts" in str(info.value)
    assert "\n" not in str(info.value)
    assert scanner.next_block == lo  # nothing returned, nothing skipped
    assert waits == [0.5, 1.0, 1.5]   # the one-block request was retried after a growing backoff
    assert limit.refused == 4 + 4      # 16, 8, 4 and 2 blocks refused once each, then 1 block 4 times


def test_a_rate_limit_on_one_block_backs_off_and_retries(protocol, bot_w3):
    """-32005 is both "too many results" and "slow down" (Infura): refused at one block, it is a rate
    limit; the same request goes again after a backoff instead of failing the scan."""
    lo, hi = protocol.dep.block, protocol.w3.eth.block_number
    limit = RangeLimit(bot_w3, 0, {"code": -32005, "message": "limit exceeded"})
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            limit.max_blocks = 10_000   # the provider lets requests through again

    scanner = LogScanner(bot_w3, protocol.engine.address, engine_topics(protocol), start_block=lo, chunk=4,
                         min_range_retries=5, backoff_s=0.25, sleep=sleep)
    logs = scanner.scan(hi)
    assert waits == [0.25, 0.5]
    assert scanner.next_block == hi + 1
    assert logs == sorted(bot_w3.eth.get_logs({"fromBlock": lo, "toBlock": hi, "address": protocol.engine.address,
                                               "topics": engine_topics(protocol)}),
                          key=lambda e: (e["blockNumber"], e["logIndex"]))


def test_other_errors_propagate_unchanged(protocol, bot_w3):
    RangeLimit(bot_w3, 0, {"code": -32601, "message": "the method eth_getLogs does not exist/is not available"})
    scanner = LogScanner(bot_w3, protocol.engine.address, None, start_block=protocol.dep.block)
    with pytest.raises(Exception, match="does not exist") as info:
        scanner.scan(protocol.w3.eth.block_number)
    assert not isinstance(info.value, LogRangeError)


def test_steady_state_costs_one_get_logs_per_new_block(protocol, actors, events, bot_w3):
    lo, hi = events
    rpc = CountingRpc(bot_w3)
    scanner = LogScanner(bot_w3, protocol.engine.address, engine_topics(protocol), start_block=protocol.dep.block)
    scanner.scan(hi)
    before = rpc.stats()
    assert scanner.scan(hi) == []           # nothing new: no request at all
    assert (rpc.stats() - before).total == 0
    protocol.trade(actors.trader2, "BTC-PERP", WAD // 100)
    new_head = protocol.w3.eth.block_number
    logs = scanner.scan(new_head)
    assert [x["blockNumber"] for x in logs] == [new_head]
    assert (rpc.stats() - before).by_method == {"eth_getLogs": 1}


def test_fetch_rereads_a_window_without_moving_the_cursor(protocol, events, bot_w3):
    lo, hi = events
    scanner = LogScanner(bot_w3, protocol.engine.address, engine_topics(protocol), start_block=protocol.dep.block)
    everything = scanner.scan(hi)
    window = scanner.fetch(hi - 12, hi)
    assert window == [x for x in everything if x["blockNumber"] >= hi - 12]
    assert scanner.next_block == hi + 1
    scanner.rewind(hi - 3)
    assert scanner.next_block == hi - 3
    assert [key(x) for x in scanner.scan(hi)] == [key(x) for x in everything if x["blockNumber"] >= hi - 3]


def test_head_watcher_reports_new_heads_and_stale_heads(protocol, actors, bot_w3, tester):
    now = [0.0]
    watcher = HeadWatcher(bot_w3, stale_after_s=30.0, clock=lambda: now[0])
    head = watcher.poll()
    assert head is not None and head.number == protocol.w3.eth.block_number
    assert head.hash.startswith("0x") and len(head.hash) == 66 and head.base_fee_wei is not None
    now[0] = 10.0
    assert watcher.poll() is None and not watcher.is_stale()
    now[0] = 31.0
    assert watcher.is_stale()
    with pytest.raises(StaleHead, match="no new block for 31s"):
        watcher.check()
    tester.mine_blocks(1)
    newer = watcher.poll()
    assert newer is not None and newer.number == head.number + 1 and newer.parent_hash == head.hash
    assert not watcher.is_stale()
    watcher.check()


def test_reorg_is_detected_and_rewound(protocol, actors, bot_w3, tester, tmp_path):
    store = Store(tmp_path / "bot.sqlite3", protocol.dep.chain_id, protocol.engine.address, protocol.dep.block)
    scanner = LogScanner(bot_w3, protocol.engine.address, [[protocol.engine.events.Deposit().topic]],
                         start_block=protocol.dep.block)
    try:
        base = protocol.w3.eth.block_number
        snapshot = tester.take_snapshot()
        protocol.deposit(actors.trader, "USDC", protocol.units("USDC", 100))
        head = protocol.w3.eth.block_number

        def process(to_block: int) -> None:
            logs = scanner.scan(to_block)
            with store.transaction():
                store.add_accounts((Web3.to_checksum_address("0x" + x["topics"][1].hex()[-40:]), x["blockNumber"])
                                   for x in logs)
                for n in range(max(protocol.dep.block, to_block - 11), to_block + 1):
                    store.record_block(n, protocol.w3.eth.get_block(n)["hash"])
                store.mark_processed(to_block, protocol.w3.eth.get_block(to_block)["hash"], keep_blocks=12)

        process(head)
        assert store.accounts() == [actors.trader.address]
        assert find_fork_point(bot_w3, store.block_hashes()) is None  # no reorg

        tester.revert_to_snapshot(snapshot)  # the chain drops the trader's blocks...
        protocol.deposit(actors.trader2, "USDC", protocol.units("USDC", 7))  # ...and grows another branch
        fork = find_fork_point(bot_w3, store.block_hashes())
        assert fork == base

        store.rewind_to(fork)
        scanner.rewind(fork + 1)
        assert store.accounts() == [] and store.last_block == base
        process(protocol.w3.eth.block_number)
        assert store.accounts() == [actors.trader2.address]
    finally:
        store.close()
