"""The bot on WebSocket subscriptions (bot/ws.py), on both local nodes (the dev node's WebSocket,
devnode/ws.py, and anvil's), with HTTP polling as the fallback.

The bot runs its real loop (:meth:`Liquidator.run`) in a thread with a long ``poll_interval_s``
(5 s): a head it processes within a second can only have been pushed. The test mines blocks one by
one and checks that each one is processed, that a crash is liquidated as by the polling bot (every
account a position liquidation pays for, within two blocks), that empty blocks cost no
``eth_getLogs`` (the header's bloom proves them empty), and that when the WebSocket is absent or
dies mid-run (a TCP relay in front of it is killed) the bot says so and goes on by polling, then
goes back to pushed heads when the WebSocket returns.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from bot.config import BotConfig
from bot.liquidator import Liquidator
from protocol_model.deploy import Deployment
from protocol_model.loader import load_accounts, load_protocol
from protocol_model.logs import decode_logs, engine_topic

from nodes import LocalNode, seeded_node

GWEI = 10**9
TRADERS, SEED = 16, 101
CRASH_PCT = 85
SLOW_POLL_S = 5.0          # the bot's poll interval: a head processed sooner was pushed


@dataclass
class Setup:
    node: LocalNode
    w3: Web3
    dep: Deployment
    owner: str
    traders: list[str]
    liquidator_key: str


@pytest.fixture(scope="module")
def setup(node_kind: str) -> Iterator[Setup]:
    with seeded_node(node_kind, TRADERS, SEED) as c:
        yield Setup(c.node, c.w3, c.dep, c.owner, c.traders, c.keeper_key)


@pytest.fixture
def s(setup: Setup) -> Iterator[Setup]:
    with setup.node.restored():
        yield setup


def set_prices(s: Setup, pct: int) -> None:
    for asset, base in (("ETH", 2_000), ("BTC", 60_000)):
        s.dep.feed_contract(asset).functions.set_answer(base * 10**8 * pct // 100).transact(
            {"from": s.owner, "gas": 300_000, "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": GWEI})


def make_bot(s: Setup, tmp_path: Path, ws_url: str, poll_interval_s: float = SLOW_POLL_S) -> Liquidator:
    cfg = BotConfig.from_env(environ={}, db_path=str(tmp_path / "bot.sqlite3"), rpc_url=s.node.url, ws_url=ws_url,
                             poll_interval_s=poll_interval_s, rpc_backoff_s=0.0, rpc_backoff_max_s=0.0,
                             min_profit_usd_wad=10**18, lookback_blocks=4)
    return Liquidator(Web3(HTTPProvider(s.node.url)), s.dep, Account.from_key(s.liquidator_key), cfg,
                      collateral_liquidation=False)


class Running:
    """The bot's own loop in a thread; stopped (and joined) on exit."""

    def __init__(self, bot: Liquidator) -> None:
        self.bot = bot
        self.thread = threading.Thread(target=lambda: bot.run(install_signals=False), name="bot-loop", daemon=True)

    def __enter__(self) -> "Running":
        self.thread.start()
        wait_for(lambda: self.bot._started and self.bot._processed_once, 60, "the bot to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.bot.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()

    def processed(self, block: int, within_s: float) -> float:
        """Seconds until the bot processed ``block`` (fails after ``within_s``)."""
        t0 = time.monotonic()
        wait_for(lambda: (self.bot._last_head or 0) >= block, within_s, f"block {block} processed")
        return time.monotonic() - t0


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def healths(s: Setup, block: int) -> dict[str, Any]:
    state = load_protocol(s.w3, s.dep, block)
    return {a: h for a, h in load_accounts(s.w3, s.dep, state, s.traders, block_identifier=block).items()
            if a != s.dep.engine}


def liquidated(s: Setup, from_block: int) -> set[str]:
    logs = s.w3.eth.get_logs({"fromBlock": from_block, "toBlock": s.w3.eth.block_number, "address": s.dep.engine,
                              "topics": [[engine_topic("Liquidation")]]})
    return {ev.args["account"] for ev in decode_logs(logs, s.dep.engine)}


def crash_scenario(s: Setup, tmp_path: Path, ws_url: str, poll_interval_s: float) -> tuple[set[str], float]:
    """Warm up, crash, two more blocks, all driven by the bot's own loop; the accounts liquidated,
    and the longest time from a block mined to the bot having processed it."""
    folder = tmp_path / ws_url.replace("/", "_")
    folder.mkdir(exist_ok=True)
    bot = make_bot(s, folder, ws_url, poll_interval_s)
    set_prices(s, 100)
    s.node.mine()
    slowest = 0.0
    with Running(bot) as run:
        assert bot.watcher.pushed == (ws_url != "off")
        set_prices(s, CRASH_PCT)
        crash = s.node.mine()
        slowest = max(slowest, run.processed(crash, within_s=10.0))
        wait_for(lambda: s.node.pending_count() > 0, 10.0, "liquidations sent")
        for _ in range(2):
            block = s.node.mine()
            slowest = max(slowest, run.processed(block, within_s=10.0))
        liquidatable = {a for a, h in healths(s, crash).items() if h[2] < 0}
        done = liquidated(s, crash)
        assert done and done <= liquidatable
        assert bot.store.totals().won == len(done)
    return done, slowest


def test_pushed_heads_liquidate_as_polling_does(s: Setup, tmp_path: Path) -> None:
    snap = s.node.snapshot()
    polled, _ = crash_scenario(s, tmp_path, "off", 0.05)
    s.node.revert(snap)
    s.node.clear_mempool()
    # With a 5 s poll interval, only pushed heads can be processed within a second.
    pushed, slowest = crash_scenario(s, tmp_path, "auto", SLOW_POLL_S)
    assert pushed == polled
    assert slowest < 1.0


def test_every_pushed_head_is_processed_and_empty_blocks_cost_no_requests(s: Setup, tmp_path: Path) -> None:
    bot = make_bot(s, tmp_path, "auto")
    set_prices(s, 100)
    s.node.mine()
    with Running(bot) as run:
        assert bot.watcher.pushed, "auto found no WebSocket on the node's HTTP port"
        before = bot.rpc.stats()
        # Empty blocks: each processed at once (not after the 5 s poll interval), without a head
        # poll nor an eth_getLogs (their bloom rules out any engine or feed log).
        first = s.w3.eth.block_number + 1
        seen: list[int] = []
        for _ in range(5):
            block = s.node.mine()
            assert run.processed(block, within_s=2.0) < 2.0
            seen.append(bot._last_head or 0)
        assert seen == list(range(first, first + 5))
        calls = (bot.rpc.stats() - before).by_method
        assert calls.get("eth_getLogs", 0) == 0 and calls.get("eth_getBlockByNumber", 0) <= 1, calls
        assert bot.mirror is not None and bot.mirror.bloom_skips >= 5
        # A block with a feed log is read with one eth_getLogs, and its price applied.
        set_prices(s, 90)
        block = s.node.mine()
        run.processed(block, within_s=2.0)
        calls = (bot.rpc.stats() - before).by_method
        assert calls.get("eth_getLogs", 0) == 1, calls
        eth = s.dep.feeds["ETH"]
        assert bot.state.feeds[Web3.to_checksum_address(eth)].answer == 2_000 * 10**8 * 90 // 100
        assert bot._lifecycle is not None and bot._lifecycle.result.skipped == 0
        # The backrunner reads the pool through the same WebSocket (newPendingTransactions).
        from bot.ws import WsPendingSource

        wait_for(lambda: bot.backrun is not None, 5.0, "the backrunner set up")
        assert isinstance(bot.backrun.source, WsPendingSource) and bot.backrun.source.sub.alive


class Relay:
    """A TCP relay 127.0.0.1:port -> the node, to cut the bot's WebSocket as a network would."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), name="relay-pipe", daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def kill(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() (a bare close would not)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            socks, self.socks = self.socks, []
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def test_the_bot_polls_when_the_websocket_is_absent_or_dies(s: Setup, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    host, port = s.node.url.removeprefix("http://").split(":")
    relay = Relay((host, int(port)))
    bot = make_bot(s, tmp_path, f"ws://127.0.0.1:{relay.port}", poll_interval_s=0.1)
    set_prices(s, 100)
    s.node.mine()
    try:
        with Running(bot) as run:
            assert bot.watcher.pushed
            run.processed(s.node.mine(), within_s=2.0)
            relay.kill()                                       # the WebSocket dies mid-run
            wait_for(lambda: not bot.watcher.pushed, 5.0, "the loss noticed")
            for _ in range(3):                                 # heads still processed: polled over HTTP
                run.processed(s.node.mine(), within_s=3.0)
            # one warning per subscription lost (the backrunner's newPendingTransactions says its own)
            lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
            lost = [m for m in lost if "newHeads polled over HTTP" in m]
            assert len(lost) == 1, lost
            relay = Relay((host, int(port)), port=relay.port)   # back on the same port: reconnects
            wait_for(lambda: bot.watcher.pushed, 15.0, "the reconnection")
            assert any("is back" in r.getMessage() for r in caplog.records)
            run.processed(s.node.mine(), within_s=2.0)
    finally:
        relay.kill()


def test_an_absent_websocket_means_polling_said_once(s: Setup, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                             # nothing listens there any more
    bot = make_bot(s, tmp_path, f"ws://127.0.0.1:{port}", poll_interval_s=0.1)
    set_prices(s, 100)
    s.node.mine()
    with Running(bot) as run:
        assert not bot.watcher.pushed
        for _ in range(2):
            run.processed(s.node.mine(), within_s=3.0)
    said = [r.getMessage() for r in caplog.records if "no WebSocket at" in r.getMessage()]
    assert len(said) == 1 and "polling over HTTP" in said[0]


def test_ws_off_never_connects(s: Setup, tmp_path: Path) -> None:
    bot = make_bot(s, tmp_path, "off", poll_interval_s=0.1)
    set_prices(s, 100)
    s.node.mine()
    with Running(bot) as run:
        assert bot.watcher.heads is None
        run.processed(s.node.mine(), within_s=3.0)


def drain_until(source: Any, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got += source.drain()
        time.sleep(0.01)
    return got


def test_pending_transactions_pushed_in_the_pending_source_shape(s: Setup) -> None:
    from bot.pending import FilterPendingSource, normalize_tx
    from bot.ws import WsPendingSource, open_pending

    w3 = Web3(HTTPProvider(s.node.url))
    wake = threading.Event()
    source = open_pending("auto", w3, wake=wake)
    assert isinstance(source, WsPendingSource)
    own: set[str] = set()
    filtered = open_pending("off", w3)
    assert isinstance(filtered, FilterPendingSource)
    filtered.start()
    try:
        feed = s.dep.feed_contract("ETH")
        update = feed.functions.set_answer(1_900 * 10**8).transact(
            {"from": s.owner, "gas": 300_000, "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": 3 * GWEI})
        wait_for(wake.is_set, 2.0, "the wake-up")
        (tx,) = drain_until(source, 1)
        assert tx["hash"] == "0x" + bytes(update).hex()
        assert tx["to"] == feed.address and tx["from"] == s.owner and tx["maxPriorityFeePerGas"] == 3 * GWEI
        assert tx == normalize_tx(dict(w3.eth.get_transaction(update)))
        assert drain_until(filtered, 1) == [tx]                  # the same object as the HTTP source's
        # skip() leaves out the caller's own transactions.
        source._skip = own.__contains__
        mine = s.w3.eth.send_transaction({"from": s.node.accounts[3][0], "to": s.owner, "value": 1,
                                          "maxFeePerGas": 100 * GWEI, "maxPriorityFeePerGas": GWEI})
        own.add("0x" + bytes(mine).hex())
        time.sleep(0.3)
        assert source.drain() == []
    finally:
        source.close()
        filtered.close()


def test_pending_source_falls_back_to_the_http_filter_when_the_websocket_dies(s: Setup) -> None:
    from bot.ws import WsPendingSource, open_pending

    host, port = s.node.url.removeprefix("http://").split(":")
    relay = Relay((host, int(port)))
    w3 = Web3(HTTPProvider(s.node.url))
    source = open_pending(f"ws://127.0.0.1:{relay.port}", w3)
    assert isinstance(source, WsPendingSource)
    try:
        def send() -> str:
            return "0x" + bytes(s.w3.eth.send_transaction({"from": s.owner, "to": s.owner, "value": 1,
                                                           "maxFeePerGas": 100 * GWEI,
                                                           "maxPriorityFeePerGas": GWEI})).hex()

        first = send()
        assert [t["hash"] for t in drain_until(source, 1)] == [first]
        relay.kill()
        wait_for(lambda: not source.sub.alive, 5.0, "the loss noticed")
        assert source.drain() == []                              # creates the HTTP filter
        second = send()
        assert [t["hash"] for t in drain_until(source, 1)] == [second]
    finally:
        source.close()
        relay.kill()


@pytest.mark.parametrize("value", ["http://127.0.0.1:8545", "ws://", "sometimes", ""])
def test_a_bad_ws_setting_is_one_line(value: str) -> None:
    from click.testing import CliRunner

    from bot.errors import BotConfigError
    from cli import cli

    with pytest.raises(BotConfigError) as refused:
        BotConfig.from_env(environ={"XMARGIN_WS_URL": value})
    assert "XMARGIN_WS_URL" in str(refused.value) and "\n" not in str(refused.value)
    r = CliRunner().invoke(cli, ["bot", "run", "--dry-run", "--ws", value, "--rpc", "http://127.0.0.1:1"],
                           env={"XMARGIN_RPC_URL": None, "XMARGIN_WS_URL": None})
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "ws_url" in lines[0], r.stderr
