"""New-head latency of the bot's loop: pushed heads (WebSocket ``newHeads``) against polling.

    python bench/ws_bench.py                       # the dev node and anvil, 30 blocks each
    python bench/ws_bench.py --nodes devnode --blocks 50 --poll-interval 1.0

For each node, started here as its own process (the dev node with ``python -m devnode
--block-time 3600``, anvil with ``--no-mining`` from ``.anvil/`` or PATH as ``tests/nodes.py``
finds it: both mine only on ``evm_mine``, transactions wait in the pool), two
copies of the bot's real loop run side by side on the same blocks, each on its own connection:

* **ours**: :class:`bot.lifecycle.Lifecycle` over :class:`bot.scanner.HeadWatcher` with a
  ``newHeads`` subscription (:func:`bot.ws.open_heads`), woken by each notification;
* **baseline**: the same loop polling ``eth_getBlockByNumber("latest")`` every
  ``--poll-interval`` seconds (the bot's default, 1 s), as the bot did before WebSockets.

The bench mines ``--blocks`` blocks with ``evm_mine`` at random gaps (uniform in 0.2-1.2 s, so a
block falls anywhere in the polling period) and records, for each loop, the time from the moment
the bench sends ``evm_mine`` to the moment the loop's on-block callback runs with that block
(the node's mining time is in both). It prints a table per node: median, 90th percentile and
worst latency, blocks seen, and head-read requests per second (``eth_getBlockByNumber``, counted
by :class:`bot.rpc.CountingRpc`). A benchmark asserts nothing; its exit status is 0 unless a node
or a loop failed.

A second table does the same for pending transactions (what the oracle backrun reads): the bench
sends ``--txs`` transactions (``eth_sendTransaction`` from a dev account, at random gaps) and
records when each comes out of the bot's pending source's ``drain()``: **ours**
(:class:`bot.ws.WsPendingSource`, drained when its notification wakes the reader) against the
**baseline** :class:`bot.pending.FilterPendingSource` drained every ``pending_poll_interval_s``
(0.1 s, the bot's default; one ``eth_getFilterChanges`` plus the transactions fetched per drain).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from web3 import HTTPProvider, Web3

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bot.config import BotConfig  # noqa: E402
from bot.lifecycle import Lifecycle  # noqa: E402
from bot.rpc import CountingRpc  # noqa: E402
from bot.scanner import HeadWatcher  # noqa: E402
from bot.ws import open_heads  # noqa: E402


@contextmanager
def devnode_process() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "devnode", "--port", "0", "--block-time", "3600"], cwd=REPO,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"the dev node did not start: {line!r}")
        url = line.split("listening on ", 1)[1].strip()
        # A block time of an hour: blocks come from evm_mine, transactions wait in the pool (as anvil's --no-mining).
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def anvil_process() -> Iterator[str]:
    from nodes import AnvilNode

    node = AnvilNode()
    try:
        yield node.url
    finally:
        node.stop()


class Loop:
    """One copy of the bot's loop, recording when each head reached its on-block callback."""

    def __init__(self, url: str, ws: str, poll_interval_s: float) -> None:
        self.w3 = Web3(HTTPProvider(url))
        cfg = BotConfig.from_env(environ={}, rpc_url=url, poll_interval_s=poll_interval_s)
        self.rpc = CountingRpc.from_config(self.w3, cfg)
        heads = open_heads(ws, url, threading.Event()) if ws != "off" else None
        if ws != "off" and heads is None:
            raise RuntimeError(f"no WebSocket on {url}")
        self.heads = heads
        self.watcher = HeadWatcher(self.w3, 3600.0, heads=heads)
        self.life = Lifecycle(self.watcher.poll, poll_interval_s=poll_interval_s,
                              wake=heads.wake if heads is not None else None)
        self.seen: dict[int, float] = {}
        self.life.on_block(lambda head: self.seen.setdefault(head.number, time.perf_counter()))
        self.thread = threading.Thread(target=lambda: self.life.run(install_signals=False), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.life.stop()
        self.thread.join(10)
        if self.heads is not None:
            self.heads.close()


def measure(url: str, blocks: int, poll_interval_s: float, seed: int) -> dict[str, dict[str, Any]]:
    rng = random.Random(seed)
    session = requests.Session()
    loops = {"ours (newHeads)": Loop(url, "auto", poll_interval_s),
             f"baseline (poll {poll_interval_s:g} s)": Loop(url, "off", poll_interval_s)}
    for loop in loops.values():
        loop.start()
    time.sleep(1.5)
    before = {name: loop.rpc.count("eth_getBlockByNumber") for name, loop in loops.items()}
    t_start = time.perf_counter()
    sent: dict[int, float] = {}
    for i in range(blocks):
        time.sleep(rng.uniform(0.2, 1.2))
        t0 = time.perf_counter()
        session.post(url, json={"jsonrpc": "2.0", "id": i, "method": "evm_mine", "params": []}, timeout=30)
        number = int(session.post(url, json={"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber", "params": []},
                                  timeout=30).json()["result"], 16)
        sent[number] = t0
    time.sleep(poll_interval_s + 0.5)
    elapsed = time.perf_counter() - t_start
    out: dict[str, dict[str, Any]] = {}
    for name, loop in loops.items():
        loop.stop()
        latencies = [loop.seen[n] - t for n, t in sent.items() if n in loop.seen]
        reads = loop.rpc.count("eth_getBlockByNumber") - before[name]
        out[name] = {
            "seen": len(latencies),
            "median": statistics.median(latencies) if latencies else float("nan"),
            "p90": statistics.quantiles(latencies, n=10, method="inclusive")[-1] if len(latencies) >= 2 else float("nan"),
            "max": max(latencies) if latencies else float("nan"),
            "reads_per_s": reads / elapsed,
        }
    session.close()
    return out


def measure_pending(url: str, txs: int, poll_s: float, seed: int) -> dict[str, dict[str, Any]]:
    from bot.pending import FilterPendingSource
    from bot.ws import WsPendingSource, open_pending

    rng = random.Random(seed)
    session = requests.Session()
    wake = threading.Event()
    ours = open_pending("auto", Web3(HTTPProvider(url)), wake=wake)
    if not isinstance(ours, WsPendingSource):
        raise RuntimeError(f"no WebSocket on {url}")
    base_w3 = Web3(HTTPProvider(url))
    base_rpc = CountingRpc.from_config(base_w3, BotConfig.from_env(environ={}, rpc_url=url))
    baseline = FilterPendingSource(base_w3)
    baseline.start()
    seen: dict[str, dict[str, float]] = {"ours (subscription)": {}, f"baseline (filter {poll_s:g} s)": {}}
    stop = threading.Event()

    def pushed() -> None:
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            for tx in ours.drain():
                seen["ours (subscription)"].setdefault(tx["hash"], time.perf_counter())

    def polled() -> None:
        while not stop.wait(poll_s):
            for tx in baseline.drain():
                seen[f"baseline (filter {poll_s:g} s)"].setdefault(tx["hash"], time.perf_counter())

    threads = [threading.Thread(target=fn, daemon=True) for fn in (pushed, polled)]
    for t in threads:
        t.start()
    sender = session.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "eth_accounts", "params": []},
                          timeout=30).json()["result"][1]
    time.sleep(0.5)
    before = base_rpc.stats().total
    t_start = time.perf_counter()
    sent: dict[str, float] = {}
    for i in range(txs):
        time.sleep(rng.uniform(0.05, 0.3))
        t0 = time.perf_counter()
        answer = session.post(url, json={"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [
            {"from": sender, "to": sender, "value": "0x1", "gas": "0x5208"}]}, timeout=30).json()
        sent[answer["result"].lower()] = t0
    time.sleep(poll_s + 0.5)
    elapsed = time.perf_counter() - t_start
    stop.set()
    for t in threads:
        t.join(5)
    out: dict[str, dict[str, Any]] = {}
    for name, got in seen.items():
        latencies = [got[h] - t for h, t in sent.items() if h in got]
        requests_per_s = 0.0 if name.startswith("ours") else (base_rpc.stats().total - before) / elapsed
        out[name] = {
            "seen": len(latencies),
            "median": statistics.median(latencies) if latencies else float("nan"),
            "p90": statistics.quantiles(latencies, n=10, method="inclusive")[-1] if len(latencies) >= 2 else float("nan"),
            "max": max(latencies) if latencies else float("nan"),
            "reads_per_s": requests_per_s,
        }
    ours.close()
    baseline.close()
    session.close()
    return out


def _table(title: str, rows: list[tuple[str, str, dict[str, Any]]], rate: str) -> None:
    print(f"\n{title}\n")
    header = f"{'node':<8} {'loop':<24} {'seen':>5} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {rate:>14}"
    print(header)
    print("-" * len(header))
    for kind, name, st in rows:
        print(f"{kind:<8} {name:<24} {st['seen']:>5} {st['median'] * 1000:>10.1f} {st['p90'] * 1000:>8.1f} "
              f"{st['max'] * 1000:>8.1f} {st['reads_per_s']:>14.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="devnode,anvil", help="comma-separated: devnode, anvil")
    parser.add_argument("--blocks", type=int, default=30, help="blocks mined per node")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="the baseline's poll interval, seconds")
    parser.add_argument("--txs", type=int, default=30, help="pending transactions sent per node (0: skip)")
    parser.add_argument("--pending-poll-interval", type=float, default=0.1,
                        help="the pending baseline's filter poll interval, seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    starters = {"devnode": devnode_process, "anvil": anvil_process}
    rows: list[tuple[str, str, dict[str, Any]]] = []
    pending_rows: list[tuple[str, str, dict[str, Any]]] = []
    for kind in [k.strip() for k in args.nodes.split(",") if k.strip()]:
        if kind not in starters:
            parser.error(f"unknown node {kind!r}: expected devnode or anvil")
        with starters[kind]() as url:
            for name, stats in measure(url, args.blocks, args.poll_interval, args.seed).items():
                rows.append((kind, name, stats))
            if args.txs > 0:
                for name, stats in measure_pending(url, args.txs, args.pending_poll_interval, args.seed).items():
                    pending_rows.append((kind, name, stats))
    _table(f"New head -> the bot's on-block callback ({args.blocks} blocks per node, evm_mine at random gaps of "
           f"0.2-1.2 s; ms from sending evm_mine)", rows, "head reads/s")
    if pending_rows:
        _table(f"Pending transaction -> out of the pending source's drain() ({args.txs} per node, at random gaps "
               f"of 0.05-0.3 s; ms from sending it)", pending_rows, "requests/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
