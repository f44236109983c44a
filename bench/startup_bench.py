"""Bot start-up benchmark: the mirror from logs and from the database's snapshot, against the Lens load.

    python bench/startup_bench.py                                  # 10,000 accounts, in-process dev node
    python bench/startup_bench.py --node embedded --node http://127.0.0.1:8598   # and anvil, one table
    python bench/startup_bench.py --accounts 2000

For each node (``embedded``: a fresh in-process dev node, eth-tester on py-evm; or the URL of a
node with the dev-node methods ``bench/bot_bench.py`` needs, e.g. anvil), the chain of
``bench/bot_bench.py`` is built (its ``BenchChain``, trader factory and scenario: N traders, each
one deposit and one position, then a market drift), and three start-ups are timed on the same
head, each on its own ``Web3``:

* **Lens load (baseline)**: what the bot's start did before issue 12: ``Deposit`` logs from the
  deployment block (account discovery), one ``Lens.protocol`` call and one ``Lens.accounts`` call
  per ``lens_batch_size`` accounts, then the health book;
* **ours, from logs**: ``Liquidator.start()`` on a new database: one adaptive log scan of the
  engine and the feeds from the deployment block, applied in order, the health book, the first
  snapshot written to the database;
* **ours, restart**: the same bot stopped (it writes its snapshot), ``--restart-blocks`` blocks
  mined with a price update each, and a new ``Liquidator.start()`` on that database: the snapshot
  plus the logs since.

The mirror of the start from logs is compared with the Lens load (every account, the house, the
insurance fund, the configuration and the feeds), and the restart's with another start from logs
on a fresh database at the restart's head: "equal" must say yes for both. The Lens check that follows a start
(``start_check``, default a sample of 50 accounts) runs in the first tick, not in the start; its
time is printed too. The bots run with ``dry_run`` (no approve transaction at start).

A benchmark prints a table; it asserts nothing, and its exit status is 0 unless something failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bot_bench import (  # noqa: E402
    DRIFT_ETH,
    OPEN_PRICES,
    BenchChain,
    bind_copy,
    bot_web3,
    compile_bench_contracts,
    plan_orders,
)

from bot.config import BotConfig  # noqa: E402
from bot.liquidator import Liquidator  # noqa: E402
from bot.rpc import CountingRpc  # noqa: E402
from bot.scanner import Head  # noqa: E402
from protocol_model.health import HealthBook  # noqa: E402
from protocol_model.loader import discover_accounts, load_accounts, load_protocol  # noqa: E402

log = logging.getLogger("bench.startup_bench")

TARGET_START_S = 10.0
TARGET_RESTART_S = 2.0


@dataclass
class Timed:
    seconds: float
    rpc_calls: int
    by_method: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    node: str
    accounts: int
    head: int
    logs: int
    lens: Timed
    ours: Timed
    restart: Timed
    mirror_s: float                 # ours: the mirror's part of Liquidator.start
    restart_mirror_s: float
    restart_events: int
    again_s: float                  # a second start from logs, at the restart's head (the restart's oracle)
    equal: bool
    restart_equal: bool
    check_s: float                  # the sample Lens check in the first tick after the restart
    check_accounts: int
    db_bytes: int
    setup_s: float


def lens_load(url: str, dep: Any, batch: int) -> tuple[Timed, Any]:
    """The start before issue 12: discovery from Deposit logs, then the Lens at the head."""
    w3 = bot_web3(url)
    rpc = CountingRpc(w3)
    bound = bind_copy(dep, w3)
    t = time.perf_counter()
    head = w3.eth.block_number
    accounts = discover_accounts(w3, bound, to_block=head)
    state = load_protocol(w3, bound, head)
    load_accounts(w3, bound, state, accounts, batch_size=batch, block_identifier=head)
    HealthBook(state)
    seconds = time.perf_counter() - t
    stats = rpc.stats()
    return Timed(seconds, stats.total, dict(stats.by_method)), state


def start_bot(url: str, dep: Any, key: Any, db_path: str, **settings: Any) -> tuple[Liquidator, Timed]:
    w3 = bot_web3(url)
    config = BotConfig.from_env(environ={}, rpc_url=url, db_path=db_path, dry_run=True, **settings)
    rpc = CountingRpc.from_config(w3, config)
    bot = Liquidator(w3, bind_copy(dep, w3), key, config, rpc=rpc)
    t = time.perf_counter()
    bot.start()
    seconds = time.perf_counter() - t
    stats = rpc.stats()
    return bot, Timed(seconds, stats.total, dict(stats.by_method))


def run(node: str, n: int, seed: int, restart_blocks: int) -> Result:
    chain = BenchChain(None if node == "embedded" else node)
    print(f"\n== {n:,} accounts (seed {seed}) on {chain.client}", flush=True)
    try:
        t = time.perf_counter()
        dep = chain.deploy()
        chain.create_traders(plan_orders(n, seed, dep))
        chain.set_prices({"ETH": DRIFT_ETH, "BTC": OPEN_PRICES["BTC"]})
        chain.check_prices()
        setup_s = time.perf_counter() - t
        key = chain.funded_account()
        head = chain.w3.eth.block_number
        logs = len(chain.w3.eth.get_logs({"fromBlock": dep.block, "toBlock": head,
                                          "address": [dep.engine, *dep.feeds.values()]}))
        print(f"  setup {setup_s:.1f} s: head {head:,}, {logs:,} logs of the engine and feeds", flush=True)
        batch = BotConfig().lens_batch_size

        lens, loaded = lens_load(chain.url, dep, batch)
        print(f"  Lens load (baseline): {lens.seconds:.2f} s, {lens.rpc_calls} RPC calls {lens.by_method}", flush=True)

        with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
            db_path = os.path.join(tmp, "bot.sqlite3")
            bot, ours = start_bot(chain.url, dep, key, db_path)
            mirror = bot.mirror
            assert mirror is not None and mirror.start_stats is not None  # dev
            mirror_s = mirror.start_stats.seconds
            equal = bot.state == loaded
            print(f"  ours from logs: {ours.seconds:.2f} s (mirror {mirror_s:.2f} s, {mirror.start_stats.events:,} "
                  f"events), {ours.rpc_calls} RPC calls {ours.by_method}; equal to the Lens load: {equal}", flush=True)
            bot.close()                                 # writes the snapshot at its block

            for i in range(restart_blocks):
                chain.set_prices({"ETH": DRIFT_ETH + 10**8 * (1 + i), "BTC": OPEN_PRICES["BTC"]})
            db_bytes = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
            bot2, restart = start_bot(chain.url, dep, key, db_path)
            mirror2 = bot2.mirror
            assert mirror2 is not None and mirror2.start_stats is not None  # dev
            head2 = mirror2.state.block if mirror2.state is not None else 0
            # The oracle at the new head: a start from logs alone on a fresh database (itself equal to
            # the Lens above; a second Lens load would take minutes on the embedded node).
            bot3, again = start_bot(chain.url, dep, key, os.path.join(tmp, "fresh.sqlite3"))
            restart_equal = bot3.state is not None and bot3.state.block == head2 and bot2.state == bot3.state
            bot3.close()
            print(f"  ours from logs again, at the restart's head: {again.seconds:.2f} s", flush=True)
            print(f"  ours restart ({mirror2.start_stats.source}, blocks {mirror2.start_stats.from_block:,}.."
                  f"{head2:,}): {restart.seconds:.2f} s (mirror {mirror2.start_stats.seconds:.2f} s), "
                  f"{restart.rpc_calls} RPC calls {restart.by_method}; equal to a fresh start from logs: "
                  f"{restart_equal}", flush=True)
            # The Lens check after the start, as the first tick runs it.
            t = time.perf_counter()
            mirror2.check_step(Head.from_block(bot2.w3.eth.get_block(head2), time.monotonic()))
            check_s = time.perf_counter() - t
            check_accounts = mirror2.check.checked
            print(f"  start check: {check_accounts} accounts and the protocol against the Lens in {check_s:.2f} s, "
                  f"{mirror2.check.differences} difference(s)", flush=True)
            bot2.close()
        return Result(node if node != "embedded" else "embedded dev node (py-evm)", n, head, logs, lens, ours, restart,
                      mirror_s, mirror2.start_stats.seconds, mirror2.start_stats.events, again.seconds, equal,
                      restart_equal,
                      check_s, check_accounts, db_bytes, setup_s)
    finally:
        chain.stop()


def print_table(results: list[Result]) -> None:
    headers = ("node", "accounts", "logs", "Lens load (baseline)", "ours: from logs", "ours: restart from the db",
               "speed-up", "equal to the Lens")
    lines = []
    for r in results:
        lines.append((
            r.node, f"{r.accounts:,}", f"{r.logs:,}", f"{r.lens.seconds:.2f} s ({r.lens.rpc_calls} calls)",
            f"{r.ours.seconds:.2f} s ({r.ours.rpc_calls} calls)", f"{r.restart.seconds:.2f} s ({r.restart.rpc_calls} calls)",
            f"{r.lens.seconds / r.ours.seconds:.1f}x / {r.lens.seconds / r.restart.seconds:.0f}x",
            "yes" if r.equal and r.restart_equal else "NO",
        ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|-" + "-|-".join("-" * w for w in widths) + "-|")
    for line in lines:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) + " |")
    print()
    print("Times are wall clock of Liquidator.start() (ours) and of discovery + Lens reads + health book (baseline),")
    print("RPC calls counted on each one's own Web3. speed-up: baseline / from logs, baseline / restart.")
    for r in results:
        print(f"  {r.node}: head {r.head:,}; mirror part of ours {r.mirror_s:.2f} s (again at the restart's head "
              f"{r.again_s:.2f} s), of the restart "
              f"{r.restart_mirror_s:.2f} s ({r.restart_events} events replayed); database {r.db_bytes / 1e6:.1f} MB; "
              f"the start check of the first tick ({r.check_accounts} accounts + protocol) {r.check_s:.2f} s; "
              f"setup {r.setup_s:.0f} s (not measured)")
        ok_start = r.ours.seconds < TARGET_START_S
        ok_restart = r.restart.seconds < TARGET_RESTART_S
        print(f"    start {r.ours.seconds:.2f} s ({'meets' if ok_start else 'misses'} < {TARGET_START_S:.0f} s), "
              f"restart {r.restart.seconds:.2f} s ({'meets' if ok_restart else 'misses'} < {TARGET_RESTART_S:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=10_000, help="traders on the chain (default 10,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the trader plans (default 1)")
    parser.add_argument("--node", action="append", metavar="URL",
                        help="'embedded' (a fresh in-process dev node, the default) or the JSON-RPC URL of a node "
                             "with evm_setAutomine / evm_mine and an unlocked funded account (e.g. anvil); repeat "
                             "for several nodes in one table")
    parser.add_argument("--restart-blocks", type=int, default=5,
                        help="blocks mined, each with a price update, between the stop and the restart (default 5)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the bot's INFO messages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.accounts < 1:
        parser.error("--accounts must be at least 1")
    if args.restart_blocks < 0:
        parser.error("--restart-blocks must be at least 0")
    nodes = args.node or ["embedded"]
    for node in nodes:
        if node != "embedded" and not node.startswith(("http://", "https://")):
            parser.error(f"--node {node!r}: give 'embedded' or an http:// URL")
    started = time.perf_counter()
    print("compiling contracts ...", flush=True)
    compile_bench_contracts()
    results = [run(node, args.accounts, args.seed, args.restart_blocks) for node in nodes]
    print_table(results)
    print(f"\nwhole run: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
